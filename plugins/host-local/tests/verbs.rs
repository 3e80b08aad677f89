//! ADD, DEL, CHECK, GC and STATUS through the built binary, in every result shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_util;

use common_util::*;
use serde_json::json;
use std::process::Command;

#[test]
fn add_check_del_in_every_chaining_version() {
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let d = tempfile::tempdir().unwrap();
        let c = conf(
            version,
            "vnet",
            d.path(),
            json!([[{"subnet":"10.10.0.0/24"}],[{"subnet":"fd10::/64"}]]),
        );
        let mut c = c;
        c["ipam"]["routes"] = json!([{"dst":"0.0.0.0/0"},{"dst":"fd99::/64","gw":"fd10::1"}]);
        let r = run("ADD", "ctr1", &c).ok();
        let j = r.json();
        assert_eq!(j["cniVersion"], version);
        assert!(j.get("interfaces").is_none(), "{version}: {j}");
        let ips = j["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{version}: {j}");
        assert_eq!(ips[0]["address"], "10.10.0.2/24");
        assert_eq!(ips[0]["gateway"], "10.10.0.1");
        assert_eq!(ips[1]["address"], "fd10::2/64");
        assert_eq!(ips[1]["gateway"], "fd10::1");
        for ip in ips {
            assert!(ip.get("interface").is_none(), "{version}: {j}");
            if version.starts_with('0') {
                assert!(
                    ip["version"] == "4" || ip["version"] == "6",
                    "{version}: {j}"
                );
            } else {
                assert!(ip.get("version").is_none(), "{version}: {j}");
            }
        }
        assert_eq!(j["routes"][1]["gw"], "fd10::1");
        assert_eq!(j["dns"], json!({}));
        let netdir = d.path().join("vnet");
        assert_eq!(allocations(&netdir), ["10.10.0.2", "fd10::2"]);
        assert_eq!(
            std::fs::read(netdir.join("10.10.0.2")).unwrap(),
            b"ctr1\r\neth0"
        );

        if version != "0.3.1" {
            let mut chk = c.clone();
            chk["prevResult"] = j.clone();
            run("CHECK", "ctr1", &chk).ok();
            assert_eq!(run("CHECK", "ctr2", &chk).err_code(), 999);
            // A previous result naming an address of ours that is not the attachment's.
            let mut wrong = chk.clone();
            wrong["prevResult"]["ips"][0]["address"] = json!("10.10.0.77/24");
            let r = run("CHECK", "ctr1", &wrong);
            assert!(r.stdout.contains("10.10.0.77"), "{}", r.stdout);
            // Addresses outside our ranges (another IPAM's) are not ours to judge.
            let mut foreign = chk.clone();
            foreign["prevResult"]["ips"][0]["address"] = json!("192.0.2.7/24");
            run("CHECK", "ctr1", &foreign).ok();
        }
        run("DEL", "ctr1", &c).ok();
        assert!(allocations(&netdir).is_empty(), "{version}");
        run("DEL", "ctr1", &c).ok();
        if version != "0.3.1" {
            assert_ne!(run("CHECK", "ctr1", &c).code, 0, "{version}: nothing left");
        }
    }
}

