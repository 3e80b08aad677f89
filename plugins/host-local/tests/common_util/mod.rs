//! Helpers shared by the host-local integration tests: running the built binary (or the
//! reference one) and snapshotting a data directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use testkit::Run;

pub const REFERENCE: &str = "/usr/lib/cni/host-local";

pub fn ours() -> PathBuf {
    testkit::bin("host-local")
}

/// Runs a host-local binary for one verb, as a runtime would: env + config on stdin.
pub fn exec(
    bin: &Path,
    command: &str,
    cid: &str,
    ifname: &str,
    conf: &Value,
    extra: &[(&str, &str)],
) -> Run {
    exec_raw(bin, command, cid, ifname, &conf.to_string(), extra)
}

pub fn exec_raw(
    bin: &Path,
    command: &str,
    cid: &str,
    ifname: &str,
    stdin: &str,
    extra: &[(&str, &str)],
) -> Run {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/host-local-test")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).ok();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Our binary for one verb.
pub fn run(command: &str, cid: &str, conf: &Value) -> Run {
    exec(&ours(), command, cid, "eth0", conf, &[])
}

/// A config for `ranges` with `dataDir` in `dir`.
pub fn conf(version: &str, name: &str, dir: &Path, ranges: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "bridge",
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": dir}
    })
}

/// Every file under `dir` with its content (for "nothing changed" checks).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), b"<dir>".to_vec());
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// The allocation files (address names) of a network directory, sorted.
pub fn allocations(netdir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(netdir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The first address of an ADD result (1.x/0.3.x/0.4.x shape).
pub fn first_ip(r: &Run) -> String {
    r.json()["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {}", r.stdout))
        .to_string()
}

pub fn have_reference() -> bool {
    if Path::new(REFERENCE).is_file() {
        true
    } else {
        eprintln!("skipping: the reference plugin {REFERENCE} is not installed");
        false
    }
}
