//! The verbs across versions, DEL in every degraded form, GC, CHECK, hostile input, the UDP
//! conntrack flush, conditions and masqAll.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::*;
use testkit::cni;

fn tcp8080() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
}

fn reachable(w: &World, c: &Container) -> bool {
    tcp_via(&c.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).is_ok()
}

#[test]
fn every_version_add_check_del_twice() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let c = w.container(v);
        let conf = w.conf(v, tcp8080(), json!({}));
        let out = w.add(&c, &conf);
        assert_eq!(out["cniVersion"], v);
        assert_eq!(out, c.result, "{v}: prevResult printed back unchanged");
        assert!(reachable(&w, &c), "{v}");
        if v >= "0.4.0" {
            w.portmap("CHECK", &c, c.ns.path(), &conf, Some(&c.result))
                .ok();
        } else {
            let run = w.portmap("CHECK", &c, c.ns.path(), &conf, Some(&c.result));
            assert_eq!(run.err_code(), 1, "{v}: CHECK needs 0.4.0");
        }
        w.del(&c, &conf).ok();
        assert!(!reachable(&w, &c), "{v}");
        assert_eq!(w.element_count(), 0, "{v}");
        w.del(&c, &conf).ok();
        cni(
            &w.host,
            "bridge",
            "DEL",
            &c.id,
            c.ns.path(),
            "eth0",
            &w.bridge_conf(v),
            &[],
        )
        .ok();
    }
}

#[test]
fn del_without_prev_result_netns_or_mappings_still_removes_everything() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    let conf = w.conf(
        v,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": HOST4},
        ]),
        json!({}),
    );
    // No prevResult, no netns.
    let c = w.container(v);
    let keep = w.container(v);
    let keep_conf = w.conf(
        v,
        json!([{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]),
        json!({}),
    );
    w.add(&keep, &keep_conf);
    w.add(&c, &conf);
    let kept = w.element_count();
    assert!(reachable(&w, &c));
    w.portmap("DEL", &c, "", &conf, None).ok();
    assert!(!reachable(&w, &c));
    assert!(w.element_count() < kept);
    assert!(!w.table().unwrap().to_string().contains(&c.id));
    // The other attachment is untouched.
    tcp_via(&keep.ns, addr("0.0.0.0", 90), &w.client, addr(HOST4, 9090)).unwrap();

    // prevResult but no runtimeConfig (a runtime that does not pass capabilities on DEL).
    w.add(&c, &conf);
    let mut bare = conf.clone();
    bare.as_object_mut().unwrap().remove("runtimeConfig");
    w.portmap("DEL", &c, c.ns.path(), &bare, Some(&c.result))
        .ok();
    assert!(!reachable(&w, &c));
    assert!(!w.table().unwrap().to_string().contains(&c.id));

    // A netns that is gone.
    w.add(&c, &conf);
    let gone = c.ns.path().to_string();
    let Container { ns, id, result } = c;
    drop(ns);
    let run = cni(
        &w.host,
        "portmap",
        "DEL",
        &id,
        &gone,
        "eth0",
        &{
            let mut x = conf.clone();
            x["prevResult"] = result;
            x
        },
        &[],
    );
    run.ok();
    assert!(!w.table().unwrap().to_string().contains(&id));
    tcp_via(&keep.ns, addr("0.0.0.0", 90), &w.client, addr(HOST4, 9090)).unwrap();
}