#[test]
fn v0_2_0_prints_the_legacy_shape() {
    let d = tempfile::tempdir().unwrap();
    let mut c = conf(
        "0.2.0",
        "legacy",
        d.path(),
        json!([[{"subnet":"10.20.0.0/16"}],[{"subnet":"fd20::/64"}]]),
    );
    c["ipam"]["routes"] = json!([{"dst":"0.0.0.0/0"}]);
    let j = run("ADD", "c1", &c).ok().json();
    assert_eq!(j["cniVersion"], "0.2.0");
    assert_eq!(j["ip4"]["ip"], "10.20.0.2/16");
    assert_eq!(j["ip4"]["gateway"], "10.20.0.1");
    assert_eq!(j["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(j["ip6"]["ip"], "fd20::2/64");
    assert!(j.get("ips").is_none());
    run("DEL", "c1", &c).ok();
}

#[test]
fn legacy_subnet_keys_requested_ips_and_resolv_conf() {
    let d = tempfile::tempdir().unwrap();
    let resolv = d.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.30.0.53\nsearch example.test\noptions ndots:2\ndomain example.test\n",
    )
    .unwrap();
    let c = json!({"cniVersion":"1.0.0","name":"reqnet","type":"bridge",
        "ipam":{"type":"host-local","subnet":"10.30.0.0/24","rangeStart":"10.30.0.100",
                "rangeEnd":"10.30.0.200","gateway":"10.30.0.180",
                "ranges":[[{"subnet":"fd30::/64"}]],
                "dataDir":d.path(),"resolvConf":resolv},
        "args":{"cni":{"ips":["fd30::77"]}}});
    let r = exec(
        &ours(),
        "ADD",
        "c1",
        "eth0",
        &c,
        &[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.30.0.150")],
    )
    .ok();
    let j = r.json();
    assert_eq!(j["ips"][0]["address"], "10.30.0.150/24");
    assert_eq!(j["ips"][0]["gateway"], "10.30.0.180");
    assert_eq!(j["ips"][1]["address"], "fd30::77/64");
    assert_eq!(j["dns"]["nameservers"][0], "10.30.0.53");
    assert_eq!(j["dns"]["search"][0], "example.test");
    assert_eq!(j["dns"]["options"][0], "ndots:2");
    assert_eq!(j["dns"]["domain"], "example.test");

    // The gateway cannot be requested; a requested address outside every set releases all.
    let netdir = d.path().join("reqnet");
    let before = snapshot(d.path());
    let r = exec(
        &ours(),
        "ADD",
        "c2",
        "eth0",
        &c,
        &[("CNI_ARGS", "IP=10.30.0.180")],
    );
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("is the gateway"), "{}", r.stdout);
    assert_eq!(r.err_code(), 7);
    let mut plain = c.clone();
    plain.as_object_mut().unwrap().remove("args");
    let mut c3 = plain.clone();
    c3["runtimeConfig"] = json!({"ips":["192.168.1.1/24"]});
    let r = run("ADD", "c3", &c3);
    assert!(
        r.stdout.contains("failed to allocate all requested IPs"),
        "{}",
        r.stdout
    );
    assert_eq!(
        allocations(&netdir).len(),
        2,
        "c3's allocations were rolled back"
    );
    let after = snapshot(d.path());
    let allocs_before: Vec<_> = before.keys().filter(|p| p.starts_with(&netdir)).collect();
    let allocs_after: Vec<_> = after.keys().filter(|p| p.starts_with(&netdir)).collect();
    assert_eq!(allocs_before, allocs_after);
    // Comma-separated CNI_ARGS IP list.
    let r = exec(
        &ours(),
        "ADD",
        "c4",
        "eth0",
        &plain,
        &[("CNI_ARGS", "IP=10.30.0.160,fd30::160")],
    )
    .ok();
    let j = r.json();
    assert_eq!(j["ips"][0]["address"], "10.30.0.160/24");
    assert_eq!(j["ips"][1]["address"], "fd30::160/64");
    // args.cni.ips asks for fd30::77, which c1 holds: refused, nothing left behind.
    let before = allocations(&netdir);
    let r = run("ADD", "c5", &c);
    assert!(
        r.stdout.contains("fd30::77 is not available"),
        "{}",
        r.stdout
    );
    assert_eq!(allocations(&netdir), before);
}

#[test]
fn exhausted_pool_fails_without_a_new_file() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "tiny",
        d.path(),
        json!([[{"subnet":"10.40.0.0/30"}]]),
    );
    assert_eq!(first_ip(&run("ADD", "c1", &c).ok()), "10.40.0.2/30");
    let before = snapshot(d.path());
    let r = run("ADD", "c2", &c);
    assert_eq!(r.err_code(), 999);
    assert!(
        r.json()["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available in range set"),
        "{}",
        r.stdout
    );
    assert_eq!(allocations(&d.path().join("tiny")), ["10.40.0.2"]);
    let after = snapshot(d.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
}

