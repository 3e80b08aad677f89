//! Chains that mix this project's plugins with the reference ones (containernetworking-plugins
//! 1.1.1 under /usr/lib/cni), run by libcni's `cnitool` as a runtime would: two containers
//! join, exchange TCP with each other (and through a published port on 127.0.0.1 where portmap
//! is in the chain), pass CHECK where the reference supports it, are deleted twice (the second
//! DEL has no cached result, so every plugin gets DEL without prevResult), and leave nothing
//! behind.
//!
//! CHECKs not run, and why:
//! - the reference portmap 1.1.1 fails CHECK for any IPv4 mapping: it looks for the IPv4
//!   DNAT rules in its ip6tables chain ("could not check ipv6 dnat: ... not found"; without an
//!   IPv6 address that chain does not even exist). With it appended to our chain, CHECK is
//!   run anyway and must fail with exactly that error: libcni runs CHECK plugin by plugin in
//!   order and stops at the first failure, so that failure, from the last plugin, also proves
//!   every plugin of ours before it passed CHECK.
//! - the reference bandwidth crashes CHECK without limits: it is not used here (our bandwidth
//!   is), so no CHECK is skipped for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use support::{Network, Side, addresses};
use testkit::{TestNs, tcp_exchange, tcp_via};

const OURS: Side = Side::Ours;
const REF: Side = Side::Reference;

fn bridge(subnets: &[&str]) -> Value {
    let ranges: Vec<Value> = subnets.iter().map(|s| json!([{ "subnet": s }])).collect();
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if subnets.iter().any(|s| s.contains(':')) {
        routes.push(json!({"dst": "::/0"}));
    }
    json!({
        "type": "bridge",
        "bridge": "cni-iop0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": ranges, "routes": routes}
    })
}

fn portmap() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

fn firewall() -> Value {
    json!({"type": "firewall"})
}

