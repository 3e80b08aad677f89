//! Issue 5, item 2: how many `nft` processes each plugin runs per ADD and per DEL in the
//! common case (prevResult present), counted through an `nft` wrapper first in PATH that logs
//! each run and execs the real nft. Plugins find nft via PATH first (`common::nft::nft_path`).
//!
//! The first ADD of a network in a namespace writes the fixed ruleset, and every later ADD
//! and every DEL only changes set elements: all over netlink, no `nft` run. Only portmap's
//! `conditionsV4`/`conditionsV6` (match expressions in nft's own syntax) take one `nft` run
//! per ADD. The chain runs twice in one namespace (two containers) to show both.
//!
//! With `NFT_CALLS_BENCH=N` set, the chain is run N times and the median wall time of each
//! plugin's ADD and DEL is printed (`cargo test -p cnirun --test nft_calls -- --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testkit::{TestNs, cni, have_root, unique_name};

/// The real nft binary the wrapper execs.
fn real_nft() -> PathBuf {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nft not installed")
}

/// A directory holding the counting `nft` wrapper; the log of runs is `dir/calls`.
struct Shim {
    dir: tempfile::TempDir,
    path_env: String,
}

impl Shim {
    fn new() -> Shim {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real_nft().display()
        );
        let nft = dir.path().join("nft");
        std::fs::write(&nft, script).unwrap();
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_env = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Shim { dir, path_env }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("calls")
    }

    /// The nft runs logged since the last call (one line each: its arguments).
    fn take(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let _ = std::fs::remove_file(self.log());
        text.lines().map(str::to_string).collect()
    }
}

struct Step {
    plugin: &'static str,
    conf: Value,
}

fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

