//! A kubelet's pod lifecycle over CRI against Debian's containerd 1.6, whose CNI directory
//! holds this project's plugins, and the same with the reference plugins (Debian's 1.1.1),
//! so that the harness is proven against a known-good implementation.
//!
//! containerd runs as a child of the test inside a network namespace the test made (the
//! node's "host" namespace: the bridge, the rules and the host ports live there), with its
//! own root, state, socket and configuration. The image is written by the test (a static
//! busybox) and imported with `ctr`. Two pods: A publishes TCP and UDP host ports and has
//! bandwidth annotations, B has neither; each runs busybox httpd. The checks are real
//! traffic (pod to pod, host to 127.0.0.1:hostPort, a pod to its own host port through the
//! gateway, UDP through a host port) and kernel state (`lo`, tuning's sysctl, tbf and ifb
//! rates), then that StopPodSandbox (twice) and RemovePodSandbox leave nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use sha2::{Digest, Sha512};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;
use support::cri::api::Protocol;
use support::{GATEWAY, HTTP_PORT, Node, Pod, PodSpec, Side, in_netns, ip_json_in, retry};

const TCP_HOST_PORT: u16 = 18080;
const UDP_PORT: u16 = 9090;
const UDP_HOST_PORT: u16 = 19090;
/// The bandwidth annotations of pod A (bits/s) and what containerd makes of them. Both rates
/// are above 15.625 Mbit/s: below that, containerd's burst takes longer than 2^32 of the
/// kernel's 64 ns ticks to drain, which a tbf dump (and the reference's tbf) cannot hold.
const INGRESS: (&str, u64) = ("20M", 20_000_000);
const EGRESS: (&str, u64) = ("40M", 40_000_000);
/// containerd 1.6 sends this burst (bits) for each direction that has a rate.
const CONTAINERD_BURST_BITS: u64 = 4_294_967_295;

#[test]
fn kubelet_pod_lifecycle_with_our_plugins() {
    pod_lifecycle(Side::Ours);
}

#[test]
fn kubelet_pod_lifecycle_with_the_reference_plugins() {
    pod_lifecycle(Side::Reference);
}

fn pod_a_spec() -> PodSpec {
    PodSpec {
        name: "pod-a".into(),
        ports: vec![
            (Protocol::Tcp, HTTP_PORT, TCP_HOST_PORT),
            (Protocol::Udp, UDP_PORT, UDP_HOST_PORT),
        ],
        annotations: vec![
            (
                "kubernetes.io/ingress-bandwidth".into(),
                INGRESS.0.to_string(),
            ),
            (
                "kubernetes.io/egress-bandwidth".into(),
                EGRESS.0.to_string(),
            ),
        ],
    }
}