#[test]
fn gc_with_a_partial_and_an_empty_valid_list() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    let a = w.container(v);
    let b = w.container(v);
    let on = |port: u16| {
        w.conf(
            v,
            json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]),
            json!({}),
        )
    };
    w.add(&a, &on(8080));
    w.add(&b, &on(8081));
    // A container of another network on the same host, same rules machinery.
    let other_net = testkit::unique_name("other");
    let mut other_conf = on(8082);
    other_conf["name"] = json!(other_net);
    let o = w.container(v);
    let mut oc = other_conf.clone();
    oc["prevResult"] = o.result.clone();
    cni(
        &w.host,
        "portmap",
        "ADD",
        &o.id,
        o.ns.path(),
        "eth0",
        &oc,
        &[],
    )
    .ok();

    let gc = |valid: Value| {
        let mut c = json!({"cniVersion": v, "name": w.net, "type": "portmap",
            "cni.dev/valid-attachments": valid});
        c["cni.dev/attachments"] = c["cni.dev/valid-attachments"].clone();
        cni(&w.host, "portmap", "GC", "", "", "", &c, &[])
    };
    gc(json!([{"containerID": a.id, "ifname": "eth0"}])).ok();
    tcp_via(&a.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
    assert!(tcp_via(&b.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8081)).is_err());
    tcp_via(&o.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8082)).unwrap();
    let t = w.table().unwrap().to_string();
    assert!(t.contains(&a.id) && !t.contains(&b.id));

    // Empty list: nothing of this network is valid; the table goes, the other stays.
    gc(json!([])).ok();
    assert!(w.table().is_none());
    assert!(!reachable(&w, &a));
    tcp_via(&o.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8082)).unwrap();
    // GC again (no table) is fine; STATUS has nothing against it; a later ADD rebuilds
    // everything.
    gc(json!([])).ok();
    let status = json!({"cniVersion": v, "name": w.net, "type": "portmap"});
    cni(&w.host, "portmap", "STATUS", "", "", "", &status, &[]).ok();
    w.add(&a, &on(8080));
    assert!(reachable(&w, &a));
}

#[test]
fn check_notices_every_missing_piece() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.0.0";
    let c = w.container(v);
    let conf = w.conf(
        v,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": HOST4},
        ]),
        json!({}),
    );
    w.add(&c, &conf);
    let check = || w.portmap("CHECK", &c, c.ns.path(), &conf, Some(&c.result));
    check().ok();
    let table = format!("cnirs_portmap_{}", w.net);
    let nft = |args: &str| {
        let out = w.host.exec("nft", &args.split(' ').collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Each damage is noticed; ADD again repairs it.
    for damage in [
        format!("delete element inet {table} addr4_ip {{ {HOST4} . udp . 5353 }}"),
        format!("delete element inet {table} port6 {{ tcp . 8080 }}"),
        format!(
            "delete element inet {table} hairpin4 {{ {ip} . {ip} }}",
            ip = c.ip(true)
        ),
        format!("flush chain inet {table} postrouting"),
        format!("flush chain inet {table} conditions6"),
        format!("add rule inet {table} prerouting counter"),
        format!("delete chain inet {table} output"),
    ] {
        nft(&damage);
        let run = check();
        assert_ne!(run.code, 0, "CHECK missed: {damage}");
        w.add(&c, &conf);
        check().ok();
    }
    w.host.run(|| {
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", w.bridge),
            "0",
        )
        .unwrap()
    });
    assert_ne!(check().code, 0, "CHECK missed route_localnet");
    w.add(&c, &conf);
    check().ok();
    // CHECK without prevResult is an error; with no mappings there is nothing to check.
    assert_eq!(
        w.portmap("CHECK", &c, c.ns.path(), &conf, None).err_code(),
        7
    );
    w.portmap(
        "CHECK",
        &c,
        c.ns.path(),
        &w.conf(v, json!([]), json!({})),
        Some(&c.result),
    )
    .ok();
}

