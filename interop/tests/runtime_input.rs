//! What runtimes really inject, run through libcni's `cnitool` as containerd runs it through
//! go-cni and libcni: capability arguments marshalled from Go structs without JSON tags
//! (`{"HostPort":..}`, `{"IngressRate":..}`), containerd's CNI_ARGS, and DELs that carry
//! values ADD would refuse.
//!
//! The containerd scenario runs with this project's plugins and with the reference ones, so
//! the assertions are proven against a known-good implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use support::{Network, Side, addresses};
use testkit::{TestNs, tcp_via};

const CHAIN: [&str; 6] = [
    "bridge",
    "host-local",
    "portmap",
    "firewall",
    "tuning",
    "bandwidth",
];

fn chain() -> Value {
    json!([
        {"type": "bridge", "bridge": "cni-rti0", "isGateway": true, "ipMasq": true,
         "hairpinMode": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "firewall"},
        {"type": "tuning", "capabilities": {"mac": true},
         "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}}
    ])
}

/// containerd's CNI_ARGS (its pairs come from a Go map: any order).
const CONTAINERD_CNI_ARGS: &str = "K8S_POD_UID=1f6d2d1c-0a0b-4c5d-8e9f-000000000001;\
    IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
    K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef";

/// containerd's capability arguments: go-cni's structs have no JSON tags, so the keys are Go
/// field names; `HostIP` is always there (`""` = any); the burst of an annotated direction is
/// MaxUint32 bits.
fn containerd_caps() -> Value {
    json!({
        "portMappings": [
            {"HostPort": 18180, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""},
            {"HostPort": 18153, "ContainerPort": 5353, "Protocol": "udp", "HostIP": ""}
        ],
        "bandwidth": {
            "IngressRate": 100_000_000u64, "IngressBurst": 4_294_967_295u64,
            "EgressRate": 200_000_000u64, "EgressBurst": 4_294_967_295u64
        }
    })
}

/// The rate (bytes/s, as tc reports it) of the root tbf of `dev` in `ns`, if any.
fn tbf_rate(ns: &TestNs, dev: &str) -> Option<u64> {
    let out = ns.exec("tc", &["-j", "qdisc", "show", "dev", dev]);
    assert!(out.status.success(), "tc qdisc show dev {dev}: {out:?}");
    let qdiscs: Value = serde_json::from_slice(&out.stdout).unwrap();
    qdiscs
        .as_array()?
        .iter()
        .find(|q| q["kind"] == "tbf" && q["root"] == true)
        .and_then(|q| q["options"]["rate"].as_u64())
}

/// One datagram from `client` to `connect`, echoed by a server in `server` bound to `bind`.
fn udp_echo(server: &TestNs, bind: SocketAddr, client: &TestNs, connect: SocketAddr) {
    let srv = server.run(|| UdpSocket::bind(bind)).unwrap();
    srv.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let cli = client.run(|| UdpSocket::bind("127.0.0.1:0")).unwrap();
    cli.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    std::thread::scope(|s| {
        let echo = s.spawn(|| {
            let mut buf = [0u8; 64];
            let (n, peer) = srv
                .recv_from(&mut buf)
                .expect("no datagram reached the server");
            srv.send_to(&buf[..n], peer).unwrap();
        });
        cli.send_to(b"ping", connect).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = cli
            .recv_from(&mut buf)
            .expect("no answer through the mapping");
        assert_eq!(&buf[..n], b"ping");
        echo.join().unwrap();
    });
}

fn containerd_scenario(side: Side) {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let sides: Vec<(&str, Side)> = CHAIN.iter().map(|p| (*p, side)).collect();
    let net = Network::new(&cnitool, "rti", "1.0.0", chain(), &sides);
    let ctr = TestNs::new();
    let caps = containerd_caps();
    let result = net.add_with(&ctr, Some(&caps), Some(CONTAINERD_CNI_ARGS));
    let ips = addresses(&result);
    let pod = ips[0];

    // The host ports, from the host through 127.0.0.1, and from the pod to itself through
    // the gateway (hairpin).
    let tcp = tcp_via(
        &ctr,
        "0.0.0.0:8080".parse().unwrap(),
        &net.host,
        "127.0.0.1:18180".parse().unwrap(),
    );
    tcp.unwrap_or_else(|e| panic!("{side:?}: TCP hostPort: {e}"));
    udp_echo(
        &ctr,
        "0.0.0.0:5353".parse().unwrap(),
        &net.host,
        "127.0.0.1:18153".parse().unwrap(),
    );
    let gateway: SocketAddr = "10.77.0.1:18180".parse().unwrap();
    tcp_via(&ctr, "0.0.0.0:8080".parse().unwrap(), &ctr, gateway)
        .unwrap_or_else(|e| panic!("{side:?}: hairpin to {gateway}: {e}"));

    // Shaping at the annotated rates: tbf on the host veth towards the pod, and on the ifb
    // that the veth's ingress is redirected to.
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(
        tbf_rate(&net.host, host_veth),
        Some(100_000_000 / 8),
        "{side:?}: ingress tbf on {host_veth}"
    );
    let links = net.host.ip_json(&["-d", "link", "show", "type", "ifb"]);
    let ifb = links.as_array().unwrap().first().unwrap_or_else(|| {
        panic!("{side:?}: no ifb for the egress limit");
    });
    let ifb = ifb["ifname"].as_str().unwrap();
    assert_eq!(
        tbf_rate(&net.host, ifb),
        Some(200_000_000 / 8),
        "{side:?}: egress tbf on {ifb}"
    );

    // containerd's DELs: with the netns and the cached result, then again after the netns
    // is gone, with CNI_NETNS="" (cnitool cannot send an empty netns: the second DEL runs
    // with no cached result instead, as after containerd removed the cache).
    net.del_with(&ctr, Some(&caps), Some(CONTAINERD_CNI_ARGS));
    net.del_with(&ctr, Some(&caps), Some(CONTAINERD_CNI_ARGS));
    net.assert_nothing_left(&[&ctr], &[pod]);
}

#[test]
fn containerd_capability_args_work_with_ours() {
    containerd_scenario(Side::Ours);
}

#[test]
fn containerd_capability_args_work_with_the_reference() {
    containerd_scenario(Side::Reference);
}

/// DEL gets whatever the runtime holds: capability values and `args` that ADD would refuse,
/// CNI_ARGS keys no plugin knows (without `IgnoreUnknown`) and malformed values. Every plugin
/// must still remove what the attachment owns and succeed.
#[test]
fn del_removes_everything_whatever_the_runtime_injects() {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let sides: Vec<(&str, Side)> = CHAIN.iter().map(|p| (*p, Side::Ours)).collect();
    let mut plugins = chain();
    plugins[0]["capabilities"] = json!({"mac": true, "ips": true});
    plugins[0]["ipam"]["capabilities"] = json!({"ips": true});
    let net = Network::new(&cnitool, "rtd", "1.0.0", plugins, &sides);
    let ctr = TestNs::new();
    let result = net.add_with(&ctr, Some(&containerd_caps()), Some(CONTAINERD_CNI_ARGS));
    let ips = addresses(&result);

    // The list as it may read by DEL time: per-attachment `args` of the wrong shape.
    let file = net
        .tmp
        .path()
        .join("net.d")
        .join(format!("{}.conflist", net.name));
    let mut list: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for p in list["plugins"].as_array_mut().unwrap() {
        p["args"] = json!({"cni": {"ips": "10.77.0.999", "mac": 5, "mtu": "big"}});
    }
    std::fs::write(&file, list.to_string()).unwrap();
    let hostile = json!({
        "portMappings": [{"HostPort": 0, "ContainerPort": -1, "Protocol": "icmp", "HostIP": "nope"}],
        "bandwidth": {"IngressRate": "fast", "IngressBurst": -1},
        "mac": "not-a-mac",
        "ips": [7]
    });
    for cni_args in ["FOO=1;MAC=zz;IP=10.77.0.999", "IgnoreUnknown=1;IP=::zz"] {
        net.del_with(&ctr, Some(&hostile), Some(cni_args));
    }
    net.assert_nothing_left(&[&ctr], &ips);
}
