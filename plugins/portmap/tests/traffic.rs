//! Real traffic through published ports: from a second namespace, from the host itself,
//! from the container to its own published port, over IPv4 and IPv6, TCP and UDP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

const V: &str = "1.1.0";

#[test]
fn tcp_and_udp_from_another_namespace_then_del() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let c = w.container(V);
    let conf = w.conf(
        V,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]),
        json!({}),
    );
    let out = w.add(&c, &conf);
    assert_eq!(out["ips"], c.result["ips"], "prevResult passes through");
    assert_eq!(out["cniVersion"], V);

    // IPv4 and IPv6, TCP and UDP, from the client namespace; the server sees the client
    // itself (no masquerade for outside traffic).
    let peer = tcp_via(&c.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), CLIENT4);
    let peer = udp_via(
        &c.ns,
        addr("0.0.0.0", 53),
        &w.client,
        None,
        addr(HOST4, 5353),
    )
    .unwrap();
    assert_eq!(peer.ip().to_string(), CLIENT4);
    let peer = tcp_via(&c.ns, addr("::", 80), &w.client, addr(HOST6, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), CLIENT6);
    let peer = udp_via(&c.ns, addr("::", 53), &w.client, None, addr(HOST6, 5353)).unwrap();
    assert_eq!(peer.ip().to_string(), CLIENT6);
    // An unmapped port is not forwarded.
    assert!(tcp_via(&c.ns, addr("0.0.0.0", 81), &w.client, addr(HOST4, 8081)).is_err());

    w.del(&c, &conf).ok();
    assert_eq!(w.element_count(), 0, "{:?}", w.table());
    assert!(tcp_via(&c.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).is_err());
    assert!(
        udp_via(
            &c.ns,
            addr("0.0.0.0", 53),
            &w.client,
            None,
            addr(HOST4, 5353)
        )
        .is_err()
    );
    assert!(tcp_via(&c.ns, addr("::", 80), &w.client, addr(HOST6, 8080)).is_err());
    // DEL twice is fine.
    w.del(&c, &conf).ok();
}

#[test]
fn host_through_localhost_and_its_own_address_and_hairpin() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    let c = w.container(V);
    let conf = w.conf(
        V,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]),
        json!({}),
    );
    w.add(&c, &conf);
    assert_eq!(
        w.host
            .sysctl(&format!("net/ipv4/conf/{}/route_localnet", w.bridge)),
        "1"
    );
    // 127.0.0.1: routed to the container thanks to route_localnet, then masqueraded to
    // the bridge's address.
    let peer = tcp_via(&c.ns, addr("0.0.0.0", 80), &w.host, addr("127.0.0.1", 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), GW4);
    let peer = udp_via(
        &c.ns,
        addr("0.0.0.0", 53),
        &w.host,
        None,
        addr("127.0.0.1", 5353),
    )
    .unwrap();
    assert_eq!(peer.ip().to_string(), GW4);
    // The host through its own addresses (v4 and v6): no masquerade needed.
    let peer = tcp_via(&c.ns, addr("0.0.0.0", 80), &w.host, addr(HOST4, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), HOST4);
    let peer = tcp_via(&c.ns, addr("::", 80), &w.host, addr(HOST6, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), HOST6);
    // Hairpin: the container reaches its own published port through the host's address;
    // it must be masqueraded or the reply would bypass the host.
    let peer = tcp_via(&c.ns, addr("0.0.0.0", 80), &c.ns, addr(HOST4, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), GW4);
    let peer = udp_via(&c.ns, addr("0.0.0.0", 53), &c.ns, None, addr(HOST4, 5353)).unwrap();
    assert_eq!(peer.ip().to_string(), GW4);
    let peer = tcp_via(&c.ns, addr("::", 80), &c.ns, addr(HOST6, 8080)).unwrap();
    assert_eq!(peer.ip().to_string(), GW6);
    w.del(&c, &conf).ok();
    assert!(tcp_via(&c.ns, addr("0.0.0.0", 80), &w.host, addr("127.0.0.1", 8080)).is_err());
}

