//! Each bridge option, observed in the kernel after ADD (and CHECK where it checks it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use support::*;
use testkit::{TestNs, have_root, tcp_peer_seen};

fn link_details(ns: &TestNs, dev: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", "dev", dev])[0].clone()
}

#[test]
fn mtu_mac_hairpin_and_isolation_reach_the_kernel() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let extra = json!({"mtu": 1400, "hairpinMode": true, "portIsolation": true,
                       "runtimeConfig": {"mac": "02:42:ac:11:00:99"}});
    let conf = w.conf("1.1.0", extra, v4_ranges("10.90.0.0/24"));
    let c = TestNs::new();
    let r = w.add("opts", &c, &conf);
    assert_eq!(r["interfaces"][2]["mac"], "02:42:ac:11:00:99");
    let eth0 = link_details(&c, "eth0");
    assert_eq!(eth0["address"], "02:42:ac:11:00:99");
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(
        r["interfaces"][2]["mtu"], 1400,
        "1.1.0 results carry the MTU"
    );
    let host_veth = r["interfaces"][1]["name"].as_str().unwrap();
    let port = link_details(&w.host, host_veth);
    assert_eq!(port["mtu"], 1400);
    let slave = &port["linkinfo"]["info_slave_data"];
    assert_eq!(slave["hairpin"], true, "{port}");
    assert_eq!(slave["isolated"], true, "{port}");
    assert_eq!(
        link_details(&w.host, "cnitest0")["mtu"],
        1400,
        "MTU of a bridge it creates"
    );
    assert_eq!(c.sysctl("net.ipv4.conf.eth0.arp_notify"), "1");
    w.check("opts", &c, &conf, &r).ok();
    w.del("opts", c.path(), &conf, Some(&r)).ok();
}

#[test]
fn promisc_mode_is_set_and_checked() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf(
        "1.0.0",
        json!({"promiscMode": true}),
        v4_ranges("10.91.0.0/24"),
    );
    let c = TestNs::new();
    let r = w.add("promisc", &c, &conf);
    let flags = link_details(&w.host, "cnitest0")["flags"].to_string();
    assert!(flags.contains("PROMISC"), "{flags}");
    w.check("promisc", &c, &conf, &r).ok();
    w.host.ip(&["link", "set", "cnitest0", "promisc", "off"]);
    let failed = w.check("promisc", &c, &conf, &r);
    assert!(
        failed.json()["msg"]
            .as_str()
            .unwrap()
            .contains("promiscuous"),
        "{}",
        failed.stdout
    );
    w.del("promisc", c.path(), &conf, Some(&r)).ok();
}

#[test]
fn a_second_subnet_on_the_bridge_needs_force_address() {
    if !have_root() {
        return;
    }
    let a = World::new();
    let conf_a = a.conf("1.0.0", json!({}), v4_ranges("10.92.0.0/24"));
    let c1 = TestNs::new();
    let r1 = a.add("net-a", &c1, &conf_a);
    // A second network on the same bridge (same host namespace), another subnet.
    let mut conf_b = a.conf("1.0.0", json!({}), v4_ranges("10.93.0.0/24"));
    conf_b["name"] = json!(format!("{}-b", a.net));
    let c2 = TestNs::new();
    let failed = a.run("ADD", "net-b", c2.path(), &conf_b);
    assert!(
        failed.json()["msg"]
            .as_str()
            .unwrap()
            .contains("forceAddress"),
        "{}",
        failed.stdout
    );
    assert!(!c2.has_link("eth0"));
    let b_dir = a.data.path().join(conf_b["name"].as_str().unwrap());
    let b_allocs = std::fs::read_dir(&b_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(b_allocs, 0, "the failed ADD released its address");
    conf_b["forceAddress"] = json!(true);
    let r2 = a.add("net-b", &c2, &conf_b);
    let addrs = a.host.ip(&["-4", "addr", "show", "dev", "cnitest0"]);
    assert!(
        addrs.contains("10.93.0.1/24") && !addrs.contains("10.92.0.1/24"),
        "{addrs}"
    );
    a.del("net-b", c2.path(), &conf_b, Some(&r2)).ok();
    a.del("net-a", c1.path(), &conf_a, Some(&r1)).ok();
}

#[test]
fn disable_container_interface_leaves_it_down_without_ipam() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let mut conf = w.conf(
        "1.0.0",
        json!({"disableContainerInterface": true}),
        json!([]),
    );
    conf.as_object_mut().unwrap().remove("ipam");
    let c = TestNs::new();
    let r = w.add("l2only", &c, &conf);
    assert!(r.get("ips").is_none(), "{r}");
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(link_details(&c, "eth0")["operstate"], "DOWN");
    w.del("l2only", c.path(), &conf, Some(&r)).ok();
    assert!(!c.has_link("eth0"));
}

