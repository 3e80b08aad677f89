//! Test helpers: network namespaces made per test and removed when dropped (also when a test
//! fails), the built binaries, and running them inside a namespace.
//!
//! A [`TestNs`] is held by a parked thread that unshared its network namespace; its path is
//! `/proc/<pid>/task/<tid>/ns/net`. Nothing is mounted, so nothing outlives the test process:
//! even a test killed halfway leaves no namespace behind, and with it go its links, addresses,
//! routes, qdiscs and nftables tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sched::{CloneFlags, setns, unshare};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// True when the tests that need root can run; otherwise they print why and return early.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root (network namespaces)");
        false
    }
}

/// A name no other test (or test process) uses; `prefix` + 8 characters, so keep the prefix
/// at most 7 characters where the name becomes a link name (15 bytes at most).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = (pid.wrapping_mul(2_654_435_761) ^ nanos.rotate_left(13))
        .wrapping_add(n.wrapping_mul(40_503));
    format!("{prefix}{:04x}{:04x}", mix & 0xffff, n & 0xffff)
}

/// A network namespace that lives as long as this value.
pub struct TestNs {
    path: String,
    tid: i32,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestNs {
    /// A fresh network namespace with `lo` up.
    pub fn new() -> TestNs {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let res = unshare(CloneFlags::CLONE_NEWNET).map(|_| nix::unistd::gettid().as_raw());
            let ok = res.is_ok();
            ready_tx.send(res).unwrap();
            if ok {
                // Parked until the TestNs is dropped (or the sender is gone).
                let _ = stop_rx.recv();
            }
        });
        let tid = ready_rx.recv().unwrap().expect("unshare(CLONE_NEWNET)");
        let ns = TestNs {
            path: format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
            tid,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The path to pass as CNI_NETNS.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The id of the thread holding the namespace: what `ip link ... netns` takes.
    pub fn tid(&self) -> String {
        self.tid.to_string()
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens belong to it, processes it
    /// spawns start in it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(&self.path).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Runs a program inside this namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.run(|| {
            Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("running {program}: {e}"))
        })
    }

    /// `ip ARGS` inside this namespace; panics if it fails. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = self.exec("ip", args);
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS` parsed (empty array when ip printed nothing).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).unwrap()
        }
    }

    /// The `nft -j list ruleset` of this namespace.
    pub fn nft_ruleset(&self) -> Value {
        let out = self.exec("nft", &["-j", "list", "ruleset"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// True when a link of that name exists here.
    pub fn has_link(&self, name: &str) -> bool {
        self.exec("ip", &["link", "show", "dev", name])
            .status
            .success()
    }

    /// Reads a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path).unwrap().trim().to_string())
    }
}

impl Default for TestNs {
    fn default() -> Self {
        TestNs::new()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            // join returns when the thread has cleared its tid, a moment before the kernel
            // releases the task (and with it the namespace, unless something else holds it):
            // wait for /proc to say so, so that a test finds the namespace gone after drop.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::path::Path::new(&self.path).exists() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// A test that needs a tool this machine lacks: under CI (`CI=true` or `1`) that is a
/// failure, since CI installs everything (`scripts/install-deps.sh --interop`); elsewhere
/// the test prints why and is skipped. Call it, then return.
pub fn cannot_run(why: &str) {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "{why}: this test must run in CI (scripts/install-deps.sh --interop installs what it needs)"
    );
    eprintln!("skipping: {why} (scripts/install-deps.sh --interop installs it)");
}

/// libcni's `cnitool`, if installed; [`cannot_run`] otherwise.
pub fn cnitool() -> Option<PathBuf> {
    let found = ["/usr/local/bin/cnitool", "/usr/bin/cnitool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        cannot_run("libcni's cnitool is not installed");
    }
    found
}

/// The addresses of a result's `ips`, without their prefix length.
pub fn result_addresses(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {result}"))
        .iter()
        .map(|ip| {
            let a = ip["address"].as_str().unwrap();
            a.split('/').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// libcni's result cache, where cnitool always writes.
pub const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

/// Removes a network's entries from libcni's cache when dropped, whatever happens to the test.
pub struct LibcniCache(pub String);

impl LibcniCache {
    /// The cache files of network `net`.
    pub fn files(net: &str) -> Vec<PathBuf> {
        let prefix = format!("{net}-");
        std::fs::read_dir(LIBCNI_RESULTS)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for LibcniCache {
    fn drop(&mut self) {
        for f in LibcniCache::files(&self.0) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The directory holding the workspace's built binaries (`CNI_TEST_BIN_DIR`, else the
/// profile directory this test binary was built into).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CNI_TEST_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

/// The path of a built binary; panics with the fix if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)",
        p.display()
    );
    p
}

/// What one plugin (or runner) invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as JSON (Null when empty).
    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.stdout)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
        }
    }

    /// Panics (with everything printed) unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }

    /// The CNI error code of a failed run (panics if it succeeded or printed no error object).
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got: {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {:?}", self.stdout))
    }
}

/// Runs `program` inside `ns` with `env` (added to a clean environment with PATH) and `stdin`.
pub fn run_in(ns: &TestNs, program: &std::path::Path, env: &[(&str, &str)], stdin: &str) -> Run {
    run_args_in(ns, program, &[], env, stdin)
}

/// [`run_in`] with command-line arguments.
pub fn run_args_in(
    ns: &TestNs,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> Run {
    ns.run(|| run(program, args, env, stdin))
}

/// Runs `program` in the test's own namespace, with `env` added to a clean environment that
/// keeps PATH, and `stdin`.
pub fn run(program: &std::path::Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).ok();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a CNI plugin binary of this workspace inside `host` for one verb.
#[allow(clippy::too_many_arguments)]
pub fn cni(
    host: &TestNs,
    plugin: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    ifname: &str,
    conf: &Value,
    extra_env: &[(&str, &str)],
) -> Run {
    let path = bin_dir();
    let path = path.to_str().unwrap();
    let mut env = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", path),
    ];
    env.extend_from_slice(extra_env);
    run_in(host, &bin(plugin), &env, &conf.to_string())
}

/// Proves a TCP connection from `client` to `addr` (served inside `server`) carries data both
/// ways. Bounded: gives up after a few seconds.
pub fn tcp_exchange(server: &TestNs, client: &TestNs, addr: SocketAddr) -> Result<(), String> {
    tcp_peer_seen(server, client, addr).map(drop)
}

/// [`tcp_exchange`], returning the client address the server saw (to observe NAT).
pub fn tcp_peer_seen(
    server: &TestNs,
    client: &TestNs,
    addr: SocketAddr,
) -> Result<SocketAddr, String> {
    tcp_via(server, addr, client, addr)
}

/// A TCP exchange where the client connects to `connect` (say, a published port) and the
/// server listens on `listen`; returns the client address the server saw. Bounded: the
/// server gives up a few seconds after nobody came, and a port the previous exchange still
/// holds is retried for a moment.
pub fn tcp_via(
    server: &TestNs,
    bind: SocketAddr,
    client: &TestNs,
    connect: SocketAddr,
) -> Result<SocketAddr, String> {
    // The previous exchange on this port may still hold it for a moment (the server closed
    // first, so its side lingers): retry a busy bind briefly.
    let listener = server
        .run(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            loop {
                match TcpListener::bind(bind) {
                    Err(e)
                        if e.kind() == std::io::ErrorKind::AddrInUse
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => return other,
                }
            }
        })
        .map_err(|e| format!("bind {bind}: {e}"))?;
    listener.set_nonblocking(true).unwrap();
    let client_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let srv = s.spawn(|| -> Result<SocketAddr, String> {
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            let (mut conn, peer) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if std::time::Instant::now() > deadline
                            || client_done.load(Ordering::SeqCst)
                        {
                            return Err("server: nobody connected".into());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf)
                .map_err(|e| format!("server read: {e}"))?;
            conn.write_all(b"pong")
                .map_err(|e| format!("server write: {e}"))?;
            Ok(peer)
        });
        let res = client.run(|| -> Result<(), String> {
            let mut c = TcpStream::connect_timeout(&connect, Duration::from_secs(3))
                .map_err(|e| format!("connect {connect}: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(3))).ok();
            c.write_all(b"ping")
                .map_err(|e| format!("client write: {e}"))?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf)
                .map_err(|e| format!("client read: {e}"))?;
            if &buf != b"pong" {
                return Err(format!("unexpected reply {buf:?}"));
            }
            Ok(())
        });
        client_done.store(true, Ordering::SeqCst);
        let srv_res = srv
            .join()
            .unwrap_or_else(|_| Err("server thread panicked".into()));
        res.and(srv_res)
    })
}

/// Writes `batch` into one fresh namespace through `nft` and into another over netlink
/// (`common::nft::apply_to_kernel_via`), and asserts that the kernel holds the same in both:
/// every set and map (user data included), every chain, every rule's expressions, of each
/// of `tables`, and the same `nft -j list ruleset`.
pub fn assert_netlink_writes_what_nft_writes(
    batch: &common::nft::Batch,
    tables: &[(common::nft::Family, &str)],
) {
    use common::nft::{Via, apply_to_kernel_via, netlink::describe_table_in_kernel};
    let by_nft = TestNs::new();
    let by_netlink = TestNs::new();
    assert!(by_nft.run(|| apply_to_kernel_via(batch, Via::Nft)).unwrap());
    assert!(
        by_netlink
            .run(|| apply_to_kernel_via(batch, Via::Netlink))
            .unwrap(),
        "the batch could not be written over netlink"
    );
    for (family, table) in tables {
        let a = by_nft
            .run(|| describe_table_in_kernel(*family, table))
            .unwrap();
        let b = by_netlink
            .run(|| describe_table_in_kernel(*family, table))
            .unwrap();
        assert!(a.contains("rule "), "{family} {table}: no rules?\n{a}");
        assert_eq!(
            a, b,
            "{family} {table}: nft (left) and netlink (right) differ"
        );
    }
    let listing = |ns: &TestNs| {
        let out = ns.exec("nft", &["-j", "list", "ruleset"]);
        assert!(out.status.success(), "{out:?}");
        // Handles are numbered per writer; drop them.
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(items) = v.get_mut("nftables").and_then(|n| n.as_array_mut()) {
            for item in items.iter_mut() {
                if let Some(obj) = item.as_object_mut().and_then(|o| o.values_mut().next()) {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("handle");
                    }
                }
            }
        }
        v
    };
    assert_eq!(listing(&by_nft), listing(&by_netlink));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate_and_vanish() {
        if !have_root() {
            return;
        }
        let a = TestNs::new();
        let b = TestNs::new();
        let name = unique_name("tk");
        a.ip(&["link", "add", &name, "type", "bridge"]);
        assert!(a.has_link(&name));
        assert!(!b.has_link(&name));
        let path = a.path().to_string();
        drop(a);
        assert!(!std::path::Path::new(&path).exists());
    }

    #[test]
    fn tcp_over_a_veth_pair() {
        if !have_root() {
            return;
        }
        let a = TestNs::new();
        let b = TestNs::new();
        let (va, vb) = (unique_name("va"), unique_name("vb"));
        a.ip(&[
            "link",
            "add",
            &va,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &b.tid(),
        ]);
        a.ip(&["addr", "add", "192.0.2.1/24", "dev", &va]);
        a.ip(&["link", "set", &va, "up"]);
        b.ip(&["addr", "add", "192.0.2.2/24", "dev", &vb]);
        b.ip(&["link", "set", &vb, "up"]);
        tcp_exchange(&a, &b, "192.0.2.1:8080".parse().unwrap()).unwrap();
        assert!(tcp_exchange(&a, &b, "192.0.2.3:8080".parse().unwrap()).is_err());
    }
}