#[test]
fn hostile_input_has_the_right_code_and_changes_nothing() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    let c = w.container(v);
    let m = tcp8080();
    let cases: Vec<(Value, u64)> = vec![
        (
            w.conf(v, m.clone(), json!({"conditionsV4": ["-s", "192.0.2.2"]})),
            7,
        ),
        (
            w.conf(v, m.clone(), json!({"conditionsV6": ["!", "-d", "::1"]})),
            7,
        ),
        (
            w.conf(
                v,
                m.clone(),
                json!({"conditionsV4": ["ip", "saddr", "frobnicate"]}),
            ),
            7,
        ),
        (
            w.conf(
                v,
                m.clone(),
                json!({"conditionsV4": ["ip saddr 1.2.3.4; flush ruleset"]}),
            ),
            7,
        ),
        (
            w.conf(
                v,
                json!([{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            7,
        ),
        (
            w.conf(
                v,
                json!([{"hostPort": 65536, "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            7,
        ),
        (
            w.conf(
                v,
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                json!({}),
            ),
            7,
        ),
        (
            w.conf(
                v,
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "host"}]),
                json!({}),
            ),
            7,
        ),
        (
            w.conf(
                v,
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "tcp"},
                          {"hostPort": 80, "containerPort": 81, "protocol": "tcp"}]),
                json!({}),
            ),
            7,
        ),
        (w.conf(v, json!({"hostPort": 80}), json!({})), 6),
        (
            w.conf(
                v,
                json!([{"hostPort": "80", "containerPort": 80, "protocol": "tcp"}]),
                json!({}),
            ),
            6,
        ),
        (w.conf(v, m.clone(), json!({"snat": "yes"})), 6),
        (w.conf(v, m.clone(), json!({"backend": "ebpf"})), 7),
        (w.conf(v, m.clone(), json!({"markMasqBit": 40})), 7),
        (
            w.conf(
                v,
                m.clone(),
                json!({"markMasqBit": 1, "externalSetMarkChain": "X"}),
            ),
            7,
        ),
    ];
    for (conf, code) in cases {
        let run = w.portmap("ADD", &c, c.ns.path(), &conf, Some(&c.result));
        assert_eq!(run.err_code(), code, "{conf}: {}", run.stdout);
        assert!(w.table().is_none(), "state changed by {conf}");
    }
    let run = w.portmap(
        "ADD",
        &c,
        c.ns.path(),
        &w.conf(v, m.clone(), json!({})),
        None,
    );
    assert_eq!(run.err_code(), 7, "no prevResult");
    let run = w.portmap(
        "ADD",
        &c,
        c.ns.path(),
        &w.conf(v, m.clone(), json!({})),
        Some(&json!({"ips": "x"})),
    );
    assert_eq!(run.err_code(), 6, "garbage prevResult");
    assert!(w.table().is_none());
    // iptables syntax is explained.
    let run = w.portmap(
        "ADD",
        &c,
        c.ns.path(),
        &w.conf(v, m.clone(), json!({"conditionsV4": ["-s", "1.2.3.4"]})),
        Some(&c.result),
    );
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("iptables syntax")
    );
    // No mappings: prevResult printed, nothing made.
    let out = w.add(&c, &w.conf(v, json!([]), json!({})));
    assert_eq!(out, c.result);
    let mut no_rc = w.conf(v, json!([]), json!({}));
    no_rc.as_object_mut().unwrap().remove("runtimeConfig");
    assert_eq!(w.add(&c, &no_rc), c.result);
    assert!(w.table().is_none());
    // backend is accepted for compatibility.
    w.add(&c, &w.conf(v, m.clone(), json!({"backend": "iptables"})));
    assert!(reachable(&w, &c));
}

#[test]
fn stale_udp_conntrack_is_flushed_on_add_and_del() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    // Some other mapping first, so that the host tracks connections (as any node does).
    let other = w.container(v);
    w.add(&other, &w.conf(v, tcp8080(), json!({})));
    let c = w.container(v);
    let src = addr(CLIENT4, 40053);
    // Before the mapping: the client's datagrams to the host port make an entry that
    // points at the host itself.
    let _ = w.client.run(|| udp_ping(Some(src), addr(HOST4, 5353)));
    let before = conntrack_lines(&w.host, "dport=5353");
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(
        before[0].contains(&format!("src={HOST4} dst={CLIENT4} sport=5353")),
        "{before:?}"
    );

    let conf = w.conf(
        v,
        json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]),
        json!({}),
    );
    w.add(&c, &conf);
    assert!(
        conntrack_lines(&w.host, "dport=5353").is_empty(),
        "stale entry survived ADD"
    );
    // The same client socket now reaches the container.
    let peer = udp_via(
        &c.ns,
        addr("0.0.0.0", 53),
        &w.client,
        Some(src),
        addr(HOST4, 5353),
    )
    .unwrap();
    assert_eq!(peer, src);
    let now = conntrack_lines(&w.host, "dport=5353");
    assert!(
        now.len() == 1 && now[0].contains(&format!("src={} dst={CLIENT4} sport=53", c.ip(true))),
        "{now:?}"
    );

    // DEL removes the entry that points at the container.
    w.del(&c, &conf).ok();
    assert!(
        conntrack_lines(&w.host, "dport=5353").is_empty(),
        "entry to the deleted container survived DEL"
    );
    // Unrelated entries stay.
    assert!(reachable(&w, &other));
    assert!(!conntrack_lines(&w.host, "dport=8080").is_empty());
}

