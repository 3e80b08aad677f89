//! loopback against the real kernel: `lo` of a fresh namespace set up and down, the result
//! compared with the reference plugin's, every spec version, and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::path::Path;
use testkit::{Run, TestNs, cni, have_root, run_in, unique_name};

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The reference plugin, as scripts/install-deps.sh --interop installs it.
const REFERENCE: &str = "/usr/lib/cni/loopback";

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": unique_name("lo"), "type": "loopback"})
}

/// A container namespace whose `lo` is down, as a new namespace's is.
fn container() -> TestNs {
    let ns = TestNs::new();
    ns.ip(&["link", "set", "lo", "down"]);
    assert!(!lo_up(&ns));
    ns
}

fn lo_up(ns: &TestNs) -> bool {
    let j = ns.ip_json(&["link", "show", "dev", "lo"]);
    j[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

fn lo_addresses(ns: &TestNs) -> Vec<String> {
    let j = ns.ip_json(&["addr", "show", "dev", "lo"]);
    j[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn run(host: &TestNs, cmd: &str, netns: &str, conf: &Value) -> Run {
    cni(
        host,
        "loopback",
        cmd,
        &unique_name("c"),
        netns,
        "eth0",
        conf,
        &[],
    )
}

/// Runs the reference plugin (same environment as [`run`]).
fn run_reference(host: &TestNs, cmd: &str, netns: &str, conf: &Value) -> Run {
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "ref-container"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    run_in(host, Path::new(REFERENCE), &env, &conf.to_string())
}

/// The result the reference gives without prevResult, in the spec's shape for `version`.
fn expected(version: &str, sandbox: &str) -> Value {
    match version {
        "0.1.0" | "0.2.0" => json!({
            "cniVersion": version,
            "ip4": {"ip": "127.0.0.1/8"},
            "ip6": {"ip": "::1/128"},
            "dns": {},
        }),
        "0.3.0" | "0.3.1" | "0.4.0" => json!({
            "cniVersion": version,
            "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": sandbox}],
            "ips": [
                {"version": "4", "interface": 0, "address": "127.0.0.1/8"},
                {"version": "6", "interface": 0, "address": "::1/128"},
            ],
            "dns": {},
        }),
        _ => json!({
            "cniVersion": version,
            "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": sandbox}],
            "ips": [
                {"interface": 0, "address": "127.0.0.1/8"},
                {"interface": 0, "address": "::1/128"},
            ],
            "dns": {},
        }),
    }
}

#[test]
fn every_version_add_check_del() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    for v in VERSIONS {
        let ctr = container();
        let conf = conf(v);
        let out = run(&host, "ADD", ctr.path(), &conf).ok().json();
        assert_eq!(out, expected(v, ctr.path()), "ADD result, cniVersion {v}");
        assert!(lo_up(&ctr), "lo up after ADD ({v})");
        assert_eq!(lo_addresses(&ctr), ["127.0.0.1/8", "::1/128"]);
        // A second ADD is harmless: lo stays up, same answer.
        let again = run(&host, "ADD", ctr.path(), &conf).ok().json();
        assert_eq!(again, out, "second ADD ({v})");

        if v >= "0.4.0" {
            run(&host, "CHECK", ctr.path(), &conf).ok();
        } else {
            assert_eq!(run(&host, "CHECK", ctr.path(), &conf).err_code(), 1, "{v}");
        }
        if v == "1.1.0" {
            let gc = json!({"cniVersion": v, "name": conf["name"], "type": "loopback",
                "cni.dev/valid-attachments": []});
            run(&host, "GC", "", &gc).ok();
            run(&host, "STATUS", "", &conf).ok();
            assert!(lo_up(&ctr), "GC leaves a container alone");
        }

        run(&host, "DEL", ctr.path(), &conf).ok();
        assert!(!lo_up(&ctr), "lo down after DEL ({v})");
        run(&host, "DEL", ctr.path(), &conf).ok();
        assert!(!lo_up(&ctr), "lo still down after a second DEL ({v})");
        if v >= "0.4.0" {
            let e = run(&host, "CHECK", ctr.path(), &conf);
            assert_eq!(e.err_code(), 999, "CHECK with lo down ({v}): {}", e.stdout);
            assert!(e.json()["msg"].as_str().unwrap().contains("down"));
        }
    }
}

#[test]
fn check_fails_when_lo_is_down_and_passes_when_up() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    let ctr = container();
    let conf = conf("1.0.0");
    assert_eq!(run(&host, "CHECK", ctr.path(), &conf).err_code(), 999);
    ctr.ip(&["link", "set", "lo", "up"]);
    run(&host, "CHECK", ctr.path(), &conf).ok();
}

