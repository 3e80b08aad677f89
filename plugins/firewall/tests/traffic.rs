//! Real traffic through hosts with a default-drop forward policy, the admin chain, and the
//! ingress policies, with containers made by the real bridge + host-local plugins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{World, fw_conf, iptables_nft, reaches, sa};
use testkit::have_root;

/// The host's forward policy is drop, modelled exactly as iptables-nft makes it: forwarding
/// to and from a container works with the plugin and not without; new inbound connections
/// stay refused; `iptables-nft -S` still reads the chain.
#[test]
fn drop_policy_forwarding_works_with_the_plugin_and_not_without() {
    if !have_root() {
        return;
    }
    let w = World::new();
    w.forward_policy_drop();
    let out = w.outside();
    let br = w.bridge_conf("fwdrop", "fwbr0", "10.31.0.0/24", Some("fd00:31::/64"));
    let c1 = w.attach(&br);
    let out4 = sa("192.0.2.2".parse().unwrap(), 8080);
    let out6 = sa("fd00:99::2".parse().unwrap(), 8080);

    assert!(
        !reaches(&out, &c1.ns, out4),
        "the drop policy must block without the plugin"
    );
    assert!(!reaches(&out, &c1.ns, out6));

    let conf = fw_conf("1.1.0", json!({}));
    let res = w.fw("ADD", &c1, &conf).ok().json();
    assert_eq!(res["ips"], c1.result["ips"], "prevResult passes through");
    assert_eq!(res["interfaces"], c1.result["interfaces"]);
    assert_eq!(res["cniVersion"], "1.1.0");

    assert!(reaches(&out, &c1.ns, out4), "container -> outside, v4");
    assert!(reaches(&out, &c1.ns, out6), "container -> outside, v6");
    assert!(
        !reaches(&c1.ns, &out, sa(c1.v4(), 8081)),
        "new inbound connections are not accepted (related/established only)"
    );

    // iptables-nft still reads its chains, and shows the hand-off rule.
    for v6 in [false, true] {
        if let Some(bin) = iptables_nft(v6) {
            let o = w.host.exec(bin, &["-S", "FORWARD"]);
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{bin} -S FORWARD: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(text.contains("-P FORWARD DROP"), "{text}");
            assert!(
                text.contains("-A FORWARD -m mark --mark 0x8000000/0x8000000"),
                "{text}"
            );
            let save = w.host.exec(&format!("{}-save", bin), &[]);
            assert!(save.status.success());
            assert!(!String::from_utf8_lossy(&save.stdout).contains("incompatible"));
        } else {
            eprintln!("iptables-nft not installed: skipping the iptables listing check");
        }
    }

    // An iptables-nft save/restore round trip (Docker restarts, netfilter-persistent) keeps
    // the rule, and it is still recognised afterwards.
    if let Some(bin) = iptables_nft(false) {
        let save = w.host.exec(&format!("{bin}-save"), &[]);
        let saved = String::from_utf8_lossy(&save.stdout).into_owned();
        let restore = w.host.run(|| {
            use std::io::Write;
            let mut child = std::process::Command::new(format!("{bin}-restore"))
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(saved.as_bytes())
                .unwrap();
            child.wait().unwrap()
        });
        assert!(restore.success());
        assert!(
            reaches(&out, &c1.ns, out4),
            "still accepted after the round trip"
        );
    }

    // A second attachment does not duplicate the hand-off rule.
    let c2 = w.attach(&br);
    w.fw("ADD", &c2, &conf).ok();
    let forward = w.nft(&["list", "chain", "ip", "filter", "FORWARD"]);
    assert_eq!(
        forward
            .matches("meta mark & 0x08000000 == 0x08000000")
            .count(),
        1,
        "{forward}"
    );
    w.fw("CHECK", &c2, &conf).ok();

    // DEL takes c1's accept away (c2 keeps its own), and is idempotent.
    w.fw("DEL", &c1, &conf).ok();
    assert!(
        !reaches(&out, &c1.ns, out4),
        "after DEL the drop policy applies again"
    );
    assert!(
        reaches(&out, &c2.ns, out4),
        "the other attachment is untouched"
    );
    w.fw("DEL", &c1, &conf).ok();
    w.fw("DEL", &c2, &conf).ok();
    assert!(w.elements("inet", "ctr4").is_empty());
    assert!(w.elements("inet", "ctr6").is_empty());
}