fn pod_lifecycle(side: Side) {
    let Some(tools) = support::ready() else {
        return;
    };
    let started = std::time::Instant::now();
    let node = Node::start(&tools, side);
    let net = &node.network;

    let v = node.cri.version().unwrap();
    assert_eq!(v.runtime_name, "containerd");
    assert!(v.runtime_version.starts_with("1.6"), "{v:?}");
    let (ready, why) = node.cri.condition("RuntimeReady").unwrap();
    assert!(ready, "RuntimeReady: {why}");
    let (ready, why) = node.cri.condition("NetworkReady").unwrap();
    assert!(ready, "NetworkReady: {why}");

    let a = node.run_pod(&pod_a_spec());
    let b = node.run_pod(&PodSpec {
        name: "pod-b".into(),
        ..Default::default()
    });
    assert_ne!(a.ip, b.ip);

    // The addresses are host-local's, each held for its sandbox on eth0.
    let allocs = node.allocations();
    for p in [&a, &b] {
        let owner = allocs
            .get(&p.ip)
            .unwrap_or_else(|| panic!("{net}: no allocation for {} in {allocs:?}", p.ip));
        let fields: Vec<&str> = owner.split_whitespace().collect();
        assert_eq!(fields, [p.id.as_str(), "eth0"], "{net}: {}", p.ip);
        for f in node.cache_files(&p.id) {
            assert!(f.is_file(), "{net}: no libcni cache {}", f.display());
        }
        assert_pod_interfaces(&node, p);
    }

    // What the final check must find gone is there now.
    assert_eq!(node.host_links("veth").len(), 2, "{net}");
    let netns = node.netns_files();
    assert!(
        netns.contains(&a.netns) && netns.contains(&b.netns),
        "{net}: {netns:?}"
    );
    let rules = node.host_rules();
    for p in [&a, &b] {
        assert!(
            rules.contains(&p.id) && rules.contains(&p.ip.to_string()),
            "{net}: no rule names {} ({}):\n{rules}",
            p.id,
            p.ip
        );
    }

    let ctr_a = node.start_httpd(&a);
    let ctr_b = node.start_httpd(&b);

    // Pod to pod: A fetches B's page. (Debian's busybox 1.35 wget crashes on `-T`, so
    // `timeout` bounds it.)
    let url_b = format!("http://{}:{HTTP_PORT}/", b.ip);
    let page = retry(Duration::from_secs(10), || {
        node.exec(&ctr_a, &["timeout", "5", "wget", "-q", "-O", "-", &url_b])
    })
    .unwrap_or_else(|e| panic!("{net}: pod A to pod B: {e}"));
    assert_eq!(page.trim(), "pod-b");

    // The host port from the host namespace, on 127.0.0.1.
    let local: SocketAddr = (IpAddr::from([127, 0, 0, 1]), TCP_HOST_PORT).into();
    let page = retry(Duration::from_secs(10), || {
        support::http_get(&node.host, local)
    })
    .unwrap_or_else(|e| panic!("{net}: 127.0.0.1:{TCP_HOST_PORT}: {e}"));
    assert_eq!(page.trim(), "pod-a");

    // Hairpin: A reaches itself through its host port on the node's address.
    let url_hairpin = format!("http://{GATEWAY}:{TCP_HOST_PORT}/");
    let page = retry(Duration::from_secs(10), || {
        node.exec(
            &ctr_a,
            &["timeout", "5", "wget", "-q", "-O", "-", &url_hairpin],
        )
    })
    .unwrap_or_else(|e| panic!("{net}: hairpin through {GATEWAY}:{TCP_HOST_PORT}: {e}"));
    assert_eq!(page.trim(), "pod-a");

    // UDP through the host port: the server socket lives in pod A's namespace.
    let server = in_netns(&a.netns, || UdpSocket::bind(("0.0.0.0", UDP_PORT))).unwrap();
    let udp_local: SocketAddr = (IpAddr::from([127, 0, 0, 1]), UDP_HOST_PORT).into();
    support::udp_exchange(&server, &node.host, udp_local)
        .unwrap_or_else(|e| panic!("{net}: UDP 127.0.0.1:{UDP_HOST_PORT}: {e}"));
    drop(server);
    // B has no host port: nothing answers on another one.
    let other: SocketAddr = (IpAddr::from([127, 0, 0, 1]), TCP_HOST_PORT + 1).into();
    assert!(support::http_get(&node.host, other).is_err());

    assert_bandwidth(&node, &a);
    assert_eq!(
        node.host_links("ifb").len(),
        1,
        "{net}: pod B has no bandwidth limit, so only A has an ifb"
    );

    // Tear down as a kubelet does: containers, then the sandbox (StopPodSandbox is repeated
    // by a kubelet until it succeeds, and containerd DELs again on each), then removal.
    for c in [&ctr_a, &ctr_b] {
        node.cri.stop_container(c, 0).unwrap();
        node.cri.remove_container(c).unwrap();
    }
    for p in [&a, &b] {
        node.cri
            .stop_pod_sandbox(&p.id)
            .unwrap_or_else(|e| panic!("{net}: StopPodSandbox: {e}"));
        assert!(!p.netns.exists(), "{net}: {} kept", p.netns.display());
        node.cri
            .stop_pod_sandbox(&p.id)
            .unwrap_or_else(|e| panic!("{net}: second StopPodSandbox: {e}"));
        node.cri
            .remove_pod_sandbox(&p.id)
            .unwrap_or_else(|e| panic!("{net}: RemovePodSandbox: {e}"));
    }
    node.assert_nothing_left(&[&a, &b]);
    eprintln!(
        "{side:?}: {net} ({} snapshotter) passed in {:.1} s",
        node.snapshotter,
        started.elapsed().as_secs_f64()
    );
}

