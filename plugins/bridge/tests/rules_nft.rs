//! The bridge plugin's nftables rules against the real kernel, each test in throwaway network
//! namespaces (the `nft` processes the rules functions spawn run inside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cni_bridge::rules::{self, AttachmentRules, SpoofCheck};
use common::spec::config::Attachment;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use testkit::{TestNs, have_root};

fn att(network: &str, cid: &str, ip4: &str, ip6: &str, veth: &str, mac: &str) -> AttachmentRules {
    AttachmentRules {
        network: network.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        masq: vec![ip4.parse().unwrap(), ip6.parse().unwrap()],
        spoof: Some(SpoofCheck {
            host_veth: veth.into(),
            mac: mac.into(),
        }),
    }
}

fn a1() -> AttachmentRules {
    att(
        "net1",
        "c1",
        "10.88.0.5/16",
        "fd00:88::5/64",
        "veth00000001",
        "02:00:00:00:00:01",
    )
}

fn a2() -> AttachmentRules {
    att(
        "net1",
        "c2",
        "10.88.0.6/16",
        "fd00:88::6/64",
        "veth00000002",
        "02:00:00:00:00:02",
    )
}

fn b1() -> AttachmentRules {
    att(
        "net2",
        "c3",
        "10.99.0.7/24",
        "fd00:99::7/64",
        "veth00000003",
        "02:00:00:00:00:03",
    )
}

fn comment(a: &AttachmentRules) -> String {
    format!("{}/{}/{}", a.network, a.container_id, a.ifname)
}

/// Elements of our two tables, counted by comment.
fn elements_by_comment(ns: &TestNs) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let rs = ns.nft_ruleset();
    for obj in rs["nftables"].as_array().unwrap() {
        let Some(set) = obj.get("set") else { continue };
        let table = set["table"].as_str().unwrap();
        assert!(table.starts_with("cnirs_bridge_"), "foreign table {table}");
        for e in set["elem"].as_array().into_iter().flatten() {
            let c = e["elem"]["comment"]
                .as_str()
                .unwrap_or("<none>")
                .to_string();
            *out.entry(c).or_insert(0) += 1;
        }
    }
    out
}

fn rule_count(ns: &TestNs) -> usize {
    ns.nft_ruleset()["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count()
}

fn expect(pairs: &[(&AttachmentRules, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(a, n)| (comment(a), *n)).collect()
}

#[test]
fn add_installs_elements_and_is_idempotent() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| rules::add_rules(&a1())).unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a1(), 6)]));
    assert_eq!(rule_count(&ns), 8);
    ns.run(|| rules::add_rules(&a1())).unwrap();
    ns.run(|| rules::add_rules(&a2())).unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a1(), 6), (&a2(), 6)]));
    assert_eq!(rule_count(&ns), 8, "rules are never duplicated");
    ns.run(|| rules::check_rules(&a1())).unwrap();
    ns.run(|| rules::check_rules(&a2())).unwrap();
    // Exactly what nft lists.
    let text = String::from_utf8(ns.exec("nft", &["list", "ruleset"]).stdout).unwrap();
    for want in [
        "10.88.0.5 . 10.88.0.0/16 comment \"net1/c1/eth0\"",
        "fd00:88::5 . fd00:88::/64 comment \"net1/c1/eth0\"",
        "\"veth00000001\" . 02:00:00:00:00:01 comment \"net1/c1/eth0\"",
        "ip saddr . ip daddr @exempt4 return",
        "ip saddr @masq4 masquerade",
        "iifname @guarded drop",
        "type filter hook prerouting priority dstnat; policy accept;", // -300 in the bridge family
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn nothing_to_do_touches_nothing() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    let mut a = a1();
    a.masq.clear();
    a.spoof = None;
    ns.run(|| rules::add_rules(&a)).unwrap();
    ns.run(|| rules::check_rules(&a)).unwrap();
    ns.run(|| rules::del_rules("net1", "c1", "eth0", Some(&a)))
        .unwrap();
    assert_eq!(ns.nft_ruleset()["nftables"].as_array().unwrap().len(), 1); // metainfo only
}

#[test]
fn masq_only_and_host_prefixes() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    let mut a = a1();
    a.spoof = None;
    a.masq = vec![
        "10.88.0.5/32".parse().unwrap(),
        "fd00::5/128".parse().unwrap(),
    ];
    ns.run(|| rules::add_rules(&a)).unwrap();
    ns.run(|| rules::check_rules(&a)).unwrap();
    let text = String::from_utf8(ns.exec("nft", &["list", "ruleset"]).stdout).unwrap();
    assert!(!text.contains("cnirs_bridge_spoofchk"), "{text}");
    ns.run(|| rules::del_rules("net1", "c1", "eth0", Some(&a)))
        .unwrap();
    assert!(elements_by_comment(&ns).is_empty());
}

