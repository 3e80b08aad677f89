//! Drives the built `cnirun` against fake plugins: shell scripts on CNI_PATH that record
//! their environment and stdin and print what the test told them to. They test the runner's
//! side of the protocol (order, prevResult, cache, env, errors, time limit), not networking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::Run;

/// A fake plugin. Per call n (0, 1, ...) it writes `<log>/<n>.stdin` and `<log>/<n>.env`,
/// appends "<type> <COMMAND>" to `<log>/calls`, then: hangs if `<log>/hang.<type>.<CMD>`
/// exists; fails with the content of `<log>/fail.<type>.<CMD>` if that exists; on ADD prints
/// `<log>/result.<type>`; on VERSION prints a version answer.
const PLUGIN: &str = r#"#!/bin/sh
LOG="@LOG@"
TYPE="@TYPE@"
n=$(cat "$LOG/calls" 2>/dev/null | wc -l | tr -d ' ')
cat > "$LOG/$n.stdin"
env | grep '^CNI_' | sort > "$LOG/$n.env"
echo "$TYPE $CNI_COMMAND" >> "$LOG/calls"
if [ -e "$LOG/hang.$TYPE.$CNI_COMMAND" ]; then sleep 30; fi
if [ -e "$LOG/fail.$TYPE.$CNI_COMMAND" ]; then cat "$LOG/fail.$TYPE.$CNI_COMMAND"; exit 1; fi
case "$CNI_COMMAND" in
  ADD) cat "$LOG/result.$TYPE" ;;
  VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}' ;;
esac
exit 0
"#;

struct Fx {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    log: PathBuf,
    cache: PathBuf,
    conflist: PathBuf,
}

/// The result plugin `ty` prints on ADD (distinct per plugin so prevResult can be traced).
fn result_of(ty: &str, octet: u8) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": format!("if-{ty}")}],
        "ips": [{"address": format!("10.0.0.{octet}/24"), "gateway": "10.0.0.1"}],
        "dns": {}
    })
}

impl Fx {
    /// Plugins `a` and `b` (and `c` for lists that name it), a conflist of `list` with the
    /// given plugins.
    fn new(list: Value) -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let log = tmp.path().join("log");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&log).unwrap();
        for (i, ty) in ["a", "b", "c"].iter().enumerate() {
            let script = PLUGIN
                .replace("@LOG@", log.to_str().unwrap())
                .replace("@TYPE@", ty);
            let p = bin.join(ty);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(
                log.join(format!("result.{ty}")),
                result_of(ty, 2 + i as u8).to_string(),
            )
            .unwrap();
        }
        let conflist = tmp.path().join("net.conflist");
        std::fs::write(&conflist, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
        Fx {
            cache: tmp.path().join("cache/results"),
            _tmp: tmp,
            bin,
            log,
            conflist,
        }
    }

    /// Runs `cnirun <verb> --conflist <ours> --cni-path --cache-dir <args...>`.
    fn run(&self, verb: &str, args: &[&str]) -> Run {
        self.run_list(verb, &self.conflist, args)
    }

    fn run_list(&self, verb: &str, conflist: &Path, args: &[&str]) -> Run {
        let out = Command::new(testkit::bin("cnirun"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg(verb)
            .arg("--conflist")
            .arg(conflist)
            .arg("--cni-path")
            .arg(&self.bin)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn stdin(&self, n: usize) -> Value {
        let text = std::fs::read_to_string(self.log.join(format!("{n}.stdin"))).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdin {n} {text:?}: {e}"))
    }

    fn env(&self, n: usize) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.log.join(format!("{n}.env")))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(&self, name: &str, content: &str) {
        std::fs::write(self.log.join(name), content).unwrap();
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.log.join("calls"));
    }

    fn cache_file(&self, cid: &str) -> PathBuf {
        self.cache.join(format!("net-{cid}-eth0"))
    }
}

fn list(version: &str, plugins: Value) -> Value {
    json!({"cniVersion": version, "name": "net", "plugins": plugins})
}

fn two_plugins(version: &str) -> Fx {
    Fx::new(list(
        version,
        json!([
            {"type": "a", "capabilities": {"portMappings": true}, "x": 1},
            {"type": "b", "capabilities": {"bandwidth": true}}
        ]),
    ))
}