#[test]
fn a_host_ip_that_is_not_local_is_not_rewritten() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    // A third namespace owns 198.51.100.77, routed through the host.
    let far = testkit::TestNs::new();
    let (hv, fv) = (testkit::unique_name("hf"), testkit::unique_name("ff"));
    w.host.ip(&[
        "link",
        "add",
        &hv,
        "type",
        "veth",
        "peer",
        "name",
        &fv,
        "netns",
        &far.tid(),
    ]);
    w.host.ip(&["addr", "add", "198.51.100.1/24", "dev", &hv]);
    w.host.ip(&["link", "set", &hv, "up"]);
    far.ip(&["addr", "add", "198.51.100.77/24", "dev", &fv]);
    far.ip(&["link", "set", &fv, "up"]);
    far.ip(&["route", "add", "default", "via", "198.51.100.1"]);

    let c = w.container(V);
    let conf = w.conf(
        V,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "198.51.100.77"},
            {"hostPort": 9090, "containerPort": 90, "protocol": "tcp", "hostIP": HOST4},
        ]),
        json!({}),
    );
    w.add(&c, &conf);
    // The mapping on a foreign address catches nothing: the connection reaches the real
    // 198.51.100.77.
    let peer = tcp_via(
        &far,
        addr("198.51.100.77", 8080),
        &w.client,
        addr("198.51.100.77", 8080),
    )
    .unwrap();
    assert_eq!(peer.ip().to_string(), CLIENT4);
    // The hostIP mapping answers on its address only.
    tcp_via(&c.ns, addr("0.0.0.0", 90), &w.client, addr(HOST4, 9090)).unwrap();
    w.add_host_addr("192.0.2.3/24");
    assert!(
        tcp_via(
            &c.ns,
            addr("0.0.0.0", 90),
            &w.client,
            addr("192.0.2.3", 9090)
        )
        .is_err()
    );
    w.del(&c, &conf).ok();
    assert_eq!(w.element_count(), 0);
}

#[test]
fn same_host_port_on_two_host_ips_and_a_conflict() {
    if !testkit::have_root() {
        return;
    }
    let w = World::new();
    w.add_host_addr("192.0.2.3/24");
    let a = w.container(V);
    let b = w.container(V);
    let on = |ip: &str| {
        w.conf(
            V,
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ip}]),
            json!({}),
        )
    };
    w.add(&a, &on(HOST4));
    w.add(&b, &on("192.0.2.3"));
    tcp_via(&a.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
    tcp_via(
        &b.ns,
        addr("0.0.0.0", 80),
        &w.client,
        addr("192.0.2.3", 8080),
    )
    .unwrap();

    // A third container asking for a taken host address and port fails, changing nothing.
    let c = w.container(V);
    let before = w.table().unwrap();
    let run = w.portmap("ADD", &c, c.ns.path(), &on(HOST4), Some(&c.result));
    assert_ne!(run.code, 0);
    assert!(run.stdout.contains("already mapped"), "{}", run.stdout);
    assert_eq!(w.table().unwrap(), before);
    tcp_via(&a.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
    // Its DEL (the runtime cleans up the failed ADD) leaves the owner's mapping alone.
    w.del(&c, &on(HOST4)).ok();
    tcp_via(&a.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();

    w.del(&a, &on(HOST4)).ok();
    assert!(tcp_via(&a.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).is_err());
    tcp_via(
        &b.ns,
        addr("0.0.0.0", 80),
        &w.client,
        addr("192.0.2.3", 8080),
    )
    .unwrap();
    // Now the port is free for the third one.
    w.add(&c, &on(HOST4));
    tcp_via(&c.ns, addr("0.0.0.0", 80), &w.client, addr(HOST4, 8080)).unwrap();
}