#[test]
fn del_known_removes_exactly_that_attachment() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    for a in [a1(), a2(), b1()] {
        ns.run(|| rules::add_rules(&a)).unwrap();
    }
    ns.run(|| rules::del_rules("net1", "c1", "eth0", Some(&a1())))
        .unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a2(), 6), (&b1(), 6)]));
    // Twice is fine.
    ns.run(|| rules::del_rules("net1", "c1", "eth0", Some(&a1())))
        .unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a2(), 6), (&b1(), 6)]));
    ns.run(|| rules::check_rules(&a2())).unwrap();
    let err = ns.run(|| rules::check_rules(&a1())).unwrap_err();
    assert!(err.to_string().contains("masq4"), "{err}");
    assert_eq!(rule_count(&ns), 8);
}

#[test]
fn del_without_tables_succeeds() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| rules::del_rules("net1", "c1", "eth0", None))
        .unwrap();
    assert_eq!(ns.nft_ruleset()["nftables"].as_array().unwrap().len(), 1);
    ns.run(|| rules::del_rules("net1", "c1", "eth0", Some(&a1())))
        .unwrap();
    ns.run(|| rules::del_rules("net1", "c1", "eth0", Some(&a1())))
        .unwrap();
    assert!(elements_by_comment(&ns).is_empty());
    ns.run(|| rules::gc_rules("net1", &[])).unwrap();
    // And ADD still works on the (empty) tables the known DEL left.
    ns.run(|| rules::add_rules(&a1())).unwrap();
    ns.run(|| rules::check_rules(&a1())).unwrap();
}

#[test]
fn del_unknown_keys_falls_back_to_comments() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    for a in [a1(), a2(), b1()] {
        ns.run(|| rules::add_rules(&a)).unwrap();
    }
    ns.run(|| rules::del_rules("net1", "c1", "eth0", None))
        .unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a2(), 6), (&b1(), 6)]));
    ns.run(|| rules::del_rules("net1", "c1", "eth0", None))
        .unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a2(), 6), (&b1(), 6)]));
}

#[test]
fn gc_removes_stale_attachments_of_its_network_only() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    for a in [a1(), a2(), b1()] {
        ns.run(|| rules::add_rules(&a)).unwrap();
    }
    let valid = [Attachment {
        container_id: "c2".into(),
        ifname: "eth0".into(),
    }];
    ns.run(|| rules::gc_rules("net1", &valid)).unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&a2(), 6), (&b1(), 6)]));
    ns.run(|| rules::add_rules(&a1())).unwrap();
    ns.run(|| rules::gc_rules("net1", &[])).unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&b1(), 6)]));
    ns.run(|| rules::check_rules(&b1())).unwrap();
    // Nothing stale: no change, no error.
    ns.run(|| rules::gc_rules("net1", &[])).unwrap();
    assert_eq!(elements_by_comment(&ns), expect(&[(&b1(), 6)]));
}

