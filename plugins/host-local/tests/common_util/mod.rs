//! Helpers shared by the host-local integration tests: running the built binary (or the
//! reference one) and snapshotting a data directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let mut env = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", "/var/run/netns/host-local-test"),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    env.extend_from_slice(extra);
    testkit::run(bin, &[], &env, stdin)
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