/// Runs `verb` of one plugin and returns (nft runs, wall time, stdout JSON for ADD).
fn run(
    host: &TestNs,
    shim: &Shim,
    step: &Step,
    verb: &str,
    cid: &str,
    netns: &str,
) -> (Vec<String>, Duration, Option<Value>) {
    let _ = shim.take();
    let t0 = Instant::now();
    let r = cni(
        host,
        step.plugin,
        verb,
        cid,
        netns,
        "eth0",
        &step.conf,
        &[("PATH", &shim.path_env)],
    );
    let dt = t0.elapsed();
    let out = if verb == "ADD" {
        Some(r.json())
    } else {
        r.ok();
        None
    };
    (shim.take(), dt, out)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn at_most_one_nft_call_per_add_and_del() {
    if !have_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let rounds: usize = std::env::var("NFT_CALLS_BENCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let host = TestNs::new();
    host.ip(&["link", "set", "lo", "up"]);
    let ctr = TestNs::new();
    let data = tempfile::tempdir().unwrap();
    let shim = Shim::new();
    let net = unique_name("nc");
    let bridge = unique_name("nb");
    let cid = unique_name("ctr");
    let netns = ctr.path();

    let bridge_conf = json!({
        "cniVersion": "1.1.0", "name": net, "type": "bridge", "bridge": bridge,
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
    });
    let chained = |plugin: &str, extra: Value| {
        let mut c = json!({"cniVersion": "1.1.0", "name": net, "type": plugin});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let ports = json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 18053, "containerPort": 53, "protocol": "udp"}]}});
    let mut cond = ports.clone();
    cond["conditionsV4"] = json!(["ip", "saddr", "!=", "192.0.2.9"]);
    cond["conditionsV6"] = json!(["ip6", "saddr", "!=", "2001:db8::9"]);
    // (plugin label, conf without prevResult, the most nft runs allowed for the first ADD,
    // for later ADDs, and for DEL). portmap with conditionsV4/V6 goes as text with its
    // conditions chains, one run per ADD, every time (it runs in the first round only,
    // before the plain one); the others never run nft.
    let chain: Vec<(&str, Step, usize, usize, usize)> = vec![
        (
            "portmap+conditions",
            Step {
                plugin: "portmap",
                conf: chained("portmap", cond),
            },
            1,
            1,
            0,
        ),
        (
            "portmap",
            Step {
                plugin: "portmap",
                conf: chained("portmap", ports),
            },
            0,
            0,
            0,
        ),
        (
            "firewall",
            Step {
                plugin: "firewall",
                conf: chained("firewall", json!({})),
            },
            0,
            0,
            0,
        ),
        (
            "tuning",
            Step {
                plugin: "tuning",
                conf: chained(
                    "tuning",
                    json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}, "dataDir": data.path().join("tuning")}),
                ),
            },
            0,
            0,
            0,
        ),
        (
            "bandwidth",
            Step {
                plugin: "bandwidth",
                conf: chained(
                    "bandwidth",
                    json!({"ingressRate": 1_000_000, "ingressBurst": 100_000}),
                ),
            },
            0,
            0,
            0,
        ),
    ];
    let mut times: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut counts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut check = |label: &str, verb: &str, calls: Vec<String>, max: usize, dt: Duration| {
        let key = format!("{label} {verb}");
        assert!(
            std::env::var_os("NFT_CALLS_MEASURE_ONLY").is_some() || calls.len() <= max,
            "{key}: {} nft runs, at most {max} allowed: {calls:?}",
            calls.len()
        );
        times.entry(key.clone()).or_default().push(dt);
        counts.insert(key, calls);
    };
    for round in 0..rounds.max(2) {
        // Round 0: the first attachment of the network here; later rounds: steady state.
        let first = round == 0;
        let phase = if first { " (first)" } else { "" };
        let cid = format!("{cid}-{round}");
        let b = Step {
            plugin: "bridge",
            conf: bridge_conf.clone(),
        };
        let (calls, dt, prev) = run(&host, &shim, &b, "ADD", &cid, netns);
        check("bridge", &format!("ADD{phase}"), calls, 0, dt);
        let mut prev = prev.unwrap();
        let lo = Step {
            plugin: "loopback",
            conf: json!({"cniVersion": "1.1.0", "name": "lo", "type": "loopback"}),
        };
        let (calls, dt, _) = run(&host, &shim, &lo, "ADD", &cid, netns);
        check("loopback", "ADD", calls, 0, dt);
        let mut prevs = Vec::new();
        for (label, step, max_first, max_later, max_del) in &chain {
            // Its ruleset differs from the plain one: running it in every round would make
            // each plain ADD rewrite the rules.
            if *label == "portmap+conditions" && !first {
                continue;
            }
            let s = Step {
                plugin: step.plugin,
                conf: with_prev(step.conf.clone(), &prev),
            };
            let max = if first { *max_first } else { *max_later };
            let (calls, dt, out) = run(&host, &shim, &s, "ADD", &cid, netns);
            check(label, &format!("ADD{phase}"), calls, max, dt);
            // The conditions variant is taken back at once; the plain one replaces it.
            if *label == "portmap+conditions" {
                let (calls, dt, _) = run(&host, &shim, &s, "DEL", &cid, netns);
                check(label, "DEL", calls, *max_del, dt);
                continue;
            }
            prevs.push((*label, step, *max_del, prev.clone()));
            prev = out.unwrap();
        }
        for (label, step, max_del, p) in prevs.iter().rev() {
            let s = Step {
                plugin: step.plugin,
                conf: with_prev(step.conf.clone(), p),
            };
            let (calls, dt, _) = run(&host, &shim, &s, "DEL", &cid, netns);
            check(label, "DEL", calls, *max_del, dt);
        }
        let (calls, dt, _) = run(&host, &shim, &lo, "DEL", &cid, netns);
        check("loopback", "DEL", calls, 0, dt);
        let b = Step {
            plugin: "bridge",
            conf: with_prev(bridge_conf.clone(), &prevs[0].3),
        };
        let (calls, dt, _) = run(&host, &shim, &b, "DEL", &cid, netns);
        check("bridge", "DEL", calls, 0, dt);
    }
    for (key, calls) in &counts {
        let t = median(times.get_mut(key).unwrap());
        eprintln!(
            "{key:<26} nft runs {}  median {:>7.2} ms  {calls:?}",
            calls.len(),
            t.as_secs_f64() * 1e3
        );
    }
    // The wrapper was really used: portmap's conditions went through it.
    assert_eq!(
        counts["portmap+conditions ADD (first)"].len(),
        1,
        "{counts:?}"
    );
}
