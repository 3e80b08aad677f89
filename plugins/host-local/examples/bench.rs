//! Latency of host-local ADD and DEL, one process per call as a runtime makes them, with
//! 10, 1,000, 10,000 and 50,000 allocations already in the data directory (written directly in
//! the reference layout). Prints figures only; it never passes or fails on time.
//!
//! Usage: `bench [OURS_BINARY] [REFERENCE_BINARY] [RUNS]` (see bench/host-local.sh).
//! `BENCH_SIZES=10,1000` picks other allocation counts; `BENCH_CSV=FILE` also writes one
//! `binary,existing,add_ms,del_ms` line per row (bench/compare.sh plots it).
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

fn conf(data_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "bridge",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.128.0.0/16"}]], "dataDir": data_dir}
    })
    .to_string()
}

/// One plugin call; returns its wall time.
fn call(bin: &Path, command: &str, cid: &str, stdin: &str) -> Res<Duration> {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {command} {cid} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    Ok(took)
}

/// Writes `n` allocations the way the reference plugin lays them out.
fn populate(data_dir: &Path, n: u32) -> Res<()> {
    let dir = data_dir.join(NETWORK);
    fs::create_dir_all(&dir)?;
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 10));
    let mut last = Ipv4Addr::from(base);
    for i in 0..n {
        last = Ipv4Addr::from(base + i);
        fs::write(dir.join(last.to_string()), format!("pre{i:05}\r\neth0"))?;
    }
    fs::write(dir.join("last_reserved_ip.0"), last.to_string())?;
    fs::write(dir.join("lock"), "")?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    binary: String,
    existing: u32,
    first: Duration,
    foreign: Duration,
    add: Duration,
    del: Duration,
}

fn measure(name: &str, bin: &Path, existing: u32, runs: u32) -> Res<Row> {
    let tmp = tempfile::tempdir()?;
    populate(tmp.path(), existing)?;
    let stdin = conf(tmp.path());
    // The first call finds a directory it has never seen (ours rebuilds its index here).
    let first = call(bin, "ADD", "warmup", &stdin)?;
    call(bin, "DEL", "warmup", &stdin)?;
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for i in 0..runs {
        adds.push(call(bin, "ADD", &format!("bench{i}"), &stdin)?);
    }
    for i in 0..runs {
        dels.push(call(bin, "DEL", &format!("bench{i}"), &stdin)?);
    }
    // Another binary (the reference, say) allocated one address behind this one's back.
    let mut foreign = Vec::new();
    for i in 0..3 {
        fs::write(
            tmp.path()
                .join(NETWORK)
                .join(format!("10.128.200.{}", i + 1)),
            format!("foreign{i}\r\neth0"),
        )?;
        foreign.push(call(bin, "ADD", &format!("after{i}"), &stdin)?);
    }
    Ok(Row {
        binary: name.to_string(),
        existing,
        first,
        foreign: median(foreign),
        add: median(adds),
        del: median(dels),
    })
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let ours = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("target/release/host-local"),
    );
    let reference = PathBuf::from(
        args.get(2)
            .map(String::as_str)
            .unwrap_or("/usr/lib/cni/host-local"),
    );
    let runs: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(21);

    let mut binaries = vec![("rust", ours)];
    if reference.is_file() {
        binaries.push(("reference", reference));
    } else {
        println!(
            "(reference {} not found: measuring ours only)",
            reference.display()
        );
    }
    println!("host-local, one process per call, median of {runs} calls each\n");
    println!(
        "| existing allocations | binary    | ADD median | DEL median | first call on the directory | ADD after a foreign change |"
    );
    println!(
        "|---------------------:|-----------|-----------:|-----------:|----------------------------:|---------------------------:|"
    );
    let sizes: Vec<u32> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 1_000, 10_000, 50_000]);
    let mut csv = match std::env::var_os("BENCH_CSV") {
        Some(path) => {
            let mut f = fs::File::create(path)?;
            writeln!(f, "binary,existing,add_ms,del_ms")?;
            Some(f)
        }
        None => None,
    };
    for existing in sizes {
        for (name, bin) in &binaries {
            let r = measure(name, bin, existing, runs)?;
            if let Some(f) = csv.as_mut() {
                writeln!(
                    f,
                    "{},{},{:.3},{:.3}",
                    r.binary,
                    r.existing,
                    r.add.as_secs_f64() * 1000.0,
                    r.del.as_secs_f64() * 1000.0
                )?;
            }
            println!(
                "| {:>20} | {:<9} | {:>10} | {:>10} | {:>27} | {:>26} |",
                r.existing,
                r.binary,
                ms(r.add),
                ms(r.del),
                ms(r.first),
                ms(r.foreign)
            );
        }
    }
    Ok(())
}