#[test]
fn enabledad_returns_only_after_duplicate_address_detection() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let mut conf = w.conf(
        "1.0.0",
        json!({"enabledad": true}),
        json!([[{"subnet": "fd42:94::/64"}]]),
    );
    conf["ipam"]["routes"] = json!([]);
    let c = TestNs::new();
    let r = w.add("dad", &c, &conf);
    assert_eq!(c.sysctl("net.ipv6.conf.eth0.accept_dad"), "1");
    let addr = c.ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    assert!(
        addr.contains("fd42:94::") && !addr.contains("tentative"),
        "{addr}"
    );
    w.del("dad", c.path(), &conf, Some(&r)).ok();
}

#[test]
fn vlan_port_where_the_kernel_filters_vlans() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf(
        "1.0.0",
        json!({"vlan": 10, "vlanTrunk": [{"id": 20}]}),
        v4_ranges("10.95.0.0/24"),
    );
    let c = TestNs::new();
    let run = w.run("ADD", "vlan", c.path(), &conf);
    if run.code != 0 && run.stdout.contains("Operation not supported") {
        eprintln!(
            "skipping the VLAN assertions: kernel without bridge VLAN filtering ({})",
            run.stdout.trim()
        );
        // The failed ADD still left nothing behind.
        assert!(w.allocations().is_empty());
        assert!(w.host_veths().is_empty());
        assert!(!c.has_link("eth0"));
        return;
    }
    let r = run.ok().json();
    let host_veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let vlans = String::from_utf8_lossy(
        &w.host
            .exec("bridge", &["-j", "vlan", "show", "dev", &host_veth])
            .stdout,
    )
    .into_owned();
    assert!(
        vlans.contains("\"vlan\":10") && vlans.contains("\"vlan\":20"),
        "{vlans}"
    );
    assert!(
        w.host
            .ip(&["-4", "addr", "show", "dev", "cnitest0.10"])
            .contains("10.95.0.1/24")
    );
    w.del("vlan", c.path(), &conf, Some(&r)).ok();
}

#[test]
fn ip_masq_rewrites_the_source_of_traffic_leaving_the_subnet() {
    if !have_root() {
        return;
    }
    // An "outside" server reachable from the host namespace over 192.0.2.0/24.
    let w = World::new();
    let server = TestNs::new();
    let (hv, sv) = (testkit::unique_name("up"), testkit::unique_name("dn"));
    w.host.ip(&[
        "link",
        "add",
        &hv,
        "type",
        "veth",
        "peer",
        "name",
        &sv,
        "netns",
        &server.tid(),
    ]);
    w.host.ip(&["addr", "add", "192.0.2.1/24", "dev", &hv]);
    w.host.ip(&["link", "set", &hv, "up"]);
    server.ip(&["addr", "add", "192.0.2.2/24", "dev", &sv]);
    server.ip(&["link", "set", &sv, "up"]);
    let target: SocketAddr = "192.0.2.2:7300".parse().unwrap();

    for masq in [true, false] {
        let conf = w.conf("1.0.0", json!({"ipMasq": masq}), v4_ranges("10.96.0.0/24"));
        let c = TestNs::new();
        let r = w.add("masq", &c, &conf);
        let peer = tcp_peer_seen(&server, &c, target).unwrap();
        if masq {
            assert_eq!(
                peer.ip().to_string(),
                "192.0.2.1",
                "masqueraded behind the host"
            );
        } else {
            // Without masquerading the server sees the container; it has no route back, so
            // give it one for this half of the test.
            assert!(peer.ip().to_string().starts_with("10.96.0."), "{peer}");
        }
        w.del("masq", c.path(), &conf, Some(&r)).ok();
        if !masq {
            break;
        }
        server.ip(&["route", "add", "10.96.0.0/24", "via", "192.0.2.1"]);
    }
}

#[test]
fn a_result_the_config_version_cannot_carry_rolls_the_add_back() {
    if !have_root() {
        return;
    }
    // A layer-2 attachment has no address, which 0.2.0 results cannot express.
    let w = World::new();
    let mut conf = w.conf("0.2.0", json!({}), json!([]));
    conf.as_object_mut().unwrap().remove("ipam");
    let c = TestNs::new();
    let r = w.run("ADD", "l2-old", c.path(), &conf);
    assert_eq!(r.err_code(), 999);
    assert!(
        r.json()["msg"]
            .as_str()
            .unwrap()
            .contains("no valid IP addresses")
    );
    assert!(!c.has_link("eth0"));
    assert!(w.host_veths().is_empty());
}

#[test]
fn del_succeeds_whatever_only_add_would_have_used() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf("1.0.0", json!({}), v4_ranges("10.98.0.0/24"));
    let c = TestNs::new();
    let r = w.add("lenient", &c, &conf);
    let mut bad = conf.clone();
    bad["runtimeConfig"] = json!({"mac": "not-a-mac"});
    bad["prevResult"] = r;
    let del = testkit::cni(
        &w.host,
        "bridge",
        "DEL",
        "lenient",
        c.path(),
        "eth0",
        &bad,
        &[("CNI_ARGS", "UNKNOWN=1")],
    );
    assert_eq!(del.code, 0, "{}", del.stdout);
    assert!(!c.has_link("eth0"));
    assert!(w.allocations().is_empty());
}
