//! containerd's two network lists per pod at once: its built-in loopback list
//! (`{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}` on `lo`)
//! and the pod network's chain on `eth0`. containerd ADDs both in parallel (one goroutine per
//! list), and tears a pod down with up to three DELs per list, the later ones with
//! `CNI_NETNS=""` and, the cache being gone, no prevResult.
//!
//! What the two could share, and why loopback never waits for the chain:
//! - host-local's network lock (`<dataDir>/<network>/lock`) and firewall's host-wide lock:
//!   loopback takes neither;
//! - the metrics file (`CNI_METRICS_FILE` in the runtime's environment reaches every plugin):
//!   an update never waits, a busy lock leaves the operation in `<file>.pending/`;
//! - the log file (`CNI_LOG_FILE`): one `O_APPEND` write per line, no lock;
//! - nftables: loopback sends nothing to nf_tables; the result cache: one file per list.
//!
//! The first test runs many pods with both lists at once and checks that neither fails, that
//! `lo` ends up up with 127.0.0.1 and ::1 (and carries traffic), and that every shared file
//! holds exactly what each invocation wrote. The second holds every lock the chain takes
//! while loopback's ADD and DELs run: they must finish while the chain's ADD is still
//! stuck behind the locks. (The loopback list is 0.3.1: there is no CHECK, and containerd
//! sends none.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use testkit::{Run, TestNs, have_root, run_args_in, tcp_exchange, tcp_via};

/// containerd's loopback list, byte for byte what go-cni loads.
const LOOPBACK_LIST: &str =
    r#"{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#;

/// The node: its host namespace, both lists, and the files every plugin shares.
struct Node {
    host: TestNs,
    tmp: tempfile::TempDir,
    chain: PathBuf,
    loopback: PathBuf,
    network: String,
}

impl Node {
    fn new(lock_timeout: u64) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let network = testkit::unique_name("ctrd");
        let chain = json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["1.0.0", "1.1.0"],
            "name": network,
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.186.0.0/24"}], [{"subnet": "fd86::/64"}]],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                        "dataDir": tmp.path().join("ipam"),
                        "lockTimeout": lock_timeout
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "firewall"},
                {"type": "tuning", "dataDir": tmp.path().join("tuning")},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        });
        let chain_file = tmp.path().join("10-chain.conflist");
        std::fs::write(&chain_file, chain.to_string()).unwrap();
        let loopback = tmp.path().join("loopback.conflist");
        std::fs::write(&loopback, LOOPBACK_LIST).unwrap();
        Node {
            host: TestNs::new(),
            tmp,
            chain: chain_file,
            loopback,
            network,
        }
    }

    fn metrics(&self) -> PathBuf {
        self.tmp.path().join("textfile/cni.prom")
    }

    fn log(&self) -> PathBuf {
        self.tmp.path().join("log/cni.log")
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("results")
    }

    /// `cnirun VERB` on one list for one pod, with what containerd passes: CNI_ARGS built
    /// from a Go map (here in an order other than CRI-O's), and the environment every plugin
    /// inherits from the runtime (a shared metrics file and log file).
    fn run(&self, list: &Path, verb: &str, pod: &Pod, ifname: &str, netns: bool) -> Run {
        let bin = testkit::bin_dir();
        let cache = self.cache();
        let args = format!(
            "K8S_POD_UID={};IgnoreUnknown=1;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_NAMESPACE=default",
            pod.uid, pod.name, pod.sandbox
        );
        let mut argv = vec![
            verb,
            "--conflist",
            list.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--cni-path",
            bin.to_str().unwrap(),
            "--container-id",
            &pod.sandbox,
            "--ifname",
            ifname,
            "--cni-args",
            &args,
        ];
        if netns {
            argv.extend(["--netns", &pod.netns]);
        }
        let caps = pod.capability_args().to_string();
        argv.extend(["--capability-args", &caps]);
        let metrics = self.metrics();
        let log = self.log();
        let env = [
            ("CNI_METRICS_FILE", metrics.to_str().unwrap()),
            ("CNI_LOG_FILE", log.to_str().unwrap()),
            ("CNI_LOG_LEVEL", "info"),
        ];
        run_args_in(&self.host, &testkit::bin("cnirun"), &argv, &env, "")
    }

    fn lo(&self, verb: &str, pod: &Pod, netns: bool) -> Run {
        self.run(&self.loopback, verb, pod, "lo", netns)
    }

    fn eth0(&self, verb: &str, pod: &Pod, netns: bool) -> Run {
        self.run(&self.chain, verb, pod, "eth0", netns)
    }

    fn cache_file(&self, list: &str, pod: &Pod, ifname: &str) -> PathBuf {
        self.cache()
            .join(format!("{list}-{}-{ifname}", pod.sandbox))
    }

    /// Nothing of any pod is left on the node.
    fn assert_empty(&self, pods: &[Pod]) {
        let links = self.host.ip_json(&["-d", "link", "show"]);
        let left: Vec<String> = links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| matches!(l["linkinfo"]["info_kind"].as_str(), Some("veth" | "ifb")))
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect();
        assert!(left.is_empty(), "links left: {left:?}");
        let ruleset = self.host.nft_ruleset().to_string();
        for pod in pods {
            assert!(!ruleset.contains(&pod.sandbox), "nft keeps {}", pod.name);
        }
        let files = |d: PathBuf| -> Vec<String> {
            std::fs::read_dir(d)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let allocs: Vec<String> = files(self.tmp.path().join("ipam").join(&self.network))
            .into_iter()
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect();
        assert!(allocs.is_empty(), "allocations left: {allocs:?}");
        let backups: Vec<String> = files(self.tmp.path().join("tuning"))
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .collect();
        assert!(backups.is_empty(), "tuning backups left: {backups:?}");
        assert!(
            files(self.cache()).is_empty(),
            "cache left: {:?}",
            files(self.cache())
        );
    }
}

