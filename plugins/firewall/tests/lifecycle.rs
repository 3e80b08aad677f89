//! The verbs against the real kernel with hand-written prevResults (no traffic): every
//! supported version, CHECK, DEL twice, DEL without prevResult or netns, GC with empty and
//! partial lists, hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use testkit::{Run, TestNs, cni, have_root};

struct Host {
    ns: TestNs,
    /// A namespace to pass as CNI_NETNS (the plugin never enters it).
    ctr: TestNs,
}

impl Host {
    fn new() -> Host {
        Host {
            ns: TestNs::new(),
            ctr: TestNs::new(),
        }
    }

    fn run(&self, cmd: &str, cid: &str, conf: &Value) -> Run {
        cni(
            &self.ns,
            "firewall",
            cmd,
            cid,
            self.ctr.path(),
            "eth0",
            conf,
            &[],
        )
    }

    fn run_no_netns(&self, cmd: &str, cid: &str, conf: &Value) -> Run {
        cni(&self.ns, "firewall", cmd, cid, "", "eth0", conf, &[])
    }

    fn gc(&self, net: &str, valid: Value) -> Run {
        let c = json!({"cniVersion": "1.1.0", "name": net, "type": "firewall",
            "cni.dev/valid-attachments": valid});
        cni(&self.ns, "firewall", "GC", "", "", "", &c, &[])
    }

    fn ruleset(&self) -> String {
        self.ns.nft_ruleset().to_string()
    }

    fn has(&self, net: &str, cid: &str) -> bool {
        self.ruleset()
            .contains(&format!("\"comment\":\"{net}/{cid}/eth0\""))
    }

    fn set(&self, family: &str, set: &str) -> Vec<Value> {
        let out = self
            .ns
            .exec("nft", &["-j", "list", "set", family, "cnirs_firewall", set]);
        if !out.status.success() {
            return vec![];
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["set"]["elem"].as_array())
            .flatten()
            .cloned()
            .collect()
    }

