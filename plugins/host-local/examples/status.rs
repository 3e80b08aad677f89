//! Latency of host-local STATUS, one process per call as a runtime makes them (CRI-O polls it
//! every 500 ms at start-up, containerd 2.x on every CRI Status call), with 10 and 10,000
//! allocations already in the data directory (written directly in the reference layout): in a
//! large free pool, and in a pool exactly that size, so full (the worst case: every address
//! is taken). Prints, median and p95: the wall time of each call (process start-up included),
//! the plugin's own time (its `duration_ms` log field) and the CPU time of the process (which
//! other load on the machine does not inflate). Prints figures only; it
//! never passes or fails on time.
//!
//! Usage: `status [BINARY ...]` (see bench/host-local-status.sh); `BENCH_RUNS=N` calls per row
//! (default 101).
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

const NETWORK: &str = "bench";
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 10);

fn conf(data_dir: &Path, range_end: Ipv4Addr) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "bridge",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.128.0.0/16", "rangeStart": FIRST, "rangeEnd": range_end}]],
            "dataDir": data_dir
        }
    })
    .to_string()
}

/// Writes `n` allocations the way the reference plugin lays them out.
fn populate(data_dir: &Path, n: u32) -> Res<()> {
    let dir = data_dir.join(NETWORK);
    fs::create_dir_all(&dir)?;
    let mut last = FIRST;
    for i in 0..n {
        last = Ipv4Addr::from(u32::from(FIRST) + i);
        fs::write(dir.join(last.to_string()), format!("pre{i:05}\r\neth0"))?;
    }
    fs::write(dir.join("last_reserved_ip.0"), last.to_string())?;
    fs::write(dir.join("lock"), "")?;
    Ok(())
}

/// The CPU time a process that has exited but is not reaped yet ran for (its scheduler
/// statistics, in nanoseconds; the plugin answers STATUS on one thread).
fn cpu_of_exited(pid: u32) -> Res<Duration> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    waitid(
        Id::Pid(nix::unistd::Pid::from_raw(i32::try_from(pid)?)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    )?;
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = text.split_whitespace().next().unwrap_or("0").parse()?;
    Ok(Duration::from_nanos(ns))
}

/// One STATUS call: its wall time, its CPU time and its answer (0, or the CNI error code).
fn call(bin: &Path, stdin: &str, log: &Path) -> Res<(Duration, Duration, u64)> {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_LOG_LEVEL", "info")
        .env("CNI_LOG_FILE", log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes())?;
    }
    // The answer is small: the pipe holds it until the process is reaped.
    let cpu = cpu_of_exited(child.id())?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if out.status.success() {
        return Ok((took, cpu, 0));
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((took, cpu, answer["code"].as_u64().unwrap_or(999)))
}

/// The `duration_ms` fields of the log's STATUS lines, in milliseconds.
fn own_times(log: &Path) -> Vec<f64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("command=STATUS"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("duration_ms="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.95))
}

fn main() -> Res<()> {
    let mut binaries: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if binaries.is_empty() {
        binaries.push(PathBuf::from("target/release/host-local"));
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(101);
    println!("host-local STATUS, one process per call, {runs} calls per row\n");
    println!(
        "| binary | allocations | pool | answer | wall median / p95 | plugin's own median / p95 | CPU median / p95 |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|");
    for bin in &binaries {
        for existing in [10u32, 10_000] {
            for full in [false, true] {
                let tmp = tempfile::tempdir()?;
                populate(tmp.path(), existing)?;
                let end = if full {
                    Ipv4Addr::from(u32::from(FIRST) + existing - 1)
                } else {
                    Ipv4Addr::new(10, 128, 255, 254)
                };
                let stdin = conf(tmp.path(), end);
                let log = tmp.path().join("status.log");
                let mut walls = Vec::new();
                let mut cpus = Vec::new();
                let mut code = 0;
                for _ in 0..runs {
                    let (took, cpu, c) = call(bin, &stdin, &log)?;
                    walls.push(took.as_secs_f64() * 1000.0);
                    cpus.push(cpu.as_secs_f64() * 1000.0);
                    code = c;
                }
                let (wm, wp) = quantiles(walls);
                let (om, op) = quantiles(own_times(&log));
                let (cm, cp) = quantiles(cpus);
                println!(
                    "| {} | {existing} | {} | {} | {wm:.2} / {wp:.2} ms | {om:.3} / {op:.3} ms | {cm:.2} / {cp:.2} ms |",
                    bin.display(),
                    if full { "full" } else { "free (/16)" },
                    code,
                );
            }
        }
    }
    Ok(())
}