struct Pod {
    index: usize,
    ns: Option<TestNs>,
    netns: String,
    sandbox: String,
    name: String,
    uid: String,
}

impl Pod {
    fn new(i: usize) -> Pod {
        let ns = TestNs::new();
        // A sandbox's namespace starts with `lo` down; the loopback list sets it up.
        ns.ip(&["link", "set", "lo", "down"]);
        let seed = testkit::unique_name("p");
        let h = |salt: &str| format!("{:016x}", common::naming::fnv1a64(&[&seed, salt]));
        Pod {
            index: i,
            netns: ns.path().to_string(),
            ns: Some(ns),
            sandbox: format!("{}{}{}{}", h("a"), h("b"), h("c"), h("d")),
            name: format!("pod-{i}"),
            uid: format!("{}-0000-4000-8000-{}", &h("u")[..8], &h("v")[..12]),
        }
    }

    fn ns(&self) -> &TestNs {
        self.ns.as_ref().unwrap()
    }

    /// The host port published for the pod's port 8080.
    fn host_port(&self) -> u16 {
        18200 + self.index as u16
    }

    /// Capability args as containerd passes them to both lists: go-cni's structures have no
    /// JSON tags, so the keys inside are Go field names; bandwidth's burst is MaxUint32.
    fn capability_args(&self) -> Value {
        json!({
            "portMappings": [{
                "HostPort": self.host_port(), "ContainerPort": 8080,
                "Protocol": "tcp", "HostIP": ""
            }],
            "bandwidth": {
                "IngressRate": 1_000_000_000u64, "IngressBurst": 4_294_967_295u64,
                "EgressRate": 0, "EgressBurst": 0
            },
            "dns": {"Servers": ["10.96.0.10"], "Searches": ["default.svc.cluster.local"], "Options": ["ndots:5"]},
            "io.kubernetes.cri.pod-annotations": {"kubernetes.io/ingress-bandwidth": "1G"}
        })
    }
}