/// `lo` is up (containerd's loopback network), eth0 holds the pod's address, and tuning's
/// sysctl is set.
fn assert_pod_interfaces(node: &Node, p: &Pod) {
    let net = &node.network;
    let lo = ip_json_in(&p.netns, &["addr", "show", "dev", "lo"]);
    let lo = &lo[0];
    let flags: Vec<&str> = lo["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(flags.contains(&"UP"), "{net}: lo is down: {lo}");
    assert!(
        lo["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == "127.0.0.1"),
        "{net}: lo: {lo}"
    );
    let eth0 = ip_json_in(&p.netns, &["addr", "show", "dev", "eth0"]);
    assert!(
        eth0[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == p.ip.to_string() && a["prefixlen"] == 24),
        "{net}: eth0: {eth0}"
    );
    let arp_notify = in_netns(&p.netns, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/arp_notify").unwrap()
    });
    assert_eq!(arp_notify.trim(), "1", "{net}: tuning's sysctl");
}

/// The host side of a pod's eth0: the host-namespace link whose index eth0 names as its peer.
fn host_veth(node: &Node, p: &Pod) -> String {
    let eth0 = ip_json_in(&p.netns, &["link", "show", "dev", "eth0"]);
    let peer = eth0[0]["link_index"]
        .as_u64()
        .unwrap_or_else(|| panic!("eth0 has no peer: {eth0}"));
    node.host
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["ifname"].as_str())
        .unwrap_or_else(|| panic!("no host link with index {peer}"))
        .to_string()
}

/// The root tbf of `dev` in the host namespace (`tc -j` options: rate and burst in bytes).
fn root_tbf(node: &Node, dev: &str) -> Value {
    let out = node.host.exec("tc", &["-j", "qdisc", "show", "dev", dev]);
    assert!(out.status.success(), "tc: {out:?}");
    let qdiscs: Value = serde_json::from_slice(&out.stdout).unwrap();
    qdiscs
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["kind"] == "tbf" && q["root"] == true)
        .cloned()
        .unwrap_or_else(|| panic!("{}: no root tbf on {dev}: {qdiscs}", node.network))
}

/// The annotations' rates read back from the kernel: ingress on the host veth, egress on the
/// ifb the veth's ingress is redirected to (named as the reference names it).
fn assert_bandwidth(node: &Node, p: &Pod) {
    let net = &node.network;
    let veth = host_veth(node, p);
    assert_tbf(&root_tbf(node, &veth), INGRESS.1, &veth);
    let hash: String = Sha512::digest(format!("{net}{}", p.id))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ifb = format!("bwp{}", &hash[..12]);
    assert_eq!(node.host_links("ifb"), std::slice::from_ref(&ifb), "{net}");
    assert_tbf(&root_tbf(node, &ifb), EGRESS.1, &ifb);
    let out = node
        .host
        .exec("tc", &["-j", "filter", "show", "dev", &veth, "ingress"]);
    let filters = String::from_utf8_lossy(&out.stdout);
    assert!(
        filters.contains(&ifb),
        "{net}: no redirect from {veth} to {ifb}: {filters}"
    );
}

/// A tbf's rate is `rate_bits` and its burst containerd's, in bytes (tc derives the burst it
/// prints from the buffer time, so it may be off by a few bytes).
fn assert_tbf(tbf: &Value, rate_bits: u64, dev: &str) {
    assert_eq!(
        tbf["options"]["rate"].as_u64(),
        Some(rate_bits / 8),
        "{dev}: {tbf}"
    );
    let burst = tbf["options"]["burst"].as_u64().unwrap_or(0);
    assert!(
        burst.abs_diff(CONTAINERD_BURST_BITS / 8) <= 64,
        "{dev}: burst {burst} B, containerd asked for {CONTAINERD_BURST_BITS} bits: {tbf}"
    );
}