    fn nft(&self, args: &[&str]) {
        let out = self.ns.exec("nft", args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A bridge plugin's result in `version`'s shape: bridge, host veth, container interface.
fn prev(version: &str, bridge: &str, veth: &str, v4: &str, v6: Option<&str>, netns: &str) -> Value {
    let mut ips = vec![json!({"interface": 2, "address": v4, "gateway": "10.50.0.1"})];
    if let Some(v6) = v6 {
        ips.push(json!({"interface": 2, "address": v6}));
    }
    if version.starts_with("0.") {
        for ip in &mut ips {
            let fam = if ip["address"].as_str().unwrap().contains(':') {
                "6"
            } else {
                "4"
            };
            ip["version"] = json!(fam);
        }
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": bridge, "mac": "02:00:00:00:00:01"},
            {"name": veth, "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": netns},
        ],
        "ips": ips,
        "dns": {},
    })
}

fn conf(version: &str, net: &str, extra: Value, prev: Option<Value>) -> Value {
    let mut c = json!({"cniVersion": version, "name": net, "type": "firewall"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    c
}

#[test]
fn every_supported_version_add_check_del() {
    if !have_root() {
        return;
    }
    let h = Host::new();
    for (i, v) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let cid = format!("v{i}");
        let p = prev(
            v,
            "cnifw0",
            "veth0000000a",
            &format!("10.50.0.{}/24", i + 2),
            Some(&format!("fd00:50::{}/64", i + 2)),
            h.ctr.path(),
        );
        let c = conf(
            v,
            "netv",
            json!({"ingressPolicy": "same-bridge"}),
            Some(p.clone()),
        );
        let out = h.run("ADD", &cid, &c).ok().json();
        assert_eq!(out["cniVersion"], v);
        assert_eq!(out["ips"], p["ips"], "{v}: prevResult printed back");
        h.run("CHECK", &cid, &c).ok();
        assert!(h.has("netv", &cid));
        h.run("DEL", &cid, &c).ok();
        assert!(!h.has("netv", &cid), "{v}");
        h.run("DEL", &cid, &c).ok();
    }
    // A prevResult of another version than the config is read too.
    let p = prev(
        "0.4.0",
        "cnifw0",
        "veth0000000a",
        "10.50.0.9/24",
        None,
        h.ctr.path(),
    );
    let out = h
        .run("ADD", "mixed", &conf("1.1.0", "netv", json!({}), Some(p)))
        .ok()
        .json();
    assert_eq!(out["cniVersion"], "1.1.0");
    assert!(out["ips"][0].get("version").is_none());

    for old in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"] {
        let p = prev(
            "0.3.1",
            "cnifw0",
            "veth0000000a",
            "10.50.0.8/24",
            None,
            h.ctr.path(),
        );
        let r = h.run("ADD", "old", &conf(old, "netv", json!({}), Some(p)));
        assert_eq!(r.err_code(), 1, "{old}");
    }
    let version = cni(
        &h.ns,
        "firewall",
        "VERSION",
        "",
        "",
        "",
        &json!({"cniVersion": "1.1.0"}),
        &[],
    );
    assert_eq!(
        version.ok().json()["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn check_reports_what_is_missing() {
    if !have_root() {
        return;
    }
    let h = Host::new();
    let p = prev(
        "1.1.0",
        "cnifw1",
        "veth0000000b",
        "10.51.0.2/24",
        None,
        h.ctr.path(),
    );
    let c = conf(
        "1.1.0",
        "netc",
        json!({"ingressPolicy": "isolated"}),
        Some(p),
    );
    assert_ne!(h.run("CHECK", "c1", &c).code, 0, "nothing there yet");
    h.run("ADD", "c1", &c).ok();
    h.run("CHECK", "c1", &c).ok();
    h.nft(&[
        "delete",
        "element",
        "bridge",
        "cnirs_firewall",
        "isolated_ports",
        "{ veth0000000b }",
    ]);
    let r = h.run("CHECK", "c1", &c);
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("isolated_ports"), "{}", r.stdout);
    // A missing hand-off rule in an iptables-nft FORWARD chain is reported too.
    h.run("ADD", "c1", &c).ok();
    h.nft(&["add", "table", "ip", "filter"]);
    h.nft(&[
        "add",
        "chain",
        "ip",
        "filter",
        "FORWARD",
        "{ type filter hook forward priority 0; policy drop; }",
    ]);
    let r = h.run("CHECK", "c1", &c);
    assert!(r.stdout.contains("FORWARD"), "{}", r.stdout);
    h.run("ADD", "c1", &c).ok();
    h.run("CHECK", "c1", &c).ok();
    // CHECK needs prevResult.
    let r = h.run("CHECK", "c1", &conf("1.1.0", "netc", json!({}), None));
    assert_eq!(r.err_code(), 7);
}

#[test]
fn del_without_prev_result_or_netns_removes_by_comment() {
    if !have_root() {
        return;
    }
    let h = Host::new();
    // DEL before anything exists, with and without prevResult.
    let p1 = prev(
        "1.1.0",
        "cnifw2",
        "veth0000000c",
        "10.52.0.2/24",
        Some("fd00:52::2/64"),
        h.ctr.path(),
    );
    let p2 = prev(
        "1.1.0",
        "cnifw2",
        "veth0000000d",
        "10.52.0.3/24",
        None,
        h.ctr.path(),
    );
    let same = json!({"ingressPolicy": "same-bridge"});
    h.run_no_netns(
        "DEL",
        "d1",
        &conf("1.1.0", "netd", same.clone(), Some(p1.clone())),
    )
    .ok();
    h.run_no_netns("DEL", "d1", &conf("1.1.0", "netd", same.clone(), None))
        .ok();

    h.run("ADD", "d1", &conf("1.1.0", "netd", same.clone(), Some(p1)))
        .ok();
    h.run("ADD", "d2", &conf("1.1.0", "netd", same.clone(), Some(p2)))
        .ok();
    assert_eq!(h.set("inet", "guarded_bridges"), vec![json!("cnifw2")]);

    h.run_no_netns("DEL", "d1", &conf("1.1.0", "netd", same.clone(), None))
        .ok();
    assert!(!h.has("netd", "d1"));
    assert!(h.has("netd", "d2"));
    assert_eq!(
        h.set("inet", "guarded_bridges"),
        vec![json!("cnifw2")],
        "d2 still uses it"
    );
    assert_eq!(h.set("inet", "ctr6"), Vec::<Value>::new());

    // A DEL whose config ADD would refuse still cleans up.
    h.run_no_netns(
        "DEL",
        "d2",
        &conf("1.1.0", "netd", json!({"ingressPolicy": "bogus"}), None),
    )
    .ok();
    assert!(!h.has("netd", "d2"));
    assert!(
        h.set("inet", "guarded_bridges").is_empty(),
        "the last member took the bridge"
    );
    assert!(h.set("inet", "ctr4").is_empty());
    h.run_no_netns("DEL", "d2", &conf("1.1.0", "netd", json!({}), None))
        .ok();
}

#[test]
fn gc_with_empty_and_partial_lists() {
    if !have_root() {
        return;
    }
    let h = Host::new();
    let add = |net: &str, cid: &str, ip: &str, veth: &str| {
        let p = prev("1.1.0", "cnifw3", veth, ip, None, h.ctr.path());
        h.run(
            "ADD",
            cid,
            &conf("1.1.0", net, json!({"ingressPolicy": "isolated"}), Some(p)),
        )
        .ok();
    };
    add("netg", "g1", "10.53.0.2/24", "veth00000011");
    add("netg", "g2", "10.53.0.3/24", "veth00000012");
    add("neth", "h1", "10.53.0.4/24", "veth00000013");

    h.gc("netg", json!([{"containerID": "g1", "ifname": "eth0"}]))
        .ok();
    assert!(h.has("netg", "g1") && !h.has("netg", "g2") && h.has("neth", "h1"));
    assert_eq!(h.set("bridge", "isolated_ports").len(), 2);
    // The older key is honoured too.
    let c = json!({"cniVersion": "1.1.0", "name": "netg", "type": "firewall",
        "cni.dev/attachments": [{"containerID": "g1", "ifname": "eth0"}]});
    cni(&h.ns, "firewall", "GC", "", "", "", &c, &[]).ok();
    assert!(h.has("netg", "g1"));

    h.gc("netg", json!([])).ok();
    assert!(!h.has("netg", "g1") && h.has("neth", "h1"));
    assert_eq!(
        h.set("inet", "guarded_bridges"),
        vec![json!("cnifw3")],
        "h1 still uses it"
    );
    h.gc("neth", json!([])).ok();
    assert!(h.set("inet", "guarded_bridges").is_empty());
    assert!(h.set("inet", "ctr4").is_empty() && h.set("bridge", "isolated_ports").is_empty());
    // GC on a host without our tables.
    let fresh = Host::new();
    fresh.gc("netg", json!([])).ok();
    assert!(!fresh.ruleset().contains("cnirs_firewall"));
}

#[test]
fn hostile_input_fails_with_its_code_and_changes_nothing() {
    if !have_root() {
        return;
    }
    let h = Host::new();
    let good = prev(
        "1.1.0",
        "cnifw4",
        "veth00000014",
        "10.54.0.2/24",
        None,
        h.ctr.path(),
    );
    let before = h.ruleset();
    let cases: Vec<(&str, Value, u64)> = vec![
        (
            "unknown ingressPolicy",
            conf(
                "1.1.0",
                "netx",
                json!({"ingressPolicy": "closed"}),
                Some(good.clone()),
            ),
            7,
        ),
        (
            "unknown backend",
            conf(
                "1.1.0",
                "netx",
                json!({"backend": "pf"}),
                Some(good.clone()),
            ),
            7,
        ),
        (
            "backend not a string",
            conf("1.1.0", "netx", json!({"backend": 5}), Some(good.clone())),
            6,
        ),
        ("no prevResult", conf("1.1.0", "netx", json!({}), None), 7),
        (
            "prevResult not an object",
            conf("1.1.0", "netx", json!({}), Some(json!(42))),
            6,
        ),
        (
            "bad address",
            conf(
                "1.1.0",
                "netx",
                json!({}),
                Some(json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.300/24"}]})),
            ),
            6,
        ),
        (
            "address without prefix",
            conf(
                "1.1.0",
                "netx",
                json!({}),
                Some(json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.3"}]})),
            ),
            6,
        ),
        (
            "bridge name too long",
            conf(
                "1.1.0",
                "netx",
                json!({"ingressPolicy": "same-bridge"}),
                Some(prev(
                    "1.1.0",
                    &"b".repeat(40),
                    "veth00000014",
                    "10.54.0.2/24",
                    None,
                    h.ctr.path(),
                )),
            ),
            7,
        ),
        (
            "bridge name with a newline",
            conf(
                "1.1.0",
                "netx",
                json!({"ingressPolicy": "same-bridge"}),
                Some(prev(
                    "1.1.0",
                    "br\n0",
                    "veth00000014",
                    "10.54.0.2/24",
                    None,
                    h.ctr.path(),
                )),
            ),
            7,
        ),
        (
            "isolated without a host veth",
            conf(
                "1.1.0",
                "netx",
                json!({"ingressPolicy": "isolated"}),
                Some(json!({"cniVersion": "1.1.0",
                "interfaces": [{"name": "cnifw4"}, {"name": "eth0", "sandbox": h.ctr.path()}],
                "ips": [{"interface": 1, "address": "10.54.0.2/24"}]})),
            ),
            7,
        ),
    ];
    for (what, c, code) in cases {
        let r = h.run("ADD", "x1", &c);
        assert_eq!(r.err_code(), code, "{what}: {}", r.stdout);
    }
    let r = testkit::run_in(
        &h.ns,
        &testkit::bin("firewall"),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x1"),
            ("CNI_NETNS", h.ctr.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ],
        "{not json",
    );
    assert_eq!(r.err_code(), 6);
    let r = cni(
        &h.ns,
        "firewall",
        "ADD",
        "../x",
        h.ctr.path(),
        "eth0",
        &conf("1.1.0", "netx", json!({}), Some(good.clone())),
        &[],
    );
    assert_eq!(r.err_code(), 4);
    assert_eq!(h.ruleset(), before, "no state change");

    // Compatibility keys are accepted and say how they are served.
    for backend in ["iptables", "firewalld"] {
        let c = conf(
            "1.1.0",
            "netx",
            json!({"backend": backend, "firewalldZone": "trusted",
            "iptablesAdminChainName": "CNI-ADMIN"}),
            Some(good.clone()),
        );
        let r = h.run("ADD", "x1", &c).ok();
        assert!(r.stderr.contains("served by nftables"), "{}", r.stderr);
        h.run("DEL", "x1", &c).ok();
    }
    // No address: nothing to do, prevResult printed back, no table made.
    let fresh = Host::new();
    let empty = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "cnifw4"}], "ips": []});
    let r = fresh
        .run("ADD", "x2", &conf("1.0.0", "netx", json!({}), Some(empty)))
        .ok();
    assert_eq!(r.json()["interfaces"][0]["name"], "cnifw4");
    assert!(!fresh.ruleset().contains("cnirs_firewall"));
}

