//! Shared by the CRI test and the CRI benchmark: a containerd 1.6 of the test's own (private
//! root, state, socket and configuration) running inside a network namespace the test made,
//! its CNI directory pointing at this project's plugins or the reference ones, a kubelet's
//! CRI calls, and the checks on what the pods got and what they left.
//!
//! containerd 1.6 puts the pods' network namespaces under /var/run/netns and libcni's cache
//! under /var/lib/cni, paths it cannot be told to move. So it runs in a mount namespace of its
//! own (`unshare --mount`) with a fresh tmpfs on each: the plugins see the paths a real node
//! has, parallel tests never see each other's files, and whatever a failed test leaves there
//! vanishes with containerd and its shims. The test reads them through
//! `/proc/<containerd>/root`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cri;
pub mod image;

use cri::{Cri, api};
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use testkit::TestNs;

/// Where Debian's containernetworking-plugins (the reference, 1.1.1) install their binaries.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";
/// Where containerd 1.6 mounts the pods' network namespaces (in its mount namespace).
pub const NETNS_DIR: &str = "/var/run/netns";
/// Run by `unshare --mount` before containerd: a private tmpfs on the directories containerd
/// shares with the machine, then containerd itself (same process).
const PRIVATE_MOUNTS: &str = "set -e
for d in /var/run/netns /var/lib/cni; do mkdir -p \"$d\"; mount -t tmpfs -o mode=0755 cni-cri \"$d\"; done
exec \"$@\"";
/// The name of containerd's built-in loopback network (its libcni cache key).
pub const LOOPBACK_NET: &str = "cni-loopback";
/// The plugin types the test's conflist and containerd's loopback network use.
pub const PLUGINS: &[&str] = &[
    "bridge",
    "host-local",
    "portmap",
    "firewall",
    "tuning",
    "bandwidth",
    "loopback",
];
/// The image the test writes and imports: the sandbox (pause) image and the container image.
pub const IMAGE: &str = "localhost/cni-rs/busybox:cri-test";
/// The pods' subnet; every node has its own host namespace, so nodes can share it.
pub const SUBNET: &str = "10.123.7.0/24";
pub const GATEWAY: &str = "10.123.7.1";
/// The port the pods' httpd listens on.
pub const HTTP_PORT: u16 = 8080;
/// A PATH for containerd that finds its shim, runc and (for the reference plugins) iptables.
const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The programs the CRI tests run.
pub struct Tools {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub busybox: PathBuf,
}

fn find_program(name: &str) -> Option<PathBuf> {
    DAEMON_PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The tools when these tests can run here. Without root they are skipped (as every test of
/// the workspace is). Without containerd, its runc shim, runc, ctr, a static busybox or the
/// reference plugins they fail under CI (`CI=true`) and are skipped with a message elsewhere;
/// `scripts/install-deps.sh --interop` installs them all.
pub fn ready() -> Option<Tools> {
    if !testkit::have_root() {
        return None;
    }
    let mut missing = Vec::new();
    let mut need = |name: &str| {
        let p = find_program(name);
        if p.is_none() {
            missing.push(name.to_string());
        }
        p
    };
    let containerd = need("containerd");
    let ctr = need("ctr");
    need("unshare");
    need("containerd-shim-runc-v2");
    need("runc");
    let busybox = need("busybox");
    if let Some(b) = &busybox {
        if !image::is_static_elf(b) {
            missing.push(format!("a static busybox ({} is dynamic)", b.display()));
        }
    }
    for p in PLUGINS {
        if !Path::new(REFERENCE_DIR).join(p).is_file() {
            missing.push(format!("{REFERENCE_DIR}/{p}"));
        }
    }
    if missing.is_empty() {
        return Some(Tools {
            containerd: containerd?,
            ctr: ctr?,
            busybox: busybox?,
        });
    }
    let why = format!("missing: {}", missing.join(", "));
    testkit::cannot_run(&why);
    None
}

/// Which plugin binaries containerd's CNI directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Reference,
}

impl Side {
    /// The directory of this side's binaries, absolute (the node's CNI directory links to
    /// it).
    pub fn dir(self) -> PathBuf {
        let dir = match self {
            Side::Ours => testkit::bin_dir(),
            Side::Reference => PathBuf::from(REFERENCE_DIR),
        };
        std::fs::canonicalize(&dir).unwrap_or(dir)
    }
}

/// Runs `f` on a thread inside the network namespace at `path` (sockets it opens belong to
/// that namespace, programs it starts run in it).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// `ip -j ARGS` inside the namespace at `path`, parsed.
pub fn ip_json_in(path: &Path, args: &[&str]) -> Value {
    let out = in_netns(path, || {
        Command::new("ip").arg("-j").args(args).output().unwrap()
    });
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Array(vec![])
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Polls `f` until it returns Ok or `limit` has passed; returns the last result.
pub fn retry<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// An HTTP/1.0 GET of `/` at `addr` from the namespace `ns`; returns the body.
pub fn http_get(ns: &TestNs, addr: SocketAddr) -> Result<String, String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.to_string())
            }
            _ => Err(format!("{addr} answered {reply:?}")),
        }
    })
}

