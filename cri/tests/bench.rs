//! Pod sandbox latency through Debian's containerd 1.6 over CRI, as a kubelet sees it: the
//! time of RunPodSandbox, StopPodSandbox and RemovePodSandbox for N pods with this project's
//! plugins and N with the reference plugins, on one containerd whose CNI directory is
//! switched between the two before every pod (alternating which goes first), so both meet
//! the same daemon, caches and machine load. Every pod is the CRI test's pod A: TCP and UDP
//! host ports and both bandwidth annotations, so each runs the whole chain (bridge +
//! host-local, portmap, firewall, tuning, bandwidth) plus containerd's loopback network.
//! Prints figures only; it never passes or fails on time.
//!
//! A benchmark, not a test: ignored unless asked for, as bench/cri.sh does
//! (`cargo test --release -p cni-cri --test bench -- --ignored --nocapture`; a test target,
//! so a failure still unwinds and the node's cleanup runs). `CRI_BENCH_PODS` is N (default
//! 30); our binaries come from `CNI_TEST_BIN_DIR`, else the directory this was built into.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod support;

use std::time::Instant;
use support::cri::api::Protocol;
use support::{HTTP_PORT, Node, PodSpec, Side};

const OPS: [&str; 3] = ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"];

fn spec(i: usize) -> PodSpec {
    PodSpec {
        name: format!("bench-{i}"),
        ports: vec![
            (Protocol::Tcp, HTTP_PORT, 18080),
            (Protocol::Udp, 9090, 19090),
        ],
        annotations: vec![
            ("kubernetes.io/ingress-bandwidth".into(), "20M".into()),
            ("kubernetes.io/egress-bandwidth".into(), "40M".into()),
        ],
    }
}

/// One pod's three calls, in ms.
fn one_pod(node: &Node, i: usize) -> [f64; 3] {
    let config = node.sandbox_config(&spec(i));
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let id = node
        .cri
        .run_pod_sandbox(&config)
        .unwrap_or_else(|e| panic!("{:?}: RunPodSandbox: {e}", node.side()));
    let run = ms(t);
    let t = Instant::now();
    node.cri.stop_pod_sandbox(&id).unwrap();
    let stop = ms(t);
    let t = Instant::now();
    node.cri.remove_pod_sandbox(&id).unwrap();
    let remove = ms(t);
    [run, stop, remove]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[test]
#[ignore = "a benchmark: bench/cri.sh runs it"]
fn cri_pod_sandbox_latency() {
    let n: usize = std::env::var("CRI_BENCH_PODS")
        .ok()
        .map(|a| a.parse().expect("CRI_BENCH_PODS: a number of pods"))
        .unwrap_or(30);
    let Some(tools) = support::ready() else {
        return;
    };
    let node = Node::start(&tools, Side::Ours);
    println!(
        "CRI pod sandbox latency, containerd {} ({} snapshotter), {n} pods per side, alternating",
        node.cri
            .version()
            .map(|v| v.runtime_version)
            .unwrap_or_default(),
        node.snapshotter
    );
    println!(
        "ours: {}\nreference: {}\n",
        Side::Ours.dir().display(),
        Side::Reference.dir().display()
    );
    // One untimed pod per side: the first ADD of a network writes its tables and chains.
    for side in [Side::Ours, Side::Reference] {
        node.switch_to(side);
        one_pod(&node, 0);
    }
    let mut times: Vec<(Side, [f64; 3])> = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let order = if i % 2 == 0 {
            [Side::Ours, Side::Reference]
        } else {
            [Side::Reference, Side::Ours]
        };
        for side in order {
            node.switch_to(side);
            times.push((side, one_pod(&node, i + 1)));
        }
    }
    let wall = started.elapsed();
    println!(
        "{:<18} {:>20} {:>20} {:>15}",
        "ms", "ours median / p95", "ref median / p95", "ratio"
    );
    for (k, op) in OPS.iter().enumerate() {
        let stats = |side: Side| {
            let mut v: Vec<f64> = times
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, t)| t[k])
                .collect();
            v.sort_by(f64::total_cmp);
            (median(&v), percentile(&v, 95.0))
        };
        let (om, op95) = stats(Side::Ours);
        let (rm, rp95) = stats(Side::Reference);
        println!(
            "{op:<18} {:>20} {:>20} {:>15}",
            format!("{om:.1} / {op95:.1}"),
            format!("{rm:.1} / {rp95:.1}"),
            format!("{:.2} / {:.2}", om / rm, op95 / rp95)
        );
    }
    println!("\n{} pods in {:.1} s", times.len(), wall.as_secs_f64());
    // Both sides cleaned up after every pod: nothing of theirs is left now.
    assert!(node.netns_files().is_empty(), "network namespaces left");
    for kind in ["veth", "ifb"] {
        assert!(node.host_links(kind).is_empty(), "{kind} links left");
    }
    assert!(node.allocations().is_empty(), "allocations left");
}