#[test]
fn add_runs_in_order_passes_prev_result_and_caches() {
    let fx = two_plugins("1.0.0");
    let r = fx
        .run(
            "add",
            &[
                "--netns",
                "/run/netns/t1",
                "--container-id",
                "c1",
                "-p",
                "8080:80/udp",
                "--cni-args",
                "K=V;IgnoreUnknown=1",
            ],
        )
        .ok();
    assert_eq!(fx.calls(), ["a ADD", "b ADD"]);
    assert_eq!(
        r.json(),
        result_of("b", 3),
        "the last plugin's result is printed"
    );

    let first = fx.stdin(0);
    assert_eq!(first["name"], "net");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert_eq!(first["x"], 1);
    assert!(
        first.get("prevResult").is_none(),
        "no prevResult on the first ADD"
    );
    assert_eq!(
        first["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]})
    );
    let second = fx.stdin(1);
    assert_eq!(second["prevResult"], result_of("a", 2));
    assert!(second.get("runtimeConfig").is_none(), "bandwidth not given");

    let env = fx.env(0);
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "c1");
    assert_eq!(env["CNI_NETNS"], "/run/netns/t1");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(env["CNI_ARGS"], "K=V;IgnoreUnknown=1");
    assert_eq!(env["CNI_PATH"], fx.bin.to_str().unwrap());

    // The cache: 0700 directory, 0600 file, libcni's cniCacheV1 fields.
    let file = fx.cache_file("c1");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.cache), 0o700);
    assert_eq!(mode(&file), 0o600);
    let cached: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "c1");
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["networkName"], "net");
    assert_eq!(cached["netns"], "/run/netns/t1");
    assert_eq!(
        cached["cniArgs"],
        json!([["K", "V"], ["IgnoreUnknown", "1"]])
    );
    assert_eq!(
        cached["capabilityArgs"]["portMappings"][0]["hostPort"],
        8080
    );
    assert_eq!(cached["result"], result_of("b", 3));
    let config = cnirun::base64::decode(cached["config"].as_str().unwrap()).unwrap();
    assert_eq!(config, std::fs::read(&fx.conflist).unwrap());
    assert_eq!(
        std::fs::read_dir(&fx.cache).unwrap().count(),
        1,
        "no temp files left"
    );
}

#[test]
fn container_id_defaults_to_a_hash_of_the_netns() {
    let fx = two_plugins("1.0.0");
    fx.run("add", &["--netns", "/run/netns/x"]).ok();
    let cid = fx.env(0)["CNI_CONTAINERID"].clone();
    assert!(cid.starts_with("cnirun-"), "{cid}");
    assert!(fx.cache_file(&cid).is_file());
    // DEL with the same --netns finds the same attachment.
    fx.run("del", &["--netns", "/run/netns/x"]).ok();
    assert!(!fx.cache_file(&cid).exists());
}

#[test]
fn del_runs_in_reverse_with_the_cached_result_and_removes_the_cache() {
    let fx = two_plugins("1.0.0");
    fx.run(
        "add",
        &[
            "--netns",
            "/run/netns/t1",
            "--container-id",
            "c1",
            "--cni-args",
            "A=1",
        ],
    )
    .ok();
    fx.clear_calls();
    // No --netns or --cni-args: the cached ones are used.
    let r = fx.run("del", &["--container-id", "c1"]).ok();
    assert!(
        r.stdout.trim().is_empty(),
        "DEL prints nothing: {}",
        r.stdout
    );
    assert_eq!(fx.calls(), ["b DEL", "a DEL"]);
    for n in 0..2 {
        assert_eq!(fx.stdin(n)["prevResult"], result_of("b", 3), "call {n}");
        let env = fx.env(n);
        assert_eq!(env["CNI_COMMAND"], "DEL");
        assert_eq!(env["CNI_NETNS"], "/run/netns/t1");
        assert_eq!(env["CNI_ARGS"], "A=1");
    }
    assert!(!fx.cache_file("c1").exists());

    // A second DEL still succeeds, without prevResult.
    fx.clear_calls();
    fx.run("del", &["--container-id", "c1"]).ok();
    assert!(fx.stdin(0).get("prevResult").is_none());
}

#[test]
fn del_converts_the_cached_result_and_survives_a_corrupt_cache() {
    let fx = two_plugins("0.4.0");
    fx.run("add", &["--netns", "/run/netns/t1", "--container-id", "c1"])
        .ok();
    fx.clear_calls();
    fx.run("del", &["--container-id", "c1"]).ok();
    let prev = &fx.stdin(0)["prevResult"];
    assert_eq!(prev["cniVersion"], "0.4.0");
    assert_eq!(
        prev["ips"][0]["version"], "4",
        "converted to the list's version"
    );

    // An unreadable cache file is removed and DEL goes on without prevResult.
    std::fs::write(fx.cache_file("c2"), "{garbage").unwrap();
    fx.clear_calls();
    fx.run("del", &["--container-id", "c2"]).ok();
    assert_eq!(fx.calls(), ["b DEL", "a DEL"]);
    assert!(fx.stdin(0).get("prevResult").is_none());
    assert!(!fx.cache_file("c2").exists());
}