#[test]
fn conditions_limit_which_traffic_is_mapped() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    let c = w.container(v);
    let conf = w.conf(
        v,
        tcp8080(),
        json!({"conditionsV4": ["ip", "saddr", "!=", CLIENT4], "conditionsV6": ["ip6 saddr != ", CLIENT6]}),
    );
    w.add(&c, &conf);
    // The client is excluded; the host through its own address is not.
    assert!(!reachable(&w, &c));
    assert!(tcp_via(&c.ns, addr("::", 80), &w.client, addr(HOST6, 8080)).is_err());
    tcp_via(&c.ns, addr("0.0.0.0", 80), &w.host, addr(HOST4, 8080)).unwrap();
    tcp_via(&c.ns, addr("::", 80), &w.host, addr(HOST6, 8080)).unwrap();
    w.portmap("CHECK", &c, c.ns.path(), &conf, Some(&c.result))
        .ok();
    // A config without conditions rewrites the chain: the client gets through again.
    let plain = w.conf(v, tcp8080(), json!({}));
    w.add(&c, &plain);
    assert!(reachable(&w, &c));
    w.del(&c, &plain).ok();
}

#[test]
fn masq_all_and_snat_off() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    let c = w.container(v);
    // masqAll: even outside clients arrive from the bridge's address.
    w.add(&c, &w.conf(v, tcp8080(), json!({"masqAll": true})));
    let peer = tcp_via(&c.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), GW4);
    let peer = tcp_via(&c.ns, addr("::", 80), &w.client, addr(HOST6, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), GW6);
    // snat off: no masquerade at all (the host through its own address still works).
    w.add(&c, &w.conf(v, tcp8080(), json!({"snat": false})));
    let peer = tcp_via(&c.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), CLIENT4);
    let post = w.table().unwrap()["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["rule"]["chain"] == "postrouting")
        .count();
    assert_eq!(post, 0);
    tcp_via(&c.ns, addr("0.0.0.0", 80), &w.host, addr(HOST4, 8080)).unwrap();
}

/// Latency of ADD and DEL (the binary end to end: one nft transaction each, plus the
/// conntrack flush for UDP). `cargo test -p cni-portmap --test lifecycle latency -- --ignored --nocapture`
#[test]
#[ignore]
fn latency() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let v = "1.1.0";
    let c = w.container(v);
    let conf = w.conf(
        v,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]),
        json!({}),
    );
    // Other attachments in the table, so that DEL is not on an empty one.
    for _ in 0..50 {
        let o = w.container(v);
        w.add(&o, &w.conf(v, json!([{"hostPort": 20000 + (o.ip(true).to_string().rsplit('.').next().unwrap().parse::<u16>().unwrap()), "containerPort": 80, "protocol": "tcp"}]), json!({})));
    }
    let n = 50;
    let (mut add, mut del, mut del_listing) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = std::time::Instant::now();
        w.add(&c, &conf);
        add.push(t.elapsed());
        let t = std::time::Instant::now();
        w.del(&c, &conf).ok();
        del.push(t.elapsed());
        w.add(&c, &conf);
        let t = std::time::Instant::now();
        w.portmap("DEL", &c, "", &conf, None).ok();
        del_listing.push(t.elapsed());
    }
    for (name, mut v) in [("ADD", add), ("DEL", del), ("DEL by listing", del_listing)] {
        v.sort();
        eprintln!("{name}: median {:?}, p90 {:?}", v[n / 2], v[n * 9 / 10]);
    }
}