#[test]
fn prev_result_passes_through_in_the_config_version() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:00:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:00:00:05", "sandbox": "/var/run/netns/x"}
        ],
        "ips": [{"interface": 1, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {"nameservers": ["10.88.0.1"]}
    });
    for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let ctr = container();
        let mut c = conf(v);
        c["prevResult"] = prev.clone();
        let out = run(&host, "ADD", ctr.path(), &c).ok().json();
        let mut want = prev.clone();
        want["cniVersion"] = json!(v);
        if v < "1.0.0" {
            want["ips"][0]["version"] = json!("4");
        }
        assert_eq!(out, want, "prevResult passed through ({v})");
        assert!(lo_up(&ctr), "lo set up even with a prevResult ({v})");
    }
}

#[test]
fn without_ipv6_the_result_has_only_ipv4() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    let ctr = container();
    ctr.ip(&["link", "set", "lo", "down"]);
    let w = ctr.exec("sysctl", &["-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let out = run(&host, "ADD", ctr.path(), &conf("1.0.0")).ok().json();
    assert_eq!(
        out["ips"],
        json!([{"interface": 0, "address": "127.0.0.1/8"}])
    );
}

#[test]
fn del_tolerates_a_missing_netns() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    let gone = {
        let ctr = container();
        run(&host, "ADD", ctr.path(), &conf("1.0.0")).ok();
        ctr.path().to_string()
    };
    assert!(!Path::new(&gone).exists());
    for v in VERSIONS {
        run(&host, "DEL", &gone, &conf(v)).ok();
        run(&host, "DEL", "", &conf(v)).ok();
    }
    // ADD and CHECK need the namespace.
    assert_eq!(run(&host, "ADD", &gone, &conf("1.0.0")).err_code(), 8);
    assert_eq!(run(&host, "CHECK", &gone, &conf("1.0.0")).err_code(), 8);
    // DEL ignores a prevResult it cannot read (it has no use for it).
    let mut c = conf("1.0.0");
    c["prevResult"] = json!({"ips": "garbage"});
    run(&host, "DEL", &gone, &c).ok();
}