#[test]
fn check_uses_the_cache() {
    let fx = two_plugins("1.0.0");
    let r = fx.run(
        "check",
        &["--netns", "/run/netns/t1", "--container-id", "c1"],
    );
    assert_eq!(r.err_code(), 3, "no cached result: {}", r.stderr);
    assert!(fx.calls().is_empty());

    fx.run("add", &["--netns", "/run/netns/t1", "--container-id", "c1"])
        .ok();
    fx.clear_calls();
    fx.run("check", &["--container-id", "c1"]).ok();
    assert_eq!(fx.calls(), ["a CHECK", "b CHECK"]);
    for n in 0..2 {
        assert_eq!(fx.stdin(n)["prevResult"], result_of("b", 3));
        assert_eq!(fx.env(n)["CNI_NETNS"], "/run/netns/t1");
    }

    // A CHECK failure comes back with the plugin's code and stops the list.
    fx.set(
        "fail.a.CHECK",
        r#"{"cniVersion":"1.0.0","code":107,"msg":"link eth0 is gone"}"#,
    );
    fx.clear_calls();
    let r = fx.run("check", &["--container-id", "c1"]);
    assert_eq!(r.err_code(), 107);
    assert_eq!(fx.calls(), ["a CHECK"]);
}

#[test]
fn check_is_gated_by_version_and_disable_check() {
    let fx = two_plugins("0.3.1");
    let r = fx.run("check", &["--netns", "/n", "--container-id", "c1"]);
    assert_eq!(r.err_code(), 1);

    let mut l = list("1.0.0", json!([{"type": "a"}]));
    l["disableCheck"] = json!(true);
    let fx = Fx::new(l);
    fx.run("check", &["--netns", "/n", "--container-id", "c1"])
        .ok();
    assert!(fx.calls().is_empty());
}

