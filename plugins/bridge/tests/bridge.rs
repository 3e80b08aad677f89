//! The bridge plugin with host-local, run as a runtime runs them: the built binaries, spawned
//! inside a "host" network namespace made for the test, wiring "containers" that are
//! namespaces of their own. Assertions are on kernel state and on real TCP traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use support::*;
use testkit::{TestNs, cni, have_root, tcp_exchange};

fn two_containers_on_one_bridge(version: &str) {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf(version, json!({}), v4_ranges("10.77.0.0/24"));
    let (c1, c2) = (TestNs::new(), TestNs::new());
    let r1 = w.add("ctr1", &c1, &conf);
    let r2 = w.add("ctr2", &c2, &conf);

    // The result: printed in the config's version, three interfaces, IPs on the container one.
    assert_eq!(r1["cniVersion"], version);
    let ifaces = r1["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 3, "{r1}");
    assert_eq!(ifaces[0]["name"], "cnitest0");
    assert!(ifaces[1]["name"].as_str().unwrap().starts_with("veth"));
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], c1.path());
    assert_eq!(r1["ips"][0]["interface"], 2);
    assert_eq!(r1["ips"][0]["gateway"], "10.77.0.1");
    assert_eq!(r1["ips"][0].get("version").is_some(), version < "1.0.0");

    // The kernel: addresses in the containers, the gateway on the bridge, default routes.
    let a1 = addr_of(&r1, true);
    let a2 = addr_of(&r2, true);
    assert_ne!(a1, a2);
    assert_eq!(container_addrs(&c1), vec![format!("{a1}/24")]);
    assert!(
        w.host
            .ip(&["-4", "addr", "show", "dev", "cnitest0"])
            .contains("10.77.0.1/24")
    );
    assert!(
        c2.ip(&["route", "show", "default"])
            .contains("via 10.77.0.1 dev eth0")
    );
    let host_veth = ifaces[1]["name"].as_str().unwrap();
    assert!(
        w.host
            .ip(&["link", "show", "dev", host_veth])
            .contains("master cnitest0")
    );
    assert_eq!(w.host.sysctl("net.ipv4.ip_forward"), "1");

    // Traffic: container to container over the bridge, and host to container via the gateway.
    tcp_exchange(&c2, &c1, SocketAddr::new(a2, 7001)).unwrap();
    tcp_exchange(&c1, &w.host, SocketAddr::new(a1, 7002)).unwrap();

    if version >= "0.4.0" {
        w.check("ctr1", &c1, &conf, &r1).ok();
        // An address removed by hand makes CHECK fail, naming it.
        c1.ip(&["addr", "del", &format!("{a1}/24"), "dev", "eth0"]);
        let failed = w.check("ctr1", &c1, &conf, &r1);
        assert_ne!(failed.code, 0);
        assert!(
            failed.json()["msg"]
                .as_str()
                .unwrap()
                .contains(&a1.to_string()),
            "{}",
            failed.stdout
        );
    }

    let prev = (version >= "0.4.0").then_some(&r1);
    w.del("ctr1", c1.path(), &conf, prev).ok();
    assert!(!c1.has_link("eth0"));
    assert!(!w.host.has_link(host_veth));
    assert_eq!(w.allocations(), vec![a2.to_string()]);
    // DEL is idempotent.
    w.del("ctr1", c1.path(), &conf, prev).ok();
    w.del(
        "ctr2",
        c2.path(),
        &conf,
        (version >= "0.4.0").then_some(&r2),
    )
    .ok();
    assert!(w.allocations().is_empty());
    assert!(w.host_veths().is_empty());
    // The bridge is shared and stays.
    assert!(w.host.has_link("cnitest0"));
}

#[test]
fn two_containers_v0_3_1() {
    two_containers_on_one_bridge("0.3.1");
}

#[test]
fn two_containers_v0_4_0() {
    two_containers_on_one_bridge("0.4.0");
}

#[test]
fn two_containers_v1_0_0() {
    two_containers_on_one_bridge("1.0.0");
}

#[test]
fn two_containers_v1_1_0() {
    two_containers_on_one_bridge("1.1.0");
}