#[test]
fn hostile_input_has_the_right_codes_and_changes_nothing() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    let ctr = container();
    let p = ctr.path();
    let code = |r: Run| r.err_code();
    let bad_prev = |prev: Value| {
        let mut c = conf("1.0.0");
        c["prevResult"] = prev;
        c
    };

    // Not JSON, a non-object, an unknown version, a missing or hostile name.
    let raw = |stdin: &str| {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", p),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        run_in(&host, &testkit::bin("loopback"), &env, stdin)
    };
    assert_eq!(code(raw("{not json")), 6);
    assert_eq!(code(raw("[1, 2]")), 6);
    assert_eq!(code(raw(r#"{"cniVersion": 1, "name": "n"}"#)), 6);
    assert_eq!(code(raw(r#"{"cniVersion": "9.9.9", "name": "n"}"#)), 1);
    assert_eq!(code(raw(r#"{"cniVersion": "1.0.0"}"#)), 7);
    assert_eq!(code(raw(r#"{"cniVersion": "1.0.0", "name": "../x"}"#)), 7);
    // A prevResult that does not decode, or cannot be printed in the config's version.
    assert_eq!(
        code(run(&host, "ADD", p, &bad_prev(json!({"ips": "x"})))),
        6
    );
    assert_eq!(
        code(run(
            &host,
            "ADD",
            p,
            &bad_prev(json!({"cniVersion": "7.0.0"}))
        )),
        1
    );
    let mut legacy = conf("0.2.0");
    legacy["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]});
    assert_ne!(run(&host, "ADD", p, &legacy).code, 0, "0.2.0 needs an IP");
    // Bad environment: code 4, naming the variable.
    // (A bad value is named by skel's wording, "containerID" / "interface name", until skel
    // prefixes the variable's name.)
    let env_err = |vars: &[(&str, &str)], name: &str| {
        let r = run_in(
            &host,
            &testkit::bin("loopback"),
            vars,
            &conf("1.0.0").to_string(),
        );
        assert_eq!(r.err_code(), 4, "{name}: {}", r.stdout);
        let alias = match name {
            "CNI_IFNAME" => "interface name",
            "CNI_CONTAINERID" => "containerID",
            _ => name,
        };
        assert!(
            r.stdout.contains(name) || r.stdout.contains(alias),
            "error names {name}: {}",
            r.stdout
        );
    };
    let base = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", p),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    env_err(&[base[0], base[1], base[3], base[4]], "CNI_NETNS");
    env_err(&[base[0], base[2], base[3], base[4]], "CNI_CONTAINERID");
    env_err(&[base[0], base[1], base[2], base[3]], "CNI_PATH");
    env_err(
        &[
            base[0],
            base[1],
            base[2],
            ("CNI_IFNAME", "eth0/../x"),
            base[4],
        ],
        "CNI_IFNAME",
    );
    env_err(
        &[
            base[0],
            ("CNI_CONTAINERID", "../etc"),
            base[2],
            base[3],
            base[4],
        ],
        "CNI_CONTAINERID",
    );
    env_err(&[("CNI_COMMAND", "BOGUS")], "CNI_COMMAND");
    // A netns path that is not a namespace, or the plugin's own namespace.
    assert_eq!(code(run(&host, "ADD", "/etc/hostname", &conf("1.0.0"))), 8);
    assert_eq!(code(run(&host, "DEL", "/etc/hostname", &conf("1.0.0"))), 8);
    assert_eq!(code(run(&host, "ADD", host.path(), &conf("1.0.0"))), 8);
    assert!(!lo_up(&ctr), "no hostile ADD touched lo");

    // lo carrying a non-loopback address: refused before lo is set up.
    ctr.ip(&["addr", "add", "192.0.2.7/32", "dev", "lo"]);
    let r = run(&host, "ADD", p, &conf("1.0.0"));
    assert_eq!(r.err_code(), 999);
    assert!(r.stdout.contains("192.0.2.7"), "{}", r.stdout);
    assert!(!lo_up(&ctr), "a refused ADD leaves lo down");
}

/// The answer of the reference binary, field by field, for every version it speaks.
#[test]
fn result_matches_the_reference_plugin() {
    if !have_root() {
        return;
    }
    if !Path::new(REFERENCE).is_file() {
        eprintln!("skipping: {REFERENCE} is missing (scripts/install-deps.sh --interop)");
        return;
    }
    let host = TestNs::new();
    let answer = run_reference(&host, "VERSION", "", &json!({})).ok().json();
    let theirs: Vec<String> = answer["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let ours = run(&host, "VERSION", "", &json!({})).ok().json();
    for v in &theirs {
        assert!(
            ours["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!(v)),
            "we speak {v} as the reference does"
        );
    }
    for v in &theirs {
        let (a, b) = (container(), container());
        let c = conf(v);
        let reference = run_reference(&host, "ADD", a.path(), &c).ok().json();
        let mine = run(&host, "ADD", b.path(), &c).ok().json();
        assert!(lo_up(&a) && lo_up(&b));
        assert_eq!(mine["cniVersion"], reference["cniVersion"], "{v}");
        // The reference labels its 1.0.0-shaped result with the config's version (libcni
        // finds nothing to convert); we print the spec's shape for that version. Compare
        // every field the reference prints, in the shape each version has.
        let ref_ifaces = &reference["interfaces"];
        let ref_ips = reference["ips"].as_array().unwrap();
        assert_eq!(ref_ifaces.as_array().unwrap().len(), 1, "{reference}");
        assert_eq!(ref_ifaces[0]["sandbox"], json!(a.path()));
        if v.as_str() < "0.3.0" {
            assert_eq!(mine["ip4"]["ip"], ref_ips[0]["address"], "{v}: {mine}");
            assert_eq!(mine["ip6"]["ip"], ref_ips[1]["address"], "{v}: {mine}");
            assert_eq!(mine["dns"], reference["dns"]);
        } else {
            let mut mine = mine.clone();
            mine["interfaces"][0]["sandbox"] = json!(a.path());
            if v.as_str() < "1.0.0" {
                // The spec's ips[].version, which the reference leaves out.
                for ip in mine["ips"].as_array_mut().unwrap() {
                    assert!(ip.as_object_mut().unwrap().remove("version").is_some());
                }
            }
            assert_eq!(mine, reference, "{v}");
        }

        // DEL: both set lo down; both succeed again; CHECK agrees on a down lo.
        run_reference(&host, "DEL", a.path(), &c).ok();
        run(&host, "DEL", b.path(), &c).ok();
        assert!(!lo_up(&a) && !lo_up(&b), "{v}");
        run_reference(&host, "DEL", a.path(), &c).ok();
        run(&host, "DEL", b.path(), &c).ok();
        if v.as_str() >= "0.4.0" {
            let (r, m) = (
                run_reference(&host, "CHECK", a.path(), &c),
                run(&host, "CHECK", b.path(), &c),
            );
            assert_eq!(m.err_code(), r.err_code(), "CHECK on a down lo ({v})");
        }
    }
    // Both tolerate a namespace that is gone.
    let gone = container().path().to_string();
    run_reference(&host, "DEL", &gone, &conf("1.0.0")).ok();
    run(&host, "DEL", &gone, &conf("1.0.0")).ok();
}