#[test]
fn plugin_error_is_propagated_without_rollback_or_cache() {
    let fx = two_plugins("1.0.0");
    fx.set(
        "fail.b.ADD",
        r#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"try later"}"#,
    );
    let r = fx.run("add", &["--netns", "/run/netns/t1", "--container-id", "c1"]);
    assert_eq!(r.code, 1);
    let e = r.json();
    assert_eq!(e["code"], 11);
    assert_eq!(e["details"], "try later");
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("busy") && msg.contains(r#"type="b""#), "{msg}");
    assert!(r.stderr.contains("busy"), "{}", r.stderr);
    assert_eq!(fx.calls(), ["a ADD", "b ADD"], "libcni does not roll back");
    assert!(!fx.cache_file("c1").exists());
}

#[test]
fn a_hanging_plugin_is_killed_at_the_timeout() {
    let fx = two_plugins("1.0.0");
    fx.set("hang.a.ADD", "");
    let start = Instant::now();
    let r = fx.run(
        "add",
        &[
            "--netns",
            "/run/netns/t1",
            "--container-id",
            "c1",
            "--timeout",
            "1",
        ],
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert_eq!(r.err_code(), 11, "a timeout is \"try again later\"");
    assert!(
        r.json()["msg"].as_str().unwrap().contains("timed out"),
        "{}",
        r.stdout
    );
    assert_eq!(fx.calls(), ["a ADD"]);
    assert!(!fx.cache_file("c1").exists());
}

#[test]
fn gc_deletes_stale_attachments_then_sends_gc_with_both_keys() {
    let fx = two_plugins("1.1.0");
    for (cid, ns) in [("c1", "/run/netns/n1"), ("c2", "/run/netns/n2")] {
        fx.run(
            "add",
            &[
                "--netns",
                ns,
                "--container-id",
                cid,
                "--cni-args",
                &format!("ID={cid}"),
                "-p",
                "80:80",
            ],
        )
        .ok();
    }
    // An attachment of another network in the same cache directory is left alone.
    let other = fx.conflist.with_file_name("other.conflist");
    std::fs::write(
        &other,
        list("1.1.0", json!([{"type": "c"}]))
            .to_string()
            .replace("\"net\"", "\"other\""),
    )
    .unwrap();
    fx.run_list(
        "add",
        &other,
        &["--netns", "/run/netns/o", "--container-id", "c3"],
    )
    .ok();
    fx.clear_calls();

    fx.run("gc", &["--valid-attachment", "c1:eth0"]).ok();
    assert_eq!(fx.calls(), ["b DEL", "a DEL", "a GC", "b GC"]);
    // The stale attachment's DEL used what it was added with.
    let del = fx.env(0);
    assert_eq!(del["CNI_CONTAINERID"], "c2");
    assert_eq!(del["CNI_NETNS"], "/run/netns/n2");
    assert_eq!(del["CNI_ARGS"], "ID=c2");
    let mut cached = result_of("b", 3);
    cached["cniVersion"] = json!("1.1.0"); // converted to the list's version
    assert_eq!(fx.stdin(0)["prevResult"], cached);
    assert_eq!(
        fx.stdin(1)["runtimeConfig"]["portMappings"][0]["hostPort"],
        80
    );
    // GC: both keys, no attachment in the environment.
    for n in 2..4 {
        let conf = fx.stdin(n);
        let valid = json!([{"containerID": "c1", "ifname": "eth0"}]);
        assert_eq!(conf["cni.dev/valid-attachments"], valid);
        assert_eq!(conf["cni.dev/attachments"], valid);
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert_eq!(conf["name"], "net");
        let env = fx.env(n);
        assert_eq!(env["CNI_COMMAND"], "GC");
        for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert_eq!(env[k], "", "{k}");
        }
    }
    assert!(fx.cache_file("c1").exists());
    assert!(!fx.cache_file("c2").exists());
    assert!(fx.cache.join("other-c3-eth0").exists());

    // Errors do not stop GC; they are reported together.
    fx.set("fail.a.GC", r#"{"code":7,"msg":"bad a"}"#);
    fx.set("fail.b.GC", r#"{"code":7,"msg":"bad b"}"#);
    fx.clear_calls();
    let r = fx.run("gc", &["--valid-attachment", "c1:eth0"]);
    assert_eq!(r.err_code(), 7);
    let msg = r.json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("bad a") && msg.contains("bad b"), "{msg}");
    assert_eq!(fx.calls(), ["a GC", "b GC"]);
}

#[test]
fn gc_before_1_1_only_deletes_and_disable_gc_skips() {
    let fx = two_plugins("1.0.0");
    fx.run("add", &["--netns", "/n", "--container-id", "c1"])
        .ok();
    fx.clear_calls();
    fx.run("gc", &["--none-valid"]).ok();
    assert_eq!(fx.calls(), ["b DEL", "a DEL"]);

    let mut l = list("1.1.0", json!([{"type": "a"}]));
    l["disableGC"] = json!(true);
    let fx = Fx::new(l);
    fx.run("add", &["--netns", "/n", "--container-id", "c1"])
        .ok();
    fx.clear_calls();
    fx.run("gc", &["--none-valid"]).ok();
    assert!(fx.calls().is_empty());
    assert!(fx.cache_file("c1").exists());
}

#[test]
fn status_stops_at_the_first_error() {
    let fx = Fx::new(list(
        "1.1.0",
        json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]),
    ));
    fx.run("status", &[]).ok();
    assert_eq!(fx.calls(), ["a STATUS", "b STATUS", "c STATUS"]);
    assert_eq!(fx.env(0)["CNI_CONTAINERID"], "");
    assert_eq!(fx.stdin(0)["name"], "net");

    fx.set(
        "fail.b.STATUS",
        r#"{"cniVersion":"1.1.0","code":50,"msg":"no free addresses"}"#,
    );
    fx.clear_calls();
    let r = fx.run("status", &[]);
    assert_eq!(r.err_code(), 50);
    assert_eq!(fx.calls(), ["a STATUS", "b STATUS"]);

    // Before 1.1.0 nothing is asked.
    let fx = two_plugins("1.0.0");
    fx.run("status", &[]).ok();
    assert!(fx.calls().is_empty());
}

#[test]
fn version_summarises_each_plugin_type() {
    let fx = Fx::new(list(
        "1.0.0",
        json!([{"type": "a"}, {"type": "b"}, {"type": "a"}]),
    ));
    let r = fx.run("version", &[]).ok();
    assert_eq!(fx.calls(), ["a VERSION", "b VERSION"]);
    let v = r.json();
    assert_eq!(v["network"], "net");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["plugins"][1]["type"], "b");
    assert_eq!(v["plugins"][1]["supportsListVersion"], true);
}

#[test]
fn network_found_by_name_in_conf_dir_and_missing_plugin_reported() {
    let fx = two_plugins("1.0.0");
    let dir = fx.conflist.parent().unwrap().to_str().unwrap().to_string();
    let out = Command::new(testkit::bin("cnirun"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args([
            "status",
            "--network",
            "net",
            "--conf-dir",
            &dir,
            "--cni-path",
        ])
        .arg(&fx.bin)
        .output()
        .unwrap();
    assert!(out.status.success());

    let fx = Fx::new(list("1.1.0", json!([{"type": "nope"}])));
    let r = fx.run("status", &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.json()["msg"].as_str().unwrap().contains("nope"),
        "{}",
        r.stdout
    );
}