#[test]
fn thirty_two_parallel_adds_into_a_slash_27() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "par",
        d.path(),
        json!([[{"subnet":"10.50.0.0/27"}]]),
    );
    let results: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let c = &c;
                s.spawn(move || run("ADD", &format!("par{i}"), c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut got: Vec<String> = results
        .iter()
        .filter(|r| r.code == 0)
        .map(first_ip)
        .collect();
    let failed: Vec<&Run> = results.iter().filter(|r| r.code != 0).collect();
    got.sort();
    let n = got.len();
    got.dedup();
    assert_eq!(got.len(), n, "no address given twice");
    // .1 is the gateway, .31 broadcast: .2 to .30 are free.
    let mut want: Vec<String> = (2..=30).map(|i| format!("10.50.0.{i}/27")).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(failed.len(), 3);
    for r in failed {
        assert!(
            r.stdout.contains("no IP addresses available"),
            "{}",
            r.stdout
        );
    }
    assert_eq!(allocations(&d.path().join("par")).len(), 29);
}

#[test]
fn gc_frees_exactly_what_is_not_listed() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        "gcnet",
        d.path(),
        json!([[{"subnet":"10.60.0.0/24"}]]),
    );
    for (cid, ifname) in [("a", "eth0"), ("a", "eth1"), ("b", "eth0"), ("c", "eth0")] {
        exec(&ours(), "ADD", cid, ifname, &c, &[]).ok();
    }
    let netdir = d.path().join("gcnet");
    std::fs::write(netdir.join("10.60.0.100"), "b").unwrap(); // legacy, container b
    std::fs::write(netdir.join("10.60.0.101"), "z").unwrap(); // legacy, container z
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID":"a","ifname":"eth1"},{"containerID":"b","ifname":"eth0"}]);
    exec(&ours(), "GC", "", "", &gc, &[]).ok();
    assert_eq!(
        allocations(&netdir),
        ["10.60.0.100", "10.60.0.3", "10.60.0.4"]
    );
    assert!(netdir.join("lock").exists() && netdir.join("last_reserved_ip.0").exists());
    // The older key works too.
    let mut gc = c.clone();
    gc["cni.dev/attachments"] = json!([{"containerID":"b","ifname":"eth0"}]);
    exec(&ours(), "GC", "", "", &gc, &[]).ok();
    assert_eq!(allocations(&netdir), ["10.60.0.100", "10.60.0.4"]);
    // An empty list means nothing is valid.
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    exec(&ours(), "GC", "", "", &gc, &[]).ok();
    assert!(allocations(&netdir).is_empty());
    assert!(netdir.join("lock").exists() && netdir.join("last_reserved_ip.0").exists());
    // ADD and DEL still work after GC.
    // Round-robin goes on after the last reserved (.5).
    assert_eq!(first_ip(&run("ADD", "d", &c).ok()), "10.60.0.6/24");
    run("DEL", "d", &c).ok();
    assert!(allocations(&netdir).is_empty());
}

#[test]
fn status_is_50_when_full_or_not_writable() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        "stnet",
        d.path(),
        json!([[{"subnet":"10.70.0.0/24"}],[{"subnet":"10.71.0.0/30"}]]),
    );
    exec(&ours(), "STATUS", "", "", &c, &[]).ok();
    assert!(!d.path().join("stnet").exists(), "STATUS creates nothing");
    run("ADD", "c1", &c).ok();
    let r = exec(&ours(), "STATUS", "", "", &c, &[]);
    assert_eq!(r.err_code(), 50);
    // The message names the set, its range and the network.
    let msg = r.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("no IP addresses available in range set 1: 10.71.0.1-10.71.0.2")
            && msg.contains("network \"stnet\""),
        "{msg}"
    );
    run("DEL", "c1", &c).ok();
    exec(&ours(), "STATUS", "", "", &c, &[]).ok();

    // A read-only data dir (a read-only tmpfs in a private mount namespace). Root ignores
    // permission bits, so this is how a root plugin finds a directory it cannot write.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping the read-only case: needs root (a mount namespace)");
        return;
    }
    let ro = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        "stnet",
        ro.path(),
        json!([[{"subnet":"10.70.0.0/24"}]]),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o ro none {} && printf '%s' '{}' | CNI_COMMAND=STATUS CNI_PATH=/x {}",
            ro.path().display(),
            c,
            ours().display()
        ))
        .output()
        .expect("unshare (util-linux)");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(j["code"], 50, "{j}");
    assert!(j["msg"].as_str().unwrap().contains("not writable"), "{j}");
}