#[test]
fn check_names_what_was_deleted_by_hand() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| rules::add_rules(&a1())).unwrap();
    ns.run(|| rules::check_rules(&a1())).unwrap();
    let out = ns.exec(
        "nft",
        &[
            "delete",
            "element",
            "bridge",
            "cnirs_bridge_spoofchk",
            "guarded",
            "{ veth00000001 }",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let err = ns.run(|| rules::check_rules(&a1())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("guarded") && !msg.contains("masq4"), "{msg}");
    // A flushed chain is noticed too.
    ns.run(|| rules::add_rules(&a1())).unwrap();
    let out = ns.exec(
        "nft",
        &["flush", "chain", "inet", "cnirs_bridge_masq", "postrouting"],
    );
    assert!(out.status.success(), "{out:?}");
    let msg = ns
        .run(|| rules::check_rules(&a1()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("postrouting"), "{msg}");
    // ADD repairs it.
    ns.run(|| rules::add_rules(&a1())).unwrap();
    ns.run(|| rules::check_rules(&a1())).unwrap();
}

// ---------------------------------------------------------------------------------------
// Traffic

/// host: bridge br0 10.88.0.1/24 with port vh0 ↔ eth0 10.88.0.5 in `client`;
/// veth vs0 192.0.2.1/24 ↔ eth0 192.0.2.2 in `server`; forwarding on.
struct Topo {
    host: TestNs,
    client: TestNs,
    server: TestNs,
}

fn topo() -> Topo {
    let host = TestNs::new();
    let client = TestNs::new();
    let server = TestNs::new();
    host.ip(&["link", "add", "br0", "type", "bridge"]);
    host.ip(&["addr", "add", "10.88.0.1/24", "dev", "br0"]);
    host.ip(&["link", "set", "br0", "up"]);
    let ctid = client.tid();
    host.ip(&[
        "link", "add", "vh0", "type", "veth", "peer", "name", "eth0", "netns", &ctid,
    ]);
    host.ip(&["link", "set", "vh0", "master", "br0", "up"]);
    client.ip(&["link", "set", "eth0", "address", "02:00:00:00:00:05"]);
    client.ip(&["addr", "add", "10.88.0.5/24", "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["route", "add", "default", "via", "10.88.0.1"]);
    let stid = server.tid();
    host.ip(&[
        "link", "add", "vs0", "type", "veth", "peer", "name", "eth0", "netns", &stid,
    ]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "vs0"]);
    host.ip(&["link", "set", "vs0", "up"]);
    server.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    server.ip(&["link", "set", "eth0", "up"]);
    server.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    host.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .unwrap();
    Topo {
        host,
        client,
        server,
    }
}

/// Connects from `client` to `addr` served in `server`; the source address the server saw.
fn peer_seen(server: &TestNs, client: &TestNs, addr: SocketAddr) -> Result<IpAddr, String> {
    let listener = server
        .run(|| TcpListener::bind(addr))
        .map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let conn = client.run(|| -> Result<(), String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        c.write_all(b"ping").map_err(|e| e.to_string())?;
        Ok(())
    });
    conn?;
    for _ in 0..100 {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).map_err(|e| e.to_string())?;
                return Ok(peer.ip());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("no connection accepted".into())
}

fn client_rules(masq: bool, spoof: bool) -> AttachmentRules {
    AttachmentRules {
        network: "tnet".into(),
        container_id: "client".into(),
        ifname: "eth0".into(),
        masq: if masq {
            vec!["10.88.0.5/24".parse().unwrap()]
        } else {
            vec![]
        },
        spoof: spoof.then(|| SpoofCheck {
            host_veth: "vh0".into(),
            mac: "02:00:00:00:00:05".into(),
        }),
    }
}

#[test]
fn masquerade_rewrites_the_source_seen_by_the_server() {
    if !have_root() {
        return;
    }
    let t = topo();
    let addr: SocketAddr = "192.0.2.2:8080".parse().unwrap();
    let container: IpAddr = "10.88.0.5".parse().unwrap();
    let host: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(peer_seen(&t.server, &t.client, addr), Ok(container));
    let r = client_rules(true, false);
    t.host.run(|| rules::add_rules(&r)).unwrap();
    assert_eq!(
        peer_seen(&t.server, &t.client, "192.0.2.2:8081".parse().unwrap()),
        Ok(host)
    );
    t.host
        .run(|| rules::del_rules("tnet", "client", "eth0", Some(&r)))
        .unwrap();
    assert_eq!(
        peer_seen(&t.server, &t.client, "192.0.2.2:8082".parse().unwrap()),
        Ok(container)
    );
}

#[test]
fn spoofed_source_mac_is_dropped() {
    if !have_root() {
        return;
    }
    let t = topo();
    let r = client_rules(false, true);
    t.host.run(|| rules::add_rules(&r)).unwrap();
    let bridge_addr: SocketAddr = "10.88.0.1:8080".parse().unwrap();
    let client: IpAddr = "10.88.0.5".parse().unwrap();
    assert_eq!(peer_seen(&t.host, &t.client, bridge_addr), Ok(client));
    t.client
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    // So that only the spoof check, not a stale neighbour entry, can stop the connection.
    t.host.ip(&["neigh", "flush", "dev", "br0"]);
    assert!(peer_seen(&t.host, &t.client, "10.88.0.1:8081".parse().unwrap()).is_err());
    // Another MAC passes once the check is gone.
    t.host
        .run(|| rules::del_rules("tnet", "client", "eth0", None))
        .unwrap();
    assert_eq!(
        peer_seen(&t.host, &t.client, "10.88.0.1:8082".parse().unwrap()),
        Ok(client)
    );
}
