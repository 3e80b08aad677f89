//! Logs and metrics, which every plugin gets from common's skel, seen through the built
//! host-local binary: the `logLevel`, `logFile` and `metricsFile` keys, their environment
//! overrides, the default (warnings on stderr, nothing else anywhere), exact counts under
//! concurrency, and escaping of hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_util;

use common::logging::parse_line;
use common_util::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn obs_conf(dir: &Path) -> Value {
    let mut c = conf("1.1.0", "obsnet", dir, json!([[{"subnet":"10.77.0.0/24"}]]));
    c["logLevel"] = json!("info");
    c["logFile"] = json!(dir.join("logs/sub/cni.log"));
    c["metricsFile"] = json!(dir.join("textfile/cni.prom"));
    c
}

/// The samples of a Prometheus text file, keyed by the series exactly as written
/// (`name{labels}`), read independently of common::metrics. Also checks every family has
/// HELP and TYPE before its samples.
fn samples(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut typed = Vec::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(
            typed.iter().any(|t| name.starts_with(t.as_str())),
            "{name} before its TYPE line:\n{text}"
        );
        out.insert(series.to_string(), value.parse().unwrap());
    }
    out
}

fn ops(m: &BTreeMap<String, f64>, command: &str) -> f64 {
    m[&format!("cni_operations_total{{plugin=\"host-local\",command=\"{command}\"}}")]
}

/// The operation lines of a log file, parsed (lines with `result=`); every line must parse.
fn op_lines(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            parse_line(l)
                .unwrap_or_else(|| panic!("unparseable line {l:?}"))
                .into_iter()
                .collect::<HashMap<_, _>>()
        })
        .filter(|f| f.contains_key("result"))
        .collect()
}

#[test]
fn add_check_del_and_errors_are_counted_and_logged() {
    let d = tempfile::tempdir().unwrap();
    let c = obs_conf(d.path());
    let mut results = Vec::new();
    for i in 0..3 {
        let r = run("ADD", &format!("obs{i}"), &c).ok();
        results.push(r.json());
    }
    for (i, res) in results.iter().enumerate() {
        let mut chk = c.clone();
        chk["prevResult"] = res.clone();
        run("CHECK", &format!("obs{i}"), &chk).ok();
    }
    // Two failures: an invalid range (7) and a CHECK of an unknown attachment (999).
    let mut bad = c.clone();
    bad["ipam"]["ranges"] = json!([[{"subnet":"not-a-subnet"}]]);
    assert_eq!(run("ADD", "obsbad", &bad).err_code(), 7);
    let mut chk = c.clone();
    chk["prevResult"] = results[0].clone();
    assert_eq!(run("CHECK", "nobody", &chk).err_code(), 999);
    for (i, res) in results.iter().enumerate() {
        let mut del = c.clone();
        del["prevResult"] = res.clone();
        run("DEL", &format!("obs{i}"), &del).ok();
    }

    let prom = d.path().join("textfile/cni.prom");
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let m = samples(&prom);
    assert_eq!(ops(&m, "ADD"), 4.0);
    assert_eq!(ops(&m, "CHECK"), 4.0);
    assert_eq!(ops(&m, "DEL"), 3.0);
    let errors: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("cni_operation_errors_total"))
        .collect();
    assert_eq!(
        errors,
        [
            (
                &"cni_operation_errors_total{plugin=\"host-local\",command=\"ADD\",code=\"7\"}"
                    .to_string(),
                &1.0
            ),
            (
                &"cni_operation_errors_total{plugin=\"host-local\",command=\"CHECK\",code=\"999\"}"
                    .to_string(),
                &1.0
            ),
        ]
    );
    for (cmd, n) in [("ADD", 4.0), ("CHECK", 4.0), ("DEL", 3.0)] {
        let l = format!("plugin=\"host-local\",command=\"{cmd}\"");
        assert_eq!(
            m[&format!("cni_operation_duration_seconds_count{{{l}}}")],
            n
        );
        let inf = format!("cni_operation_duration_seconds_bucket{{{l},le=\"+Inf\"}}");
        assert_eq!(m[&inf], n);
        let buckets: Vec<f64> = m
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("cni_operation_duration_seconds_bucket{{{l},")))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(buckets.len(), 14);
        // Each host-local call takes well under 10 s.
        assert_eq!(
            m[&format!("cni_operation_duration_seconds_bucket{{{l},le=\"10\"}}")],
            n
        );
        let sum = m[&format!("cni_operation_duration_seconds_sum{{{l}}}")];
        assert!(sum > 0.0 && sum < 10.0 * n, "{sum}");
    }

    let log = d.path().join("logs/sub/cni.log");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dmode = std::fs::metadata(log.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o700);
    let lines = op_lines(&log);
    assert_eq!(lines.len(), 11, "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["level"], "info");
    assert_eq!(first["plugin"], "host-local");
    assert_eq!(first["command"], "ADD");
    assert_eq!(first["container_id"], "obs0");
    assert_eq!(first["network"], "obsnet");
    assert_eq!(first["ifname"], "eth0");
    assert_eq!(first["ips"], "10.77.0.2/24");
    assert_eq!(first["result"], "ok");
    assert!(first["duration_ms"].parse::<f64>().unwrap() > 0.0);
    assert!(first["ts"].ends_with('Z') && first["ts"].contains('T'));
    let failed = &lines[6];
    assert_eq!(failed["level"], "warn");
    assert_eq!(failed["container_id"], "obsbad");
    assert_eq!(failed["result"], "error");
    assert_eq!(failed["code"], "7");
    assert!(failed["error"].contains("not-a-subnet"), "{failed:?}");
    let unknown = &lines[7];
    assert_eq!(
        (unknown["level"].as_str(), unknown["code"].as_str()),
        ("error", "999")
    );
    let del = &lines[10];
    assert_eq!(del["command"], "DEL");
    assert_eq!(
        del["ips"], "10.77.0.4/24",
        "DEL logs the prevResult's addresses"
    );
    let commands: Vec<&str> = lines.iter().map(|l| l["command"].as_str()).collect();
    assert_eq!(
        commands,
        [
            "ADD", "ADD", "ADD", "CHECK", "CHECK", "CHECK", "ADD", "CHECK", "DEL", "DEL", "DEL"
        ]
    );
}