/// A UDP exchange: a datagram sent from `client` to `connect` must reach `server` (a socket
/// already bound) and the server's answer must come back. Bounded; retried a few times.
pub fn udp_exchange(
    server: &UdpSocket,
    client: &TestNs,
    connect: SocketAddr,
) -> Result<(), String> {
    let sock = client
        .run(|| UdpSocket::bind("127.0.0.1:0"))
        .map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok();
    let mut last = String::new();
    for _ in 0..8 {
        sock.send_to(b"ping", connect)
            .map_err(|e| format!("send to {connect}: {e}"))?;
        let mut buf = [0u8; 16];
        let (n, peer) = match server.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                last = format!("server got nothing: {e}");
                continue;
            }
        };
        if &buf[..n] != b"ping" {
            return Err(format!("server got {:?}", &buf[..n]));
        }
        server
            .send_to(b"pong", peer)
            .map_err(|e| format!("server reply to {peer}: {e}"))?;
        match sock.recv_from(&mut buf) {
            Ok((4, _)) if &buf[..4] == b"pong" => return Ok(()),
            Ok((n, from)) => return Err(format!("client got {:?} from {from}", &buf[..n])),
            Err(e) => last = format!("client got no reply: {e}"),
        }
    }
    Err(last)
}

/// The conflist of a node: the kubelet-style chain with every plugin of this project, IPAM
/// and tuning state in the node's directory.
pub fn conflist(name: &str, bridge: &str, dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("ipam"),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"},
            {
                "type": "tuning",
                "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
                "dataDir": dir.join("tuning"),
            },
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    })
}

/// The snapshotter containerd can use under `dir`: overlayfs when an overlay mount works
/// there, else native (a full copy per container, slower but works on any filesystem).
fn snapshotter_for(dir: &Path) -> &'static str {
    let base = dir.join("overlay-probe");
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| base.join(d));
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let ok = nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .is_ok();
    if ok {
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&base);
    if ok { "overlayfs" } else { "native" }
}

/// containerd's configuration: everything private to `dir` except what containerd 1.6 cannot
/// move (the pods' netns under /var/run/netns and libcni's cache), the CRI plugin with `bin`
/// as its CNI directory, runc with cgroupfs.
fn containerd_config(dir: &Path, bin: &Path, snapshotter: &str) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0
# Snapshotters and services that need what a test machine lacks (btrfs, zfs, devmapper,
# aufs) or that would reach outside (tracing exporters).
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: never lower a process's oom_score_adj below ours.
  restrict_oom_score_adj = true
  enable_selinux = false
  # The test's containers need no profile, and a host with AppArmor but no apparmor_parser
  # would refuse them.
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#,
        bin = bin.display()
    )
}

/// A pod as a kubelet describes it to the runtime.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub name: String,
    /// (protocol, container port, host port)
    pub ports: Vec<(api::Protocol, u16, u16)>,
    pub annotations: Vec<(String, String)>,
}

/// A pod sandbox the runtime made.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub config: api::PodSandboxConfig,
    /// The pod's network namespace (/var/run/netns/cni-<uuid> in containerd's mount
    /// namespace), as the test reaches it.
    pub netns: PathBuf,
    /// The address the runtime reports for the pod.
    pub ip: IpAddr,
    /// The runtime's verbose sandbox information (its CNI result, its OCI spec).
    pub info: Value,
}