/// The admin chain: ADD and GC never flush it; a drop there blocks, and an accept there lets
/// traffic through the iptables drop policy (as the reference's CNI-ADMIN does).
#[test]
fn admin_chain_is_kept_and_consulted() {
    if !have_root() {
        return;
    }
    let w = World::new();
    w.forward_policy_drop();
    let out = w.outside();
    let br = w.bridge_conf("fwadmin", "fwbr1", "10.32.0.0/24", None);
    let c1 = w.attach(&br);
    let conf = fw_conf("1.0.0", json!({}));
    w.fw("ADD", &c1, &conf).ok();

    w.nft(&[
        "add",
        "rule",
        "inet",
        "cnirs_firewall",
        "admin",
        "ip",
        "daddr",
        "192.0.2.2",
        "tcp",
        "dport",
        "8090",
        "drop",
    ]);
    let c1_ip = c1.v4().to_string();
    w.nft(&[
        "add",
        "rule",
        "inet",
        "cnirs_firewall",
        "admin",
        "ip",
        "daddr",
        &c1_ip,
        "tcp",
        "dport",
        "9090",
        "accept",
    ]);
    assert!(
        !reaches(&out, &c1.ns, sa("192.0.2.2".parse().unwrap(), 8090)),
        "admin drop"
    );
    assert!(reaches(
        &out,
        &c1.ns,
        sa("192.0.2.2".parse().unwrap(), 8091)
    ));
    assert!(
        reaches(&c1.ns, &out, sa(c1.v4(), 9090)),
        "an admin accept passes the iptables drop policy"
    );
    assert!(!reaches(&c1.ns, &out, sa(c1.v4(), 9091)));

    let c2 = w.attach(&br);
    w.fw("ADD", &c2, &conf).ok();
    let gc = fw_conf(
        "1.1.0",
        json!({"name": "fwadmin", "cni.dev/valid-attachments": []}),
    );
    testkit::cni(&w.host, "firewall", "GC", "", "", "", &gc, &[]).ok();
    let admin = w.nft(&["list", "chain", "inet", "cnirs_firewall", "admin"]);
    assert!(
        admin.contains("dport 8090 drop") && admin.contains("dport 9090 accept"),
        "{admin}"
    );
    assert!(
        w.elements("inet", "ctr4").is_empty(),
        "GC removed both attachments"
    );
}

/// `same-bridge`: containers of another guarded bridge cannot reach this bridge's containers
/// (either way); the same bridge, and an open bridge, can. With an accept forward policy, so
/// that the only drop is the plugin's.
#[test]
fn same_bridge_blocks_other_guarded_bridges_only() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let a_conf = w.bridge_conf("neta", "fwbra", "10.41.0.0/24", None);
    let b_conf = w.bridge_conf("netb", "fwbrb", "10.42.0.0/24", None);
    let c_conf = w.bridge_conf("netc", "fwbrc", "10.43.0.0/24", None);
    let (a1, a2, b1, c1) = (
        w.attach(&a_conf),
        w.attach(&a_conf),
        w.attach(&b_conf),
        w.attach(&c_conf),
    );
    assert!(
        reaches(&b1.ns, &a1.ns, sa(b1.v4(), 7000)),
        "routed between bridges before"
    );

    let same = fw_conf("1.1.0", json!({"ingressPolicy": "same-bridge"}));
    for c in [&a1, &a2, &b1] {
        w.fw("ADD", c, &same).ok();
    }
    w.fw(
        "ADD",
        &c1,
        &fw_conf("1.1.0", json!({"ingressPolicy": "open"})),
    )
    .ok();

    assert!(
        reaches(&a2.ns, &a1.ns, sa(a2.v4(), 7001)),
        "same bridge: allowed"
    );
    assert!(
        !reaches(&b1.ns, &a1.ns, sa(b1.v4(), 7002)),
        "A -> B blocked"
    );
    assert!(
        !reaches(&a1.ns, &b1.ns, sa(a1.v4(), 7003)),
        "B -> A blocked"
    );
    assert!(
        reaches(&b1.ns, &c1.ns, sa(b1.v4(), 7004)),
        "open C -> guarded B allowed"
    );
    assert!(
        reaches(&c1.ns, &b1.ns, sa(c1.v4(), 7005)),
        "guarded B -> open C allowed"
    );
    w.fw("CHECK", &b1, &same).ok();

    // B's only attachment goes: A can reach it again, and fwbrb is no longer guarded.
    w.fw("DEL", &b1, &same).ok();
    assert!(reaches(&b1.ns, &a1.ns, sa(b1.v4(), 7006)));
    assert_eq!(w.elements("inet", "guarded_bridges"), vec![json!("fwbra")]);
    w.fw("DEL", &b1, &same).ok();

    // GC of neta: with a1 valid, a2 goes and fwbra stays; with none valid, fwbra goes too.
    let gc = |valid: serde_json::Value| {
        let c = fw_conf(
            "1.1.0",
            json!({"name": "neta", "cni.dev/valid-attachments": valid}),
        );
        testkit::cni(&w.host, "firewall", "GC", "", "", "", &c, &[]).ok();
    };
    gc(json!([{"containerID": a1.id, "ifname": "eth0"}]));
    assert!(!w.has_comment(&support::comment("neta", &a2)));
    assert!(w.has_comment(&support::comment("neta", &a1)));
    assert_eq!(w.elements("inet", "guarded_bridges"), vec![json!("fwbra")]);
    gc(json!([]));
    assert!(w.elements("inet", "guarded_bridges").is_empty());
    assert!(w.elements("inet", "members4").is_empty());
    assert_eq!(
        w.elements("inet", "ctr4").len(),
        1,
        "netc's attachment is not neta's to collect"
    );
}

