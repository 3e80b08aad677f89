//! Every file in `conflists/` is run here, as an admin would run it with `cnirun`: two
//! containers join, exchange TCP over each address family the chain hands out, pass CHECK,
//! and leave nothing behind after DEL. The chain runs inside a host namespace made for the
//! test; only `dataDir` (a file system path) is redirected to a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use testkit::{Run, TestNs, have_root, run_args_in, tcp_exchange, tcp_via};

fn conflist_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conflists");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no conflists in {}", dir.display());
    files
}

/// Points every `ipam.dataDir` (and tuning-style `dataDir`) of the list into `tmp`.
fn redirect_state(list: &mut Value, tmp: &Path) {
    for plugin in list["plugins"].as_array_mut().unwrap() {
        if plugin.get("ipam").is_some_and(|i| i.get("type").is_some()) {
            plugin["ipam"]["dataDir"] = Value::from(tmp.join("ipam").to_str().unwrap());
        }
    }
}

struct Runner<'a> {
    host: &'a TestNs,
    conflist: PathBuf,
    cache: PathBuf,
}

impl Runner<'_> {
    fn run(&self, verb: &str, extra: &[&str]) -> Run {
        let bin_dir = testkit::bin_dir();
        let mut args = vec![
            verb,
            "--conflist",
            self.conflist.to_str().unwrap(),
            "--cache-dir",
            self.cache.to_str().unwrap(),
            "--cni-path",
            bin_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_args_in(self.host, &testkit::bin("cnirun"), &args, &[], "")
    }
}

#[test]
fn every_shipped_conflist_connects_two_containers_and_cleans_up() {
    if !have_root() {
        return;
    }
    for file in conflist_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut list: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        redirect_state(&mut list, tmp.path());
        let conflist = tmp.path().join(file.file_name().unwrap());
        std::fs::write(&conflist, list.to_string()).unwrap();

        let host = TestNs::new();
        let runner = Runner {
            host: &host,
            conflist,
            cache: tmp.path().join("cache"),
        };
        let (c1, c2) = (TestNs::new(), TestNs::new());
        // A chain that publishes ports gets one mapping per container (host 18101/18102 to
        // container port 8080), reached from the host through 127.0.0.1 below.
        let publishes = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["capabilities"]["portMappings"] == true);
        let add = |ns: &TestNs, id: &str| {
            let port = if id == "ctr-one" {
                "18101:8080/tcp"
            } else {
                "18102:8080/tcp"
            };
            let mut args = vec!["--netns", ns.path(), "--container-id", id];
            if publishes {
                args.extend(["--port-mapping", port]);
            }
            let r = runner.run("add", &args);
            assert_eq!(
                r.code,
                0,
                "{}: add {id}: {} {}",
                file.display(),
                r.stdout,
                r.stderr
            );
            r.json()
        };
        let r1 = add(&c1, "ctr-one");
        let r2 = add(&c2, "ctr-two");
        let (a1, a2) = (
            testkit::result_addresses(&r1),
            testkit::result_addresses(&r2),
        );
        assert!(!a1.is_empty(), "{}: no address handed out", file.display());
        for (i, (x, y)) in a1.iter().zip(&a2).enumerate() {
            let port = 7100 + i as u16;
            tcp_exchange(&c1, &c2, SocketAddr::new(*x, port))
                .unwrap_or_else(|e| panic!("{}: {y} -> {x}: {e}", file.display()));
        }
        if publishes {
            tcp_via(
                &c1,
                "0.0.0.0:8080".parse().unwrap(),
                &host,
                "127.0.0.1:18101".parse().unwrap(),
            )
            .unwrap_or_else(|e| panic!("{}: published port: {e}", file.display()));
        }
        for (ns, id) in [(&c1, "ctr-one"), (&c2, "ctr-two")] {
            let port = if id == "ctr-one" {
                "18101:8080/tcp"
            } else {
                "18102:8080/tcp"
            };
            let mut args = vec!["--netns", ns.path(), "--container-id", id];
            if publishes {
                args.extend(["--port-mapping", port]);
            }
            let r = runner.run("check", &args);
            assert_eq!(r.code, 0, "{}: check {id}: {}", file.display(), r.stdout);
            let r = runner.run("del", &["--netns", ns.path(), "--container-id", id]);
            assert_eq!(r.code, 0, "{}: del {id}: {}", file.display(), r.stdout);
        }
        // Nothing of the two attachments is left: no veth, no allocation, no rule, no cache.
        let links = host.ip(&["-o", "link", "show"]);
        assert!(!links.contains("veth"), "{}: {links}", file.display());
        let ruleset = host.nft_ruleset().to_string();
        assert!(
            !ruleset.contains("ctr-one") && !ruleset.contains("ctr-two"),
            "{ruleset}"
        );
        let ipam_dir = tmp.path().join("ipam").join(list["name"].as_str().unwrap());
        let leftover: Vec<String> = std::fs::read_dir(&ipam_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            leftover.is_empty(),
            "{}: allocations left {leftover:?}",
            file.display()
        );
        let cached: Vec<_> = std::fs::read_dir(&runner.cache)
            .map(|d| d.count())
            .into_iter()
            .collect();
        assert!(cached.iter().all(|n| *n == 0), "cache files left");
    }
}