/// Parallel ADDs (as kubelet starts pods) insert the iptables hand-off rule exactly once per
/// family, and every attachment gets its elements.
#[test]
fn parallel_adds_insert_the_hand_off_rule_once() {
    if !have_root() {
        return;
    }
    let h = Host::new();
    for fam in ["ip", "ip6"] {
        h.nft(&["add", "table", fam, "filter"]);
        h.nft(&[
            "add",
            "chain",
            fam,
            "filter",
            "FORWARD",
            "{ type filter hook forward priority 0; policy drop; }",
        ]);
    }
    std::thread::scope(|s| {
        for i in 0..8 {
            let h = &h;
            s.spawn(move || {
                let p = prev(
                    "1.1.0",
                    "cnifw5",
                    &format!("veth000001{i:02}"),
                    &format!("10.55.0.{}/24", i + 2),
                    Some(&format!("fd00:55::{}/64", i + 2)),
                    h.ctr.path(),
                );
                h.run(
                    "ADD",
                    &format!("p{i}"),
                    &conf("1.1.0", "netp", json!({}), Some(p)),
                )
                .ok();
            });
        }
    });
    for fam in ["ip", "ip6"] {
        let out =
            h.ns.exec("nft", &["list", "chain", fam, "filter", "FORWARD"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("cni-rs firewall").count(), 1, "{fam}: {text}");
    }
    assert_eq!(h.set("inet", "ctr4").len(), 8);
    assert_eq!(h.set("inet", "ctr6").len(), 8);
}