/// `isolated`: not even containers of the same bridge reach each other, on the bridge (L2)
/// with or without br_netfilter, nor other guarded bridges; the gateway and open bridges can
/// still be reached.
#[test]
fn isolated_blocks_the_same_bridge_too() {
    if !have_root() {
        return;
    }
    let w = World::new();
    w.host
        .exec("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    let a_conf = w.bridge_conf("neti", "fwbri", "10.44.0.0/24", None);
    let b_conf = w.bridge_conf("netj", "fwbrj", "10.45.0.0/24", None);
    let c_conf = w.bridge_conf("netk", "fwbrk", "10.46.0.0/24", None);
    let (a1, a2, b1, c1) = (
        w.attach(&a_conf),
        w.attach(&a_conf),
        w.attach(&b_conf),
        w.attach(&c_conf),
    );
    assert!(
        reaches(&a2.ns, &a1.ns, sa(a2.v4(), 7100)),
        "same bridge before"
    );

    let iso = fw_conf("1.1.0", json!({"ingressPolicy": "isolated"}));
    w.fw("ADD", &a1, &iso).ok();
    w.fw("ADD", &a2, &iso).ok();
    w.fw(
        "ADD",
        &b1,
        &fw_conf("1.1.0", json!({"ingressPolicy": "same-bridge"})),
    )
    .ok();
    w.fw("ADD", &c1, &fw_conf("1.1.0", json!({}))).ok();

    assert!(
        !reaches(&a2.ns, &a1.ns, sa(a2.v4(), 7101)),
        "same isolated bridge, L2"
    );
    assert!(!reaches(&a1.ns, &a2.ns, sa(a1.v4(), 7102)));
    assert!(
        !reaches(&b1.ns, &a1.ns, sa(b1.v4(), 7103)),
        "isolated -> guarded B"
    );
    assert!(
        !reaches(&a1.ns, &b1.ns, sa(a1.v4(), 7104)),
        "guarded B -> isolated"
    );
    assert!(
        reaches(&a1.ns, &c1.ns, sa(a1.v4(), 7105)),
        "open C -> isolated allowed"
    );
    let gw = "10.44.0.1".parse().unwrap();
    assert!(
        reaches(&w.host, &a1.ns, sa(gw, 7106)),
        "the gateway (host) is reachable"
    );
    w.fw("CHECK", &a1, &iso).ok();

    // The same with br_netfilter passing bridged frames through the IP forward hook.
    w.host
        .exec("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    assert!(!reaches(&a2.ns, &a1.ns, sa(a2.v4(), 7107)));

    // DEL lifts it for that attachment.
    w.fw("DEL", &a2, &iso).ok();
    w.fw("DEL", &a1, &iso).ok();
    assert!(reaches(&a2.ns, &a1.ns, sa(a2.v4(), 7108)));
    assert!(w.elements("bridge", "isolated_ports").is_empty());
}