#[test]
fn dual_stack_tcp_over_ipv4_and_ipv6() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let ranges = json!([[{"subnet": "10.78.0.0/24"}], [{"subnet": "fd42:78::/64"}]]);
    let mut conf = w.conf("1.0.0", json!({"isDefaultGateway": true}), ranges);
    conf["ipam"]["routes"] = json!([]);
    let (c1, c2) = (TestNs::new(), TestNs::new());
    let r1 = w.add("ctr1", &c1, &conf);
    let r2 = w.add("ctr2", &c2, &conf);
    assert_eq!(r1["ips"].as_array().unwrap().len(), 2);
    let (a1v6, a2v6) = (addr_of(&r1, false), addr_of(&r2, false));
    assert!(container_addrs(&c1).contains(&format!("{a1v6}/64")));
    assert!(
        w.host
            .ip(&["-6", "addr", "show", "dev", "cnitest0"])
            .contains("fd42:78::1/64")
    );
    // isDefaultGateway adds a default route per family.
    assert!(
        c1.ip(&["-6", "route", "show", "default"])
            .contains("via fd42:78::1")
    );
    assert!(
        c1.ip(&["-4", "route", "show", "default"])
            .contains("via 10.78.0.1")
    );
    tcp_exchange(&c2, &c1, SocketAddr::new(a2v6, 7003)).unwrap();
    tcp_exchange(&c1, &c2, SocketAddr::new(addr_of(&r1, true), 7004)).unwrap();
    tcp_exchange(&c1, &w.host, SocketAddr::new(a1v6, 7005)).unwrap();
    w.check("ctr1", &c1, &conf, &r1).ok();
    w.del("ctr1", c1.path(), &conf, Some(&r1)).ok();
    w.del("ctr2", c2.path(), &conf, Some(&r2)).ok();
    assert!(w.allocations().is_empty());
}

#[test]
fn del_after_the_netns_is_gone_leaves_nothing() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf(
        "1.0.0",
        json!({"ipMasq": true, "macspoofchk": true}),
        v4_ranges("10.79.0.0/24"),
    );
    for (cid, empty_netns) in [("gone-ctr-1", false), ("gone-ctr-2", true)] {
        let c = TestNs::new();
        let path = c.path().to_string();
        let r = w.add(cid, &c, &conf);
        let addr = addr_of(&r, true).to_string();
        assert!(nft_mentions(&w.host, cid), "rules made for {cid}");
        assert!(nft_mentions(&w.host, &addr));
        drop(c);
        assert!(!Path::new(&path).exists());
        let netns = if empty_netns { "" } else { path.as_str() };
        w.del(cid, netns, &conf, Some(&r)).ok();
        assert!(!nft_mentions(&w.host, cid), "no rule left for {cid}");
        assert!(!nft_mentions(&w.host, &addr));
        assert!(w.allocations().is_empty(), "allocation of {cid} released");
        assert!(w.host_veths().is_empty());
        w.del(cid, netns, &conf, Some(&r)).ok();
    }
    // Without prevResult (0.3.1-style DEL) the attachment's rules are still found.
    let c = TestNs::new();
    let r = w.add("noprev-ctr", &c, &conf);
    drop(c);
    w.del("noprev-ctr", "", &conf, None).ok();
    assert!(!nft_mentions(&w.host, "noprev-ctr"));
    assert!(!nft_mentions(&w.host, &addr_of(&r, true).to_string()));
    assert!(w.allocations().is_empty());
}

#[test]
fn exhausted_pool_fails_add_and_leaves_nothing() {
    if !have_root() {
        return;
    }
    let w = World::new();
    // A /30 has one usable address once the gateway is taken.
    let conf = w.conf("1.0.0", json!({"ipMasq": true}), v4_ranges("10.80.0.0/30"));
    let (c1, c2) = (TestNs::new(), TestNs::new());
    let r1 = w.add("first", &c1, &conf);
    assert_eq!(w.allocations(), vec!["10.80.0.2".to_string()]);
    let veths_before = w.host_veths();
    let failed = w.run("ADD", "second", c2.path(), &conf);
    assert_ne!(failed.code, 0);
    let err = failed.json();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{err}"
    );
    assert!(!c2.has_link("eth0"), "no container interface left");
    assert_eq!(w.host_veths(), veths_before, "no host veth left");
    assert_eq!(w.allocations(), vec!["10.80.0.2".to_string()]);
    assert!(!nft_mentions(&w.host, "second"));
    w.del("first", c1.path(), &conf, Some(&r1)).ok();
}

#[test]
fn gc_frees_exactly_the_attachments_not_listed() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf(
        "1.1.0",
        json!({"ipMasq": true, "macspoofchk": true}),
        v4_ranges("10.81.0.0/24"),
    );
    let ctrs: Vec<TestNs> = (0..3).map(|_| TestNs::new()).collect();
    let results: Vec<Value> = ctrs
        .iter()
        .enumerate()
        .map(|(i, c)| w.add(&format!("gc-ctr-{i}"), c, &conf))
        .collect();
    assert_eq!(w.allocations().len(), 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-ctr-0", "ifname": "eth0"}]);
    cni(&w.host, "bridge", "GC", "", "", "", &gc, &[]).ok();
    assert_eq!(
        w.allocations(),
        vec![addr_of(&results[0], true).to_string()]
    );
    assert!(nft_mentions(&w.host, "gc-ctr-0"));
    assert!(!nft_mentions(&w.host, "gc-ctr-1"));
    assert!(!nft_mentions(&w.host, "gc-ctr-2"));
    // STATUS is forwarded to IPAM and succeeds while addresses are free.
    cni(&w.host, "bridge", "STATUS", "", "", "", &conf, &[]).ok();
    // An empty list means nothing is valid.
    gc["cni.dev/valid-attachments"] = json!([]);
    cni(&w.host, "bridge", "GC", "", "", "", &gc, &[]).ok();
    assert!(w.allocations().is_empty());
    assert!(!nft_mentions(&w.host, "gc-ctr-0"));
}