fn tuning() -> Value {
    json!({"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}})
}

fn bandwidth() -> Value {
    json!({"type": "bandwidth", "capabilities": {"bandwidth": true}})
}

/// The runtime's capability arguments for the n-th container: host port 18100+n published to
/// its port 8080, and generous rates (1 Gbit/s) that shape without slowing the test.
fn caps(n: u16) -> Value {
    json!({
        "portMappings": [{"hostPort": 18100 + n, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {
            "ingressRate": 1_000_000_000u64, "ingressBurst": 10_000_000u64,
            "egressRate": 1_000_000_000u64, "egressBurst": 10_000_000u64
        }
    })
}

enum Check {
    /// CHECK must pass.
    Passes,
    /// CHECK must fail, with an error naming this text (a known reference quirk).
    FailsIn(&'static str),
}

/// The scenario every mixed chain goes through. `extra` asserts what the chain's own plugins
/// did, after ADD.
fn two_containers(net: &Network, check: Check, extra: impl Fn(&Network, &TestNs, &Value)) {
    let publishes = net.list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["type"] == "portmap");
    let (c1, c2) = (TestNs::new(), TestNs::new());
    let (caps1, caps2) = (caps(1), caps(2));
    let r1 = net.add(&c1, Some(&caps1));
    let r2 = net.add(&c2, Some(&caps2));
    let (a1, a2) = (addresses(&r1), addresses(&r2));
    assert!(!a1.is_empty() && a1.len() == a2.len(), "{r1} {r2}");
    for (i, (x, y)) in a1.iter().zip(&a2).enumerate() {
        let port = 7100 + i as u16;
        tcp_exchange(&c1, &c2, SocketAddr::new(*x, port))
            .unwrap_or_else(|e| panic!("{}: {y} -> {x}: {e}", net.name));
        tcp_exchange(&c2, &c1, SocketAddr::new(*y, port))
            .unwrap_or_else(|e| panic!("{}: {x} -> {y}: {e}", net.name));
    }
    if publishes {
        tcp_via(
            &c1,
            "0.0.0.0:8080".parse().unwrap(),
            &net.host,
            "127.0.0.1:18101".parse().unwrap(),
        )
        .unwrap_or_else(|e| panic!("{}: published port of c1: {e}", net.name));
        tcp_via(
            &c2,
            "0.0.0.0:8080".parse().unwrap(),
            &c1,
            SocketAddr::new(IpAddr::V4(gateway_v4(&r1)), 18102),
        )
        .unwrap_or_else(|e| panic!("{}: c1 -> published port of c2: {e}", net.name));
    }
    extra(net, &c1, &r1);
    // The leftover checks below would see a live attachment: each chain here leaves rules or
    // set elements naming the container while it is attached.
    let (ruleset, tables) = net.rules();
    for c in [&c1, &c2] {
        let cid = support::container_id(c);
        assert!(
            ruleset.contains(&cid) || tables.contains(&cid),
            "{}: no rule names {cid} while attached",
            net.name
        );
    }
    for (c, cp) in [(&c1, &caps1), (&c2, &caps2)] {
        match check {
            Check::Passes => net.check(c, Some(cp)),
            Check::FailsIn(text) => {
                let r = net.cnitool("check", c, Some(cp));
                assert_ne!(r.code, 0, "{}: CHECK was expected to fail", net.name);
                assert!(
                    r.stderr.contains(text),
                    "{}: CHECK failed elsewhere: {}",
                    net.name,
                    r.stderr
                );
            }
        }
    }
    for (c, cp) in [(&c1, &caps1), (&c2, &caps2)] {
        net.del(c, Some(cp));
        // The cache is gone: this DEL reaches every plugin without prevResult.
        net.del(c, Some(cp));
    }
    let mut ips = a1.clone();
    ips.extend(&a2);
    net.assert_nothing_left(&[&c1, &c2], &ips);
}

fn gateway_v4(result: &Value) -> std::net::Ipv4Addr {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|ip| ip["gateway"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 gateway in {result}"))
}

/// The host side of the container's veth (the result's interface with no sandbox that is not
/// the bridge).
fn host_veth(result: &Value) -> String {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
        .map(|i| i["name"].as_str().unwrap().to_string())
        .find(|n| n != "cni-iop0")
        .unwrap_or_else(|| panic!("no host veth in {result}"))
}

/// Our tuning, firewall and bandwidth acted on the container the reference bridge made.
fn tuned_guarded_shaped(net: &Network, c1: &TestNs, r1: &Value) {
    assert_eq!(c1.sysctl("net.ipv4.conf.eth0.arp_ignore"), "1");
    let veth = host_veth(r1);
    let cid = support::container_id(c1);
    let ifbs = net.host.ip_json(&["link", "show", "type", "ifb"]);
    let mine = ifbs
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifalias"].as_str().is_some_and(|a| a.contains(&cid)))
        .count();
    assert_eq!(mine, 1, "one ifb for c1's egress: {ifbs}");
    let tc = net.host.exec("tc", &["qdisc", "show", "dev", &veth]);
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(tc.contains("tbf"), "no tbf on {veth}: {tc}");
    let ruleset = net.host.nft_ruleset().to_string();
    assert!(
        ruleset.contains("cnirs_firewall") && ruleset.contains(&cid),
        "firewall elements for {cid}: {ruleset}"
    );
}

#[test]
fn reference_bridge_and_host_local_then_our_portmap_firewall_tuning_bandwidth() {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "iopa",
        "1.0.0",
        json!([
            bridge(&["10.91.0.0/24", "fd5e:2a6c:91::/64"]),
            portmap(),
            firewall(),
            tuning(),
            bandwidth()
        ]),
        &[
            ("bridge", REF),
            ("host-local", REF),
            ("portmap", OURS),
            ("firewall", OURS),
            ("tuning", OURS),
            ("bandwidth", OURS),
        ],
    );
    two_containers(&net, Check::Passes, tuned_guarded_shaped);
}

#[test]
fn our_bridge_with_reference_host_local() {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "iopb",
        "0.4.0",
        json!([bridge(&["10.92.0.0/24"])]),
        &[("bridge", OURS), ("host-local", REF)],
    );
    two_containers(&net, Check::Passes, |net, c1, _| {
        // The reference host-local wrote the allocation our bridge configured.
        let allocs = net.allocations();
        let cid = support::container_id(c1);
        assert!(
            allocs.values().any(|v| v == &format!("{cid}\r\neth0")),
            "{allocs:?}"
        );
    });
}

#[test]
fn reference_bridge_with_our_host_local() {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "iopc",
        "0.4.0",
        json!([bridge(&["10.93.0.0/24"])]),
        &[("bridge", REF), ("host-local", OURS)],
    );
    two_containers(&net, Check::Passes, |net, c1, _| {
        let allocs = net.allocations();
        let cid = support::container_id(c1);
        assert!(
            allocs.values().any(|v| v == &format!("{cid}\r\neth0")),
            "{allocs:?}"
        );
    });
}

#[test]
fn our_chain_with_reference_portmap_appended() {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "iopd",
        "1.0.0",
        json!([
            bridge(&["10.94.0.0/24", "fd5e:2a6c:94::/64"]),
            firewall(),
            tuning(),
            bandwidth(),
            portmap()
        ]),
        &[
            ("bridge", OURS),
            ("host-local", OURS),
            ("firewall", OURS),
            ("tuning", OURS),
            ("bandwidth", OURS),
            ("portmap", REF),
        ],
    );
    two_containers(
        &net,
        Check::FailsIn("could not check ipv6 dnat"),
        tuned_guarded_shaped,
    );
}