/// libcni itself (its `cnitool`) runs the shipped chain with these binaries: the container
/// gets its address and is reachable. Skipped where cnitool is not installed
/// (`scripts/install-deps.sh --interop` installs it; the test command does).
#[test]
fn libcni_cnitool_runs_the_chain() {
    if !have_root() {
        return;
    }
    let Some(cnitool) = testkit::cnitool() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = conflist_files().into_iter().next().unwrap();
    let mut list: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    redirect_state(&mut list, tmp.path());
    let net = testkit::unique_name("libcni");
    list["name"] = Value::from(net.as_str());
    std::fs::write(tmp.path().join("chain.conflist"), list.to_string()).unwrap();

    // cnitool keeps libcni's cache under /var/lib/cni/results.
    let _cache = testkit::LibcniCache(net.clone());

    let host = TestNs::new();
    let c1 = TestNs::new();
    let bin_dir = testkit::bin_dir();
    let env = [
        ("NETCONFPATH", tmp.path().to_str().unwrap()),
        ("CNI_PATH", bin_dir.to_str().unwrap()),
    ];
    let add = run_args_in(&host, &cnitool, &["add", &net, c1.path()], &env, "");
    assert_eq!(add.code, 0, "cnitool add: {} {}", add.stdout, add.stderr);
    let result = add.json();
    let addr = testkit::result_addresses(&result)[0];
    // The host reaches the container through the bridge gateway.
    tcp_exchange(&c1, &host, SocketAddr::new(addr, 7200)).unwrap();
    let check = run_args_in(&host, &cnitool, &["check", &net, c1.path()], &env, "");
    assert_eq!(
        check.code, 0,
        "cnitool check: {} {}",
        check.stdout, check.stderr
    );
    let del = run_args_in(&host, &cnitool, &["del", &net, c1.path()], &env, "");
    assert_eq!(del.code, 0, "cnitool del: {} {}", del.stdout, del.stderr);
    assert!(!c1.has_link("eth0"));
    assert!(!host.ip(&["-o", "link", "show"]).contains("veth"));
}

/// The multi-tenant pair: two networks on two bridges with `ingressPolicy: same-bridge`.
/// Containers reach each other inside a tenant; a container of one tenant cannot reach the
/// other tenant's, until the firewall's attachments are deleted.
#[test]
fn multi_tenant_networks_are_isolated_from_each_other() {
    if !have_root() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conflists");
    let tmp = tempfile::tempdir().unwrap();
    let host = TestNs::new();
    let runners: Vec<Runner> = ["a", "b"]
        .iter()
        .map(|t| {
            let file = dir.join(format!("multi-tenant-{t}.conflist"));
            let mut list: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            redirect_state(&mut list, tmp.path());
            let conflist = tmp.path().join(file.file_name().unwrap());
            std::fs::write(&conflist, list.to_string()).unwrap();
            Runner {
                host: &host,
                conflist,
                cache: tmp.path().join("cache"),
            }
        })
        .collect();
    let ctrs: Vec<TestNs> = (0..3).map(|_| TestNs::new()).collect();
    // a1 and a2 in tenant a, b1 in tenant b.
    let plan = [(0, "a1", 0), (1, "a2", 0), (2, "b1", 1)];
    let mut addrs = Vec::new();
    for (i, id, tenant) in plan {
        let r = runners[tenant].run("add", &["--netns", ctrs[i].path(), "--container-id", id]);
        assert_eq!(r.code, 0, "add {id}: {} {}", r.stdout, r.stderr);
        addrs.push(testkit::result_addresses(&r.json())[0]);
    }
    tcp_exchange(&ctrs[1], &ctrs[0], SocketAddr::new(addrs[1], 7400))
        .expect("a1 -> a2 inside tenant a");
    assert!(
        tcp_exchange(&ctrs[2], &ctrs[0], SocketAddr::new(addrs[2], 7401)).is_err(),
        "a1 must not reach b1"
    );
    assert!(
        tcp_exchange(&ctrs[0], &ctrs[2], SocketAddr::new(addrs[0], 7402)).is_err(),
        "b1 must not reach a1"
    );
    // The host itself still reaches both tenants.
    tcp_exchange(&ctrs[2], &host, SocketAddr::new(addrs[2], 7403)).unwrap();
    for (i, id, tenant) in plan {
        let r = runners[tenant].run("del", &["--netns", ctrs[i].path(), "--container-id", id]);
        assert_eq!(r.code, 0, "del {id}: {}", r.stdout);
    }
}