#[test]
fn hostile_input_gets_its_code_and_changes_nothing() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let good = w.conf("1.0.0", json!({}), v4_ranges("10.82.0.0/24"));
    let c = TestNs::new();
    let links_before = w.host.ip(&["-o", "link", "show"]);
    let run_raw = |stdin: &str, cid: &str, ifname: &str| {
        let path = testkit::bin_dir();
        testkit::run_in(
            &w.host,
            &testkit::bin("bridge"),
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", c.path()),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", path.to_str().unwrap()),
            ],
            stdin,
        )
    };
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    let mut bad_cidr = good.clone();
    bad_cidr["ipam"]["ranges"] = json!([[{"subnet": "10.82.0.0/33"}]]);
    let cases: Vec<(String, &str, &str, u64)> = vec![
        ("{\"cniVersion\": \"1.0.0\", ".into(), "c", "eth0", 6),
        (with("cniVersion", json!("9.9.9")), "c", "eth0", 1),
        (bad_cidr.to_string(), "c", "eth0", 7),
        (with("name", json!("a/b")), "c", "eth0", 7),
        (with("name", json!("..")), "c", "eth0", 7),
        (with("vlan", json!(5000)), "c", "eth0", 7),
        (good.to_string(), "../../etc", "eth0", 4),
        (good.to_string(), "c", "eth0-much-too-long", 4),
        (good.to_string(), "c", "../eth0", 4),
    ];
    for (stdin, cid, ifname, want) in cases {
        let r = run_raw(&stdin, cid, ifname);
        assert_eq!(
            r.err_code(),
            want,
            "stdin={stdin} cid={cid} ifname={ifname}: {}",
            r.stdout
        );
        assert!(!r.json()["msg"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        w.host.ip(&["-o", "link", "show"]),
        links_before,
        "no link made"
    );
    assert!(!c.has_link("eth0"));
    assert!(w.allocations().is_empty());
    assert!(!w.data.path().join("..").join("etc").join("eth0").exists());
}

#[test]
fn a_second_add_for_the_same_interface_fails_cleanly() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf("1.0.0", json!({}), v4_ranges("10.83.0.0/24"));
    let c = TestNs::new();
    let r = w.add("dup", &c, &conf);
    let again = w.run("ADD", "dup2", c.path(), &conf);
    assert_ne!(again.code, 0);
    assert!(
        again.json()["msg"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{}",
        again.stdout
    );
    // The failed ADD released its own allocation and left the first attachment alone.
    assert_eq!(w.allocations(), vec![addr_of(&r, true).to_string()]);
    assert_eq!(w.host_veths().len(), 1);
    w.del("dup", c.path(), &conf, Some(&r)).ok();
}

#[test]
fn an_address_handed_out_again_belongs_to_its_new_owner() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let mut conf = w.conf("1.1.0", json!({"ipMasq": true}), v4_ranges("10.97.0.0/24"));
    conf["args"] = json!({"cni": {"ips": ["10.97.0.50"]}});
    let (ca, cb) = (TestNs::new(), TestNs::new());
    w.add("owner-a", &ca, &conf);
    // A's address is released behind the bridge's back (as if its DEL died half-way), and
    // then handed to B.
    cni(
        &w.host,
        "host-local",
        "DEL",
        "owner-a",
        ca.path(),
        "eth0",
        &conf,
        &[],
    )
    .ok();
    let rb = w.add("owner-b", &cb, &conf);
    assert_eq!(addr_of(&rb, true).to_string(), "10.97.0.50");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "owner-b", "ifname": "eth0"}]);
    cni(&w.host, "bridge", "GC", "", "", "", &gc, &[]).ok();
    let ruleset = w.host.nft_ruleset().to_string();
    assert!(
        ruleset.contains("owner-b"),
        "B keeps its masquerade: {ruleset}"
    );
    assert!(!ruleset.contains("owner-a"));
    w.del("owner-b", cb.path(), &conf, Some(&rb)).ok();
    assert!(!nft_mentions(&w.host, "10.97.0.50"));
}