/// Writes `n` allocations from `first` on in the reference layout (as the reference plugin,
/// or a node's history, leaves them), with `last_reserved_ip.0` at the last one.
fn populate(netdir: &std::path::Path, first: std::net::Ipv4Addr, n: u32) {
    std::fs::create_dir_all(netdir).unwrap();
    let mut last = first;
    for i in 0..n {
        last = std::net::Ipv4Addr::from(u32::from(first) + i);
        std::fs::write(netdir.join(last.to_string()), format!("pre{i}\r\neth0")).unwrap();
    }
    std::fs::write(netdir.join("last_reserved_ip.0"), last.to_string()).unwrap();
}

#[test]
fn status_sees_a_full_pool_of_thousands_and_its_one_free_address() {
    let d = tempfile::tempdir().unwrap();
    let netdir = d.path().join("bigst");
    let mut c = conf(
        "1.1.0",
        "bigst",
        d.path(),
        json!([[{"subnet":"10.72.0.0/16","rangeStart":"10.72.0.10","rangeEnd":"10.72.15.169"}]]),
    );
    // 4000 addresses, every one allocated.
    populate(&netdir, "10.72.0.10".parse().unwrap(), 4000);
    let before = snapshot(d.path());
    let r = exec(&ours(), "STATUS", "", "", &c, &[]);
    assert_eq!(r.err_code(), 50, "{}", r.stdout);
    assert!(r.stdout.contains("10.72.0.10-10.72.15.169"), "{}", r.stdout);
    assert_eq!(snapshot(d.path()), before, "STATUS writes nothing");
    // ADD agrees.
    assert_ne!(run("ADD", "late", &c).code, 0);
    // One address freed half-way round from where round-robin goes next.
    std::fs::remove_file(netdir.join("10.72.8.1")).unwrap();
    exec(&ours(), "STATUS", "", "", &c, &[]).ok();
    // Files that are not allocations of this set do not count: a foreign name, an address
    // outside the range, the gateway.
    for name in ["10.72.200.1", "10.72.0.1", "not-an-ip", "010.072.008.001"] {
        std::fs::write(netdir.join(name), "x\r\neth0").unwrap();
    }
    exec(&ours(), "STATUS", "", "", &c, &[]).ok();
    let r = run("ADD", "late", &c).ok();
    assert_eq!(
        r.json()["ips"][0]["address"],
        "10.72.8.1/16",
        "ADD takes the address STATUS saw"
    );
    assert_eq!(exec(&ours(), "STATUS", "", "", &c, &[]).err_code(), 50);
    // A second range set, free: the full first one still decides.
    c["ipam"]["ranges"] = json!([
        [{"subnet":"10.72.0.0/16","rangeStart":"10.72.0.10","rangeEnd":"10.72.15.169"}],
        [{"subnet":"fd72::/64"}]
    ]);
    let r = exec(&ours(), "STATUS", "", "", &c, &[]);
    assert_eq!(r.err_code(), 50);
    assert!(r.stdout.contains("range set 0"), "{}", r.stdout);
}

#[test]
fn status_takes_no_lock_and_answers_at_once() {
    let d = tempfile::tempdir().unwrap();
    let mut c = conf(
        "1.1.0",
        "lockst",
        d.path(),
        json!([[{"subnet":"10.73.0.0/24"}]]),
    );
    c["ipam"]["lockTimeout"] = json!(5);
    run("ADD", "c1", &c).ok();
    let file = std::fs::File::open(d.path().join("lockst/lock")).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let t = std::time::Instant::now();
    exec(&ours(), "STATUS", "", "", &c, &[]).ok();
    let took = t.elapsed();
    // ADD waits for the lock (and gives up with code 11 past lockTimeout); STATUS must not.
    assert!(
        took < std::time::Duration::from_secs(2),
        "STATUS took {took:?}"
    );
    drop(held);
    run("DEL", "c1", &c).ok();
}

#[test]
fn del_of_an_unknown_network_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "nothing",
        d.path(),
        json!([[{"subnet":"10.80.0.0/24"}]]),
    );
    run("DEL", "c1", &c).ok();
    assert!(snapshot(d.path()).is_empty());
}