#[test]
fn parallel_invocations_are_all_counted_and_lines_never_interleave() {
    const N: usize = 24;
    let d = tempfile::tempdir().unwrap();
    let mut c = obs_conf(d.path());
    c["ipam"]["ranges"] = json!([[{"subnet":"10.78.0.0/24"}]]);
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let c = &c;
                s.spawn(move || run("ADD", &format!("par{i}"), c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in runs {
        r.ok();
    }
    let m = samples(&d.path().join("textfile/cni.prom"));
    assert_eq!(ops(&m, "ADD"), N as f64);
    let lines = op_lines(&d.path().join("logs/sub/cni.log"));
    assert_eq!(lines.len(), N);
    let mut ids: Vec<&str> = lines.iter().map(|l| l["container_id"].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N);
}

/// Runs our host-local with a clean environment in `cwd`, returning (code, stdout, stderr).
fn run_in_dir(cwd: &Path, env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(ours())
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn env_for<'a>(command: &'a str, cid: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", "/var/run/netns/host-local-test"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

#[test]
fn by_default_only_failures_reach_stderr_and_nothing_else_is_written() {
    let data = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "quiet",
        data.path(),
        json!([[{"subnet":"10.79.0.0/24"}]]),
    );
    let (code, out, err) = run_in_dir(cwd.path(), &env_for("ADD", "q1"), &c.to_string());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err, "", "success is silent at the default level");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ips"][0]["address"], "10.79.0.2/24");

    let mut bad = c.clone();
    bad["ipam"]["ranges"] = json!([]);
    let (code, out, err) = run_in_dir(cwd.path(), &env_for("ADD", "q2"), &bad.to_string());
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 7, "stdout holds only the error object");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let f: HashMap<String, String> = parse_line(lines[0]).unwrap().into_iter().collect();
    assert_eq!(f["level"], "warn");
    assert_eq!(f["result"], "error");
    assert_eq!(f["code"], "7");
    assert_eq!(f["container_id"], "q2");

    let (code, _, err) = run_in_dir(cwd.path(), &env_for("DEL", "q1"), &c.to_string());
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    let mut left: Vec<String> = std::fs::read_dir(data.path().join("quiet"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".prom") && !n.ends_with(".log")),
        "{left:?}"
    );
}

#[test]
fn environment_overrides_and_hostile_input() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "envnet",
        d.path(),
        json!([[{"subnet":"10.80.0.0/24"}]]),
    );
    let log = d.path().join("env.log");
    let prom = d.path().join("env.prom");
    let (log_s, prom_s) = (log.to_str().unwrap(), prom.to_str().unwrap());
    let mut env = env_for("ADD", "e1");
    env.extend([
        ("CNI_LOG_LEVEL", "debug"),
        ("CNI_LOG_FILE", log_s),
        ("CNI_METRICS_FILE", prom_s),
    ]);
    let (code, out, err) = run_in_dir(d.path(), &env, &c.to_string());
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // A hostile container ID: refused (code 4), and logged on one line, escaped.
    let evil = "e2\nts=0 level=info result=ok forged=\"1\"";
    env[1] = ("CNI_CONTAINERID", evil);
    let (code, out, _) = run_in_dir(d.path(), &env, &c.to_string());
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 4);
    // An unknown level in the config is a warning, not a failure; the environment wins anyway.
    let mut odd = c.clone();
    odd["logLevel"] = json!("loud");
    env[1] = ("CNI_CONTAINERID", "e3");
    let (code, out, _) = run_in_dir(d.path(), &env, &odd.to_string());
    assert_eq!(code, 0, "{out}");

    let text = std::fs::read_to_string(&log).unwrap();
    let parsed: Vec<HashMap<String, String>> = text
        .lines()
        .map(|l| parse_line(l).unwrap().into_iter().collect())
        .collect();
    let op_records: Vec<&HashMap<String, String>> =
        parsed.iter().filter(|f| f.contains_key("result")).collect();
    assert_eq!(op_records.len(), 3, "{text}");
    assert_eq!(op_records[1]["container_id"], evil);
    assert_eq!(op_records[1]["code"], "4");
    assert!(!text.lines().any(|l| l.starts_with("ts=0")), "{text}");
    assert!(
        parsed
            .iter()
            .any(|f| f["level"] == "warn" && f.get("msg").is_some_and(|m| m.contains("loud"))),
        "{text}"
    );
    let m = samples(&prom);
    assert_eq!(ops(&m, "ADD"), 3.0);
    assert_eq!(
        m["cni_operation_errors_total{plugin=\"host-local\",command=\"ADD\",code=\"4\"}"],
        1.0
    );
}