/// `lo` is up and holds 127.0.0.1/8 and ::1/128.
fn assert_lo_ready(pod: &Pod) {
    let link = pod.ns().ip_json(&["link", "show", "dev", "lo"]);
    let flags = link[0]["flags"].to_string();
    assert!(
        flags.contains("\"UP\""),
        "{}: lo is not up: {flags}",
        pod.name
    );
    let addrs: Vec<String> = pod.ns().ip_json(&["addr", "show", "dev", "lo"])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(
        addrs.contains(&"127.0.0.1/8".to_string()) && addrs.contains(&"::1/128".to_string()),
        "{}: lo holds {addrs:?}",
        pod.name
    );
}

/// Counts of `cni_operations_total{plugin=..,command=..}` in the metrics file.
fn op_count(metrics: &Path, plugin: &str, command: &str) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap();
    let needle = format!("cni_operations_total{{plugin=\"{plugin}\",command=\"{command}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn loopback_and_the_pod_chain_run_at_once_for_many_pods() {
    if !have_root() {
        return;
    }
    const PODS: usize = 10;
    let node = Node::new(30);
    let mut pods: Vec<Pod> = (0..PODS).map(Pod::new).collect();
    let start = Barrier::new(2 * PODS);

    // ADD: every pod's two lists at once, all pods at once.
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                let start = &start;
                let node = &node;
                let lo = s.spawn(move || {
                    start.wait();
                    node.lo("add", pod, true)
                });
                let eth0 = s.spawn(move || {
                    start.wait();
                    node.eth0("add", pod, true)
                });
                (pod, lo, eth0)
            })
            .collect();
        handles
            .into_iter()
            .map(|(pod, lo, eth0)| {
                let lo = lo.join().unwrap();
                let eth0 = eth0.join().unwrap();
                assert_eq!(
                    lo.code, 0,
                    "{}: lo ADD: {} {}",
                    pod.name, lo.stdout, lo.stderr
                );
                assert_eq!(
                    eth0.code, 0,
                    "{}: eth0 ADD: {} {}",
                    pod.name, eth0.stdout, eth0.stderr
                );
                let lo = lo.json();
                assert_eq!(lo["interfaces"][0]["name"], "lo", "{lo}");
                let mut lo_ips = testkit::result_addresses(&lo);
                lo_ips.sort();
                assert_eq!(
                    lo_ips,
                    [
                        "127.0.0.1".parse::<IpAddr>().unwrap(),
                        "::1".parse().unwrap()
                    ]
                );
                eth0.json()
            })
            .collect()
    });
    for (pod, result) in pods.iter().zip(&results) {
        assert_lo_ready(pod);
        assert_eq!(
            testkit::result_addresses(result).len(),
            2,
            "{}: {result}",
            pod.name
        );
        let r = node.eth0("check", pod, true);
        assert_eq!(r.code, 0, "{}: eth0 CHECK: {}", pod.name, r.stdout);
    }
    // lo carries traffic over both families; pods reach each other over both.
    for (i, pod) in pods.iter().take(2).enumerate() {
        for ip in ["127.0.0.1", "::1"] {
            let addr = SocketAddr::new(ip.parse().unwrap(), 7500 + i as u16);
            tcp_exchange(pod.ns(), pod.ns(), addr)
                .unwrap_or_else(|e| panic!("{}: over lo to {ip}: {e}", pod.name));
        }
    }
    for (i, ip) in testkit::result_addresses(&results[0])
        .into_iter()
        .enumerate()
    {
        tcp_exchange(
            pods[0].ns(),
            pods[1].ns(),
            SocketAddr::new(ip, 7510 + i as u16),
        )
        .unwrap_or_else(|e| panic!("pod-1 -> pod-0 ({ip}): {e}"));
    }
    // The bandwidth, given with Go field names, shapes the pod's host veth.
    for (pod, result) in pods.iter().zip(&results).take(2) {
        let veth = result["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
            .filter_map(|i| i["name"].as_str())
            .find(|n| *n != "cni0")
            .unwrap_or_else(|| panic!("{}: no host veth in {result}", pod.name));
        let out = node.host.exec("tc", &["qdisc", "show", "dev", veth]);
        let qdiscs = String::from_utf8_lossy(&out.stdout);
        assert!(
            qdiscs.contains("qdisc tbf"),
            "{}: {veth}: {qdiscs}",
            pod.name
        );
    }
    // The hostPort, given with containerd's Go field names, is published.
    for pod in pods.iter().take(2) {
        let host_port = SocketAddr::new("127.0.0.1".parse().unwrap(), pod.host_port());
        tcp_via(
            pod.ns(),
            "0.0.0.0:8080".parse().unwrap(),
            &node.host,
            host_port,
        )
        .unwrap_or_else(|e| panic!("{}: host port {host_port}: {e}", pod.name));
    }

    // StopPodSandbox: the first DEL of both lists at once (with the netns path and the
    // cached result), all pods at once.
    let start = Barrier::new(2 * PODS);
    std::thread::scope(|s| {
        for pod in &pods {
            let (start, node) = (&start, &node);
            s.spawn(move || {
                start.wait();
                let r = node.lo("del", pod, true);
                assert_eq!(r.code, 0, "{}: lo DEL: {} {}", pod.name, r.stdout, r.stderr);
            });
            s.spawn(move || {
                start.wait();
                let r = node.eth0("del", pod, true);
                assert_eq!(
                    r.code, 0,
                    "{}: eth0 DEL: {} {}",
                    pod.name, r.stdout, r.stderr
                );
            });
        }
    });
    // containerd removes the netns; StopPodSandbox again and RemovePodSandbox DEL twice
    // more, with CNI_NETNS="" and, the cache being gone, no prevResult.
    for pod in &mut pods {
        drop(pod.ns.take());
        assert!(!node.cache_file("cni-loopback", pod, "lo").exists());
        assert!(!node.cache_file(&node.network, pod, "eth0").exists());
    }
    let start = Barrier::new(2 * PODS);
    std::thread::scope(|s| {
        for pod in &pods {
            let (start, node) = (&start, &node);
            s.spawn(move || {
                start.wait();
                for _ in 0..2 {
                    let r = node.lo("del", pod, false);
                    assert_eq!(
                        r.code, 0,
                        "{}: lo DEL without netns: {}",
                        pod.name, r.stdout
                    );
                }
            });
            s.spawn(move || {
                start.wait();
                for _ in 0..2 {
                    let r = node.eth0("del", pod, false);
                    assert_eq!(
                        r.code, 0,
                        "{}: eth0 DEL without netns: {}",
                        pod.name, r.stdout
                    );
                }
            });
        }
    });
    node.assert_empty(&pods);

    // The shared files: every operation counted once, every log line whole.
    let metrics = node.metrics();
    let n = PODS as u64;
    assert_eq!(op_count(&metrics, "loopback", "ADD"), n);
    assert_eq!(op_count(&metrics, "loopback", "DEL"), 3 * n);
    for plugin in [
        "bridge",
        "host-local",
        "portmap",
        "firewall",
        "tuning",
        "bandwidth",
    ] {
        assert_eq!(op_count(&metrics, plugin, "ADD"), n, "{plugin}");
        assert_eq!(op_count(&metrics, plugin, "DEL"), 3 * n, "{plugin}");
    }
    let pending: Vec<_> = std::fs::read_dir(node.tmp.path().join("textfile/cni.prom.pending"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(pending.is_empty(), "operations never merged: {pending:?}");
    let log = std::fs::read_to_string(node.log()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("ts=") && l.contains(" plugin=")),
        "an interleaved line in the log"
    );
    let lo_lines = lines
        .iter()
        .filter(|l| l.contains("plugin=loopback") && l.contains("result=ok"))
        .count();
    assert_eq!(
        lo_lines as u64,
        4 * n,
        "loopback: ADD and three DELs per pod"
    );
}

/// Holds every lock the pod chain takes (host-local's network lock, firewall's host-wide
/// lock, the shared metrics file's lock) while the chain's ADD runs: it is stuck behind
/// them. Meanwhile loopback's ADDs and DELs of the same pod must all finish, each well
/// within a second (a wait on any of those locks lasts a second at least), and its metrics
/// must be left for the holder, not dropped.
#[test]
fn loopback_never_waits_for_the_pod_chain() {
    if !have_root() {
        return;
    }
    let node = Node::new(60);
    let pod = Pod::new(0);
    // Take the locks as the chain's plugins would hold them.
    let net_dir = node.tmp.path().join("ipam").join(&node.network);
    std::fs::create_dir_all(&net_dir).unwrap();
    std::fs::create_dir_all(node.metrics().parent().unwrap()).unwrap();
    std::fs::create_dir_all("/run/cni-rs").unwrap();
    let hold = |path: &Path| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap()
    };
    let mut metrics_lock = node.metrics().into_os_string();
    metrics_lock.push(".lock");
    let held = vec![
        hold(&net_dir.join("lock")),
        hold(Path::new("/run/cni-rs/firewall.lock")),
        hold(Path::new(&metrics_lock)),
    ];
    std::thread::scope(|s| {
        let chain = s.spawn(|| node.eth0("add", &pod, true));
        // Wait until the chain's host-local is blocked on its network's lock (the kernel
        // lists a blocked flock waiter with "->" in /proc/locks).
        let ino =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(net_dir.join("lock")).unwrap());
        let waiting = || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !waiting() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(waiting(), "the chain's ADD never reached host-local's lock");
        let timed = |what: &str, r: &dyn Fn() -> Run| {
            let t = Instant::now();
            let run = r();
            let took = t.elapsed();
            assert_eq!(
                run.code, 0,
                "loopback {what}: {} {}",
                run.stdout, run.stderr
            );
            assert!(
                took < Duration::from_millis(900),
                "loopback {what} took {took:?} while the chain's locks were held"
            );
            eprintln!("loopback {what} while the chain is stuck: {took:?}");
        };
        timed("ADD", &|| node.lo("add", &pod, true));
        assert_lo_ready(&pod);
        timed("DEL", &|| node.lo("del", &pod, true));
        timed("DEL without netns", &|| node.lo("del", &pod, false));
        timed("ADD again", &|| node.lo("add", &pod, true));
        assert!(
            !chain.is_finished(),
            "the chain's ADD did not wait for the locks"
        );
        // Loopback's operations wait in the pending directory for the metrics' holder.
        let pending = std::fs::read_dir(node.tmp.path().join("textfile/cni.prom.pending"))
            .unwrap()
            .count();
        assert!(
            pending >= 4,
            "loopback's metrics were dropped ({pending} pending)"
        );
        drop(held);
        let r = chain.join().unwrap();
        assert_eq!(
            r.code, 0,
            "the chain's ADD after the locks: {} {}",
            r.stdout, r.stderr
        );
    });
    assert_lo_ready(&pod);
    let r = node.eth0("check", &pod, true);
    assert_eq!(r.code, 0, "{}", r.stdout);
    node.lo("del", &pod, true).ok();
    node.eth0("del", &pod, true).ok();
    // Every operation got counted once the holder was gone.
    assert_eq!(op_count(&node.metrics(), "loopback", "ADD"), 2);
    assert_eq!(op_count(&node.metrics(), "loopback", "DEL"), 3);
    assert_eq!(op_count(&node.metrics(), "host-local", "ADD"), 1);
    node.assert_empty(&[pod]);
}