/// The containerd process and what has to go when it goes; also its own guard while
/// [`Node::start`] is halfway.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Processes: stops containerd (TERM, then KILL), then kills what a failed test may have
    /// left running (runc containers of this node, its shims).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // runc's state of this node's containers lives under its own root; `delete --force`
        // kills a container that still runs and removes its cgroups.
        let runc_root = self.dir.join("runc").join("k8s.io");
        if let Ok(entries) = std::fs::read_dir(&runc_root) {
            for e in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // The last processes in containerd's mount namespace: with them go its mounts (the
        // pods' netns, rootfs overlays, the private tmpfs).
        for pid in shims_of(&self.socket) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shim processes serving the containerd at `socket` (their command line names it).
fn shims_of(socket: &Path) -> Vec<nix::unistd::Pid> {
    let needle = format!("\0-address\0{}\0", socket.display());
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .map(nix::unistd::Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// A Kubernetes node in miniature: containerd in a host network namespace of its own, its
/// CNI directory a directory of links to one implementation of the plugins, one network
/// (unique name). Dropping it removes every pod it still has, then containerd.
pub struct Node {
    pub cri: Cri,
    daemon: Daemon,
    pub host: TestNs,
    pub network: String,
    pub bridge: String,
    pub cgroup_parent: String,
    pub snapshotter: &'static str,
    side: Mutex<Side>,
    pub dir: TempDir,
}

impl Node {
    /// Writes the image, the conflist and the configuration, starts containerd inside a new
    /// host namespace, imports the image and waits until the runtime reports its network
    /// ready.
    pub fn start(tools: &Tools, side: Side) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("cni-cri-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["net.d", "bin", "ipam", "tuning", "logs", "runc"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let network = testkit::unique_name("cri-rs");
        let bridge = testkit::unique_name("cri");
        for p in PLUGINS {
            std::os::unix::fs::symlink(side.dir().join(p), d.join("bin").join(p)).unwrap();
            assert!(
                d.join("bin").join(p).is_file(),
                "{} is missing",
                side.dir().join(p).display()
            );
        }
        std::fs::write(
            d.join("net.d").join(format!("10-{network}.conflist")),
            serde_json::to_string_pretty(&conflist(&network, &bridge, d)).unwrap(),
        )
        .unwrap();
        let archive = d.join("image.tar");
        image::write_archive(&tools.busybox, IMAGE, &archive);
        let snapshotter = snapshotter_for(d);
        let config = d.join("config.toml");
        std::fs::write(&config, containerd_config(d, &d.join("bin"), snapshotter)).unwrap();
        let socket = d.join("containerd.sock");
        let host = TestNs::new();
        let log = File::create(d.join("containerd.log")).unwrap();
        let child = host
            .run(|| {
                Command::new("unshare")
                    .args(["--mount", "--propagation", "private", "--"])
                    .args(["/bin/sh", "-c", PRIVATE_MOUNTS, "sh"])
                    .arg(&tools.containerd)
                    .arg("--config")
                    .arg(&config)
                    .env_clear()
                    .env("PATH", DAEMON_PATH)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
            })
            .unwrap_or_else(|e| panic!("start {}: {e}", tools.containerd.display()));
        let mut daemon = Daemon {
            child: Some(child),
            dir: d.to_path_buf(),
            socket: socket.clone(),
        };
        let log_tail = || {
            let log = std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        retry(Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = daemon.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited ({st}):\n{}", log_tail());
            }
            if socket.exists() {
                Ok(())
            } else {
                Err("no socket".to_string())
            }
        })
        .unwrap_or_else(|e| panic!("containerd: {e}:\n{}", log_tail()));
        let cri = Cri::connect(&socket).unwrap_or_else(|e| panic!("{e}:\n{}", log_tail()));
        let import = Command::new(&tools.ctr)
            .arg("--address")
            .arg(&socket)
            .args(["--namespace", "k8s.io", "images", "import", "--snapshotter"])
            .arg(snapshotter)
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "ctr images import: {}{}",
            String::from_utf8_lossy(&import.stdout),
            String::from_utf8_lossy(&import.stderr)
        );
        retry(Duration::from_secs(30), || {
            match cri.condition("NetworkReady") {
                Ok((true, _)) => Ok(()),
                Ok((false, why)) => Err(why),
                Err(e) => Err(e.to_string()),
            }
        })
        .unwrap_or_else(|e| panic!("the runtime's network is not ready: {e}:\n{}", log_tail()));
        let cgroup_parent = format!("/{}", testkit::unique_name("cni-cri-"));
        Node {
            cri,
            daemon,
            host,
            network,
            bridge,
            cgroup_parent,
            snapshotter,
            side: Mutex::new(side),
            dir,
        }
    }

    /// The implementation the CNI directory holds now.
    pub fn side(&self) -> Side {
        *self.side.lock().unwrap()
    }

    /// Points every plugin link of the CNI directory at the other implementation (each link
    /// replaced by a rename, so containerd never finds one missing). Only between pods: the
    /// two implementations keep their rules in different places.
    pub fn switch_to(&self, side: Side) {
        let bin = self.dir.path().join("bin");
        for p in PLUGINS {
            let staged = bin.join(format!(".{p}.new"));
            std::os::unix::fs::symlink(side.dir().join(p), &staged).unwrap();
            std::fs::rename(&staged, bin.join(p)).unwrap();
        }
        *self.side.lock().unwrap() = side;
    }

    /// `path` as containerd sees it: inside its mount namespace, through its /proc root.
    pub fn seen_by_daemon(&self, path: &str) -> PathBuf {
        let pid = self.daemon.child.as_ref().map_or(0, Child::id);
        // /var/run is a link to /run, and an absolute link found under /proc/<pid>/root
        // resolves against the reader's root: follow it here.
        let path = match path.strip_prefix("/var/run/") {
            Some(rest) => format!("/run/{rest}"),
            None => path.to_string(),
        };
        PathBuf::from(format!("/proc/{pid}/root{path}"))
    }

    /// The pods' network namespaces that exist now.
    pub fn netns_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.seen_by_daemon(NETNS_DIR))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The last lines of containerd's log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The sandbox configuration a kubelet sends for `spec` (namespace `default`, its own
    /// cgroup under the node's cgroup parent, a log directory).
    pub fn sandbox_config(&self, spec: &PodSpec) -> api::PodSandboxConfig {
        let uid = testkit::unique_name("uid-");
        let logs = self.dir.path().join("logs").join(&uid);
        std::fs::create_dir_all(&logs).unwrap();
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: spec.name.clone(),
            log_directory: logs.display().to_string(),
            port_mappings: spec
                .ports
                .iter()
                .map(|(proto, container, host)| api::PortMapping {
                    protocol: *proto as i32,
                    container_port: i32::from(*container),
                    host_port: i32::from(*host),
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([("app".to_string(), spec.name.clone())]),
            annotations: spec.annotations.iter().cloned().collect(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{uid}", self.cgroup_parent),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: api::NamespaceMode::Pod as i32,
                        pid: api::NamespaceMode::Container as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox, then PodSandboxStatus: the pod with its address and netns.
    pub fn run_pod(&self, spec: &PodSpec) -> Pod {
        let config = self.sandbox_config(spec);
        let id = self
            .cri
            .run_pod_sandbox(&config)
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", spec.name));
        let st = self
            .cri
            .pod_sandbox_status(&id)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {}: {e}", spec.name));
        let info: Value = serde_json::from_str(st.info.get("info").expect("verbose info")).unwrap();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(|p| self.seen_by_daemon(p))
            .unwrap_or_else(|| panic!("no network namespace in {info}"));
        assert!(
            netns.starts_with(self.seen_by_daemon(NETNS_DIR)),
            "{}",
            netns.display()
        );
        let status = st.status.expect("sandbox status");
        assert_eq!(
            status.state,
            api::PodSandboxState::SandboxReady as i32,
            "{}",
            spec.name
        );
        let ip = status
            .network
            .map(|n| n.ip)
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("{}: pod IP: {e}", spec.name));
        Pod {
            id,
            config,
            netns,
            ip,
            info,
        }
    }

    /// CreateContainer + StartContainer: busybox httpd on [`HTTP_PORT`], serving a page
    /// that holds the pod's name.
    pub fn start_httpd(&self, pod: &Pod) -> String {
        let name = pod.config.metadata.as_ref().unwrap().name.clone();
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "httpd".into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into()],
            args: vec![format!(
                "mkdir -p /tmp/www && echo \"$POD_NAME\" > /tmp/www/index.html && exec httpd -f -p {HTTP_PORT} -h /tmp/www"
            )],
            envs: vec![api::KeyValue {
                key: "POD_NAME".into(),
                value: name.clone(),
            }],
            log_path: "httpd.log".into(),
            ..Default::default()
        };
        let id = self
            .cri
            .create_container(&pod.id, &config, &pod.config)
            .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}"));
        self.cri
            .start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}"));
        id
    }

    /// ExecSync; Ok(stdout) when the command exits 0, else Err with its output.
    pub fn exec(&self, container: &str, cmd: &[&str]) -> Result<String, String> {
        let r = self
            .cri
            .exec_sync(container, cmd, 10)
            .map_err(|e| format!("ExecSync {cmd:?}: {e}"))?;
        let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
        if r.exit_code == 0 {
            Ok(stdout)
        } else {
            Err(format!(
                "{cmd:?} exited {}: {stdout}{}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            ))
        }
    }

    /// StopPodSandbox + RemovePodSandbox of a pod the test no longer tracks by hand.
    fn remove_pod_quietly(&self, id: &str) {
        let _ = self.cri.stop_pod_sandbox(id);
        let _ = self.cri.remove_pod_sandbox(id);
    }

    /// host-local's directory of this node's network.
    pub fn alloc_dir(&self) -> PathBuf {
        self.dir.path().join("ipam").join(&self.network)
    }

    /// host-local's allocations: address → (container ID, ifname).
    pub fn allocations(&self) -> HashMap<IpAddr, String> {
        std::fs::read_dir(self.alloc_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let ip = e.file_name().to_str()?.parse().ok()?;
                        Some((ip, std::fs::read_to_string(e.path()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The libcni cache files of a pod (its `eth0` on this network, its `lo` on
    /// containerd's loopback network).
    pub fn cache_files(&self, pod_id: &str) -> [PathBuf; 2] {
        let dir = self.seen_by_daemon(testkit::LIBCNI_RESULTS);
        [
            dir.join(format!("{}-{pod_id}-eth0", self.network)),
            dir.join(format!("{LOOPBACK_NET}-{pod_id}-lo")),
        ]
    }

    /// The host namespace's `nft list ruleset` and `iptables-save` + `ip6tables-save`, as
    /// text.
    pub fn host_rules(&self) -> String {
        let mut all = String::new();
        for (prog, args) in [
            ("nft", &["list", "ruleset"][..]),
            ("iptables-save", &[][..]),
            ("ip6tables-save", &[][..]),
        ] {
            let out = self.host.exec(prog, args);
            assert!(out.status.success(), "{prog}: {out:?}");
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        all
    }

    /// The names of the links of kind `kind` (veth, ifb, bridge) in the host namespace.
    pub fn host_links(&self, kind: &str) -> Vec<String> {
        self.host
            .ip_json(&["-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["linkinfo"]["info_kind"] == kind)
            .map(|l| l["ifname"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Everything of `pods` is gone: the runtime lists none of them, no netns, no veth or
    /// ifb in the host namespace, no allocation, no nftables or iptables rule or element
    /// naming a pod ID or address, no libcni cache file.
    pub fn assert_nothing_left(&self, pods: &[&Pod]) {
        let listed: Vec<String> = self
            .cri
            .list_pod_sandbox()
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        for p in pods {
            assert!(!listed.contains(&p.id), "the runtime still lists {}", p.id);
            assert!(!p.netns.exists(), "{} is left", p.netns.display());
            for f in self.cache_files(&p.id) {
                assert!(!f.exists(), "libcni cache {} is left", f.display());
            }
        }
        let netns = self.netns_files();
        assert!(netns.is_empty(), "network namespaces left: {netns:?}");
        for kind in ["veth", "ifb"] {
            let left = self.host_links(kind);
            assert!(left.is_empty(), "{kind} links left: {left:?}");
        }
        let allocs = self.allocations();
        assert!(allocs.is_empty(), "allocations left: {allocs:?}");
        let rules = self.host_rules();
        for p in pods {
            assert!(!rules.contains(&p.id), "rules keep {}:\n{rules}", p.id);
            let ip = p.ip.to_string();
            let mentions = rules
                .match_indices(&ip)
                .filter(|(i, _)| {
                    let after = rules[i + ip.len()..].chars().next();
                    !after.is_some_and(|c| c.is_ascii_digit())
                })
                .count();
            assert_eq!(mentions, 0, "rules keep {ip}:\n{rules}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("containerd's log (last lines):\n{}", self.log_tail(40));
        }
        // Whatever the test did not remove: through the runtime first (it tears down the
        // network with the plugins), then by force.
        if let Ok(pods) = self.cri.list_pod_sandbox() {
            for p in pods {
                self.remove_pod_quietly(&p.id);
            }
        }
        self.daemon.stop();
        // The cgroups runc made under the node's parent, deepest first (cgroup directories
        // go with rmdir only).
        for mnt in cgroup_mounts() {
            let top = mnt.join(self.cgroup_parent.trim_start_matches('/'));
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup ") || t.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}
