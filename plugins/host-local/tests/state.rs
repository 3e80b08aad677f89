//! The data directory as shared state: written by hand in the reference layout, changed
//! behind our back, left half-done by a crash, locked by someone else, shared with the
//! reference binary, and never touched by bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_util;

use common_util::*;
use serde_json::{Value, json};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn net(d: &Path, name: &str, subnet: &str) -> Value {
    conf("1.0.0", name, d, json!([[{ "subnet": subnet }]]))
}

#[test]
fn a_hand_written_reference_directory_is_read_released_and_collected() {
    let d = tempfile::tempdir().unwrap();
    let netdir = d.path().join("handnet");
    fs::create_dir_all(&netdir).unwrap();
    fs::write(netdir.join("10.90.0.2"), "alpha\r\neth0").unwrap();
    fs::write(netdir.join("10.90.0.3"), "beta\r\neth0").unwrap();
    fs::write(netdir.join("10.90.0.4"), "gamma").unwrap(); // legacy: container ID only
    fs::write(netdir.join("10.90.0.5"), "delta\r\neth1").unwrap();
    fs::write(netdir.join("last_reserved_ip.0"), "10.90.0.5").unwrap();
    fs::write(netdir.join("lock"), "").unwrap();
    let c = net(d.path(), "handnet", "10.90.0.0/24");

    // ADD continues after last_reserved_ip.0 and sees alpha's address as its own.
    assert_eq!(first_ip(&run("ADD", "new", &c).ok()), "10.90.0.6/24");
    assert_eq!(
        fs::read(netdir.join("last_reserved_ip.0")).unwrap(),
        b"10.90.0.6"
    );
    let r = run("ADD", "alpha", &c);
    assert!(r.stdout.contains("duplicate allocation"), "{}", r.stdout);
    // A legacy file counts for any interface of its container.
    let r = exec(&ours(), "ADD", "gamma", "eth7", &c, &[]);
    assert!(r.stdout.contains("10.90.0.4"), "{}", r.stdout);
    exec(&ours(), "CHECK", "gamma", "eth7", &c, &[]).ok();

    run("DEL", "alpha", &c).ok();
    run("DEL", "gamma", &c).ok();
    assert_eq!(
        allocations(&netdir),
        ["10.90.0.3", "10.90.0.5", "10.90.0.6"]
    );

    let mut gc = c.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID":"new","ifname":"eth0"},
                                             {"containerID":"delta","ifname":"eth0"}]);
    exec(&ours(), "GC", "", "", &gc, &[]).ok();
    assert_eq!(allocations(&netdir), ["10.90.0.6"]);
    assert_eq!(fs::read(netdir.join("lock")).unwrap(), b"");
    assert_eq!(
        fs::read(netdir.join("last_reserved_ip.0")).unwrap(),
        b"10.90.0.6"
    );
}

#[test]
fn changes_made_behind_our_back_are_noticed() {
    let d = tempfile::tempdir().unwrap();
    let netdir = d.path().join("stale");
    let c = net(d.path(), "stale", "10.91.0.0/24");
    assert_eq!(first_ip(&run("ADD", "mine", &c).ok()), "10.91.0.2/24");

    // The reference (or a person) allocates .3 for "theirs" and frees "mine".
    fs::write(netdir.join("10.91.0.3"), "theirs\r\neth0").unwrap();
    fs::write(netdir.join("last_reserved_ip.0"), "10.91.0.3").unwrap();
    fs::remove_file(netdir.join("10.91.0.2")).unwrap();

    let r = run("ADD", "theirs", &c);
    assert!(r.stdout.contains("duplicate allocation"), "{}", r.stdout);
    // "mine" holds nothing any more: a new ADD is allowed and takes .4.
    assert_eq!(first_ip(&run("ADD", "mine", &c).ok()), "10.91.0.4/24");
    run("DEL", "theirs", &c).ok();
    assert_eq!(allocations(&netdir), ["10.91.0.4"]);

    // The same address freed and given to someone else between two of our calls: DEL of the
    // old holder must not free the new holder's file.
    fs::remove_file(netdir.join("10.91.0.4")).unwrap();
    fs::write(netdir.join("10.91.0.4"), "other\r\neth0").unwrap();
    run("DEL", "mine", &c).ok();
    assert_eq!(
        fs::read(netdir.join("10.91.0.4")).unwrap(),
        b"other\r\neth0"
    );
    run("DEL", "other", &c).ok();
    assert!(allocations(&netdir).is_empty());
}

/// The index's bucket files.
fn buckets(idxdir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(idxdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("b-"))
        .collect()
}

/// True when some bucket of the index has exactly this line.
fn index_lists(idxdir: &Path, line: &str) -> bool {
    buckets(idxdir)
        .iter()
        .any(|b| fs::read_to_string(b).unwrap().lines().any(|l| l == line))
}

#[test]
fn a_crash_is_repaired_by_the_next_call() {
    let d = tempfile::tempdir().unwrap();
    let netdir = d.path().join("crash");
    let idxdir = d.path().join(".cnirs-index").join("crash");
    let c = net(d.path(), "crash", "10.92.0.0/24");
    run("ADD", "a", &c).ok();
    assert!(idxdir.join("stamp").is_file());
    assert!(index_lists(&idxdir, "a:eth0 10.92.0.2"));

    // Crash 1: an allocation file was created, the index never heard of it.
    fs::write(netdir.join("10.92.0.9"), "b\r\neth0").unwrap();
    let r = run("ADD", "b", &c);
    assert!(r.stdout.contains("10.92.0.9"), "{}", r.stdout);
    run("DEL", "b", &c).ok();
    assert!(!netdir.join("10.92.0.9").exists());

    // Crash 2: index entry lost and the stamp left stale (written, directory time not set).
    for b in buckets(&idxdir) {
        fs::remove_file(b).unwrap();
    }
    let stamp = fs::read_to_string(idxdir.join("stamp")).unwrap();
    let mut f: Vec<String> = stamp.split_whitespace().map(String::from).collect();
    f[4] = ((f[4].parse::<i64>().unwrap() + 1) % 1_000_000_000).to_string();
    fs::write(idxdir.join("stamp"), f.join(" ")).unwrap();
    let r = run("ADD", "a", &c);
    assert!(r.stdout.contains("duplicate allocation"), "{}", r.stdout);
    assert!(index_lists(&idxdir, "a:eth0 10.92.0.2"), "entry rebuilt");

    // Crash 3: a torn stamp, and the whole index directory gone.
    fs::write(idxdir.join("stamp"), "v1 12").unwrap();
    run("DEL", "a", &c).ok();
    assert!(allocations(&netdir).is_empty());
    fs::remove_dir_all(d.path().join(".cnirs-index")).unwrap();
    run("ADD", "c", &c).ok();
    run("DEL", "c", &c).ok();
    assert!(allocations(&netdir).is_empty());

    // Crash 4: killed between staging an allocation file and linking it into place. The
    // address was never taken, and the next call (here GC) removes the leftover.
    let staging = idxdir.join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("99999.0"), "d\r\neth0").unwrap();
    let mut gc = c.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    exec(&ours(), "GC", "", "", &gc, &[]).ok();
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(first_ip(&run("ADD", "d", &c).ok()), "10.92.0.4/24");
    assert_eq!(fs::read(netdir.join("10.92.0.4")).unwrap(), b"d\r\neth0");
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
}

#[test]
fn a_held_lock_makes_add_fail_with_code_11_in_time() {
    let d = tempfile::tempdir().unwrap();
    let mut c = net(d.path(), "locked", "10.93.0.0/24");
    c["ipam"]["lockTimeout"] = json!(1);
    run("ADD", "first", &c).ok();
    let lock = fs::File::open(d.path().join("locked").join("lock")).unwrap();
    fs2::FileExt::lock_exclusive(&lock).unwrap();
    let before = snapshot(d.path());
    let t = Instant::now();
    let r = run("ADD", "second", &c);
    let took = t.elapsed();
    assert_eq!(r.err_code(), 11, "{}", r.stdout);
    assert!(r.stdout.contains("lockTimeout"), "{}", r.stdout);
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(run("DEL", "first", &c).err_code(), 11);
    assert_eq!(snapshot(d.path()), before);
    fs2::FileExt::unlock(&lock).unwrap();
    run("ADD", "second", &c).ok();
    run("DEL", "first", &c).ok();
    assert_eq!(allocations(&d.path().join("locked")), ["10.93.0.3"]);
}

#[test]
fn hostile_input_is_refused_without_touching_anything() {
    let d = tempfile::tempdir().unwrap();
    let good = net(d.path(), "hostile", "10.94.0.0/24");
    run("ADD", "keep", &good).ok();
    let before = snapshot(d.path());
    let bin = ours();

    let r = exec_raw(&bin, "ADD", "x", "eth0", "{\"cniVersion\":\"1.0.0\",", &[]);
    assert_eq!(r.err_code(), 6);

    for subnet in [
        "10.94.0.0",
        "10.94.0.0/33",
        "10.94.0.7/24",
        "nonsense/24",
        "10.94.0.0/32",
    ] {
        let r = run("ADD", "x", &net(d.path(), "hostile", subnet));
        assert_eq!(r.err_code(), 7, "{subnet}: {}", r.stdout);
    }
    // A rangeStart after the default rangeEnd (the broadcast address) is a config error.
    let mut c = good.clone();
    c["ipam"]["ranges"] = json!([[{"subnet":"10.0.0.0/8","rangeStart":"10.255.255.255"}]]);
    let r = run("ADD", "x", &c);
    assert_eq!(r.err_code(), 7, "{}", r.stdout);
    assert!(r.stdout.contains("after rangeEnd"), "{}", r.stdout);
    for name in ["../escape", "a/b", "..", ".hidden"] {
        let mut c = good.clone();
        c["name"] = json!(name);
        assert_eq!(run("ADD", "x", &c).err_code(), 7, "{name}");
        assert_eq!(run("DEL", "keep", &c).err_code(), 7, "{name}");
    }
    let mut c = good.clone();
    c["cniVersion"] = json!("9.9.9");
    assert_eq!(run("ADD", "x", &c).err_code(), 1);
    let mut c = good.clone();
    c["ipam"]["routes"] = json!([{"dst":"nope"}]);
    assert_eq!(run("ADD", "x", &c).err_code(), 7);
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("ipam");
    assert_eq!(run("ADD", "x", &c).err_code(), 7);
    let r = exec(
        &bin,
        "ADD",
        "x",
        "eth0",
        &good,
        &[("CNI_ARGS", "IP=10.94.0.999")],
    );
    assert_eq!(r.err_code(), 7);
    let r = exec(&bin, "ADD", "../x", "eth0", &good, &[]);
    assert_eq!(r.err_code(), 4);
    let r = exec(&bin, "ADD", "x", "a/b", &good, &[]);
    assert_eq!(r.err_code(), 4);
    let mut c = good.clone();
    c["ipam"]["resolvConf"] = json!(d.path().join("missing-resolv.conf"));
    assert_eq!(run("ADD", "x", &c).err_code(), 7);

    assert_eq!(snapshot(d.path()), before, "no state change");
}

#[test]
fn ours_and_the_reference_share_a_data_dir() {
    if !have_reference() {
        return;
    }
    let reference = Path::new(REFERENCE);
    let d = tempfile::tempdir().unwrap();
    let netdir = d.path().join("shared");
    let c = conf(
        "1.0.0",
        "shared",
        d.path(),
        json!([[{"subnet":"10.95.0.0/24"}],[{"subnet":"fd95::/120"}]]),
    );
    let refrun = |cmd: &str, cid: &str| exec(reference, cmd, cid, "eth0", &c, &[]);

    // Ours allocates, the reference releases.
    let r = run("ADD", "c1", &c).ok().json();
    assert_eq!(r["ips"][1]["address"], "fd95::2/120");
    refrun("DEL", "c1").ok();
    assert!(allocations(&netdir).is_empty());

    // The reference allocates (continuing our round-robin), ours releases.
    let r = refrun("ADD", "c2").ok();
    assert_eq!(first_ip(&r), "10.95.0.3/24");
    run("DEL", "c2", &c).ok();
    assert!(allocations(&netdir).is_empty());

    // Interleaved: neither hands out an address the other holds, and duplicates are seen
    // across binaries.
    let mut held = Vec::new();
    for i in 0..6 {
        let cid = format!("m{i}");
        let r = if i % 2 == 0 {
            run("ADD", &cid, &c).ok()
        } else {
            refrun("ADD", &cid).ok()
        };
        held.push(first_ip(&r));
    }
    let mut uniq = held.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 6, "{held:?}");
    let r = run("ADD", "m1", &c);
    assert!(r.stdout.contains("duplicate allocation"), "{}", r.stdout);
    let r = refrun("ADD", "m0");
    assert_ne!(r.code, 0, "the reference sees our allocation: {}", r.stdout);
    for i in 0..6 {
        let cid = format!("m{i}");
        if i % 2 == 0 {
            refrun("DEL", &cid).ok();
        } else {
            run("DEL", &cid, &c).ok();
        }
    }
    assert!(allocations(&netdir).is_empty());
    // Our CHECK sees an allocation made by the reference.
    refrun("ADD", "c3").ok();
    exec(&ours(), "CHECK", "c3", "eth0", &c, &[]).ok();
    run("DEL", "c3", &c).ok();
    assert!(allocations(&netdir).is_empty());
}

/// The bucket file that lists `key` (e.g. `a:eth0`).
fn bucket_listing(idxdir: &Path, key: &str) -> std::path::PathBuf {
    buckets(idxdir)
        .into_iter()
        .find(|b| {
            fs::read_to_string(b)
                .unwrap()
                .lines()
                .any(|l| l.split(' ').next() == Some(key))
        })
        .unwrap_or_else(|| panic!("no bucket lists {key}"))
}

#[test]
fn a_broken_index_never_fails_a_call() {
    let d = tempfile::tempdir().unwrap();
    let netdir = d.path().join("broken");
    let idxdir = d.path().join(".cnirs-index").join("broken");
    let c = net(d.path(), "broken", "10.96.0.0/24");
    assert_eq!(first_ip(&run("ADD", "a", &c).ok()), "10.96.0.2/24");

    // The stamp replaced by a (non-empty) directory: it cannot be read nor written as a file.
    fs::remove_file(idxdir.join("stamp")).unwrap();
    fs::create_dir_all(idxdir.join("stamp").join("junk")).unwrap();
    assert_eq!(first_ip(&run("ADD", "b", &c).ok()), "10.96.0.3/24");
    let r = run("ADD", "a", &c);
    assert!(r.stdout.contains("duplicate allocation"), "{}", r.stdout);
    run("DEL", "b", &c).ok();
    assert_eq!(allocations(&netdir), ["10.96.0.2"]);

    // A bucket that is not UTF-8, under a stamp that still matches.
    let b = bucket_listing(&idxdir, "a:eth0");
    fs::write(&b, b"a:eth0 10.96.0.2\n\xff\xfe\n").unwrap();
    let r = run("ADD", "a", &c);
    assert!(r.stdout.contains("duplicate allocation"), "{}", r.stdout);
    fs::write(&b, b"\xff\xfe\n").unwrap();
    run("DEL", "a", &c).ok();
    assert!(allocations(&netdir).is_empty());

    // A bucket replaced by a directory.
    assert_eq!(first_ip(&run("ADD", "a", &c).ok()), "10.96.0.4/24");
    let b = bucket_listing(&idxdir, "a:eth0");
    fs::remove_file(&b).unwrap();
    fs::create_dir_all(b.join("junk")).unwrap();
    assert_eq!(first_ip(&run("ADD", "c", &c).ok()), "10.96.0.5/24");
    run("DEL", "a", &c).ok();
    assert_eq!(allocations(&netdir), ["10.96.0.5"]);
    let mut gc = c.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    exec(&ours(), "GC", "", "", &gc, &[]).ok();
    assert!(allocations(&netdir).is_empty());

    // Every call above repaired what it could: the index is whole and trusted again.
    assert!(idxdir.join("stamp").is_file());
    assert_eq!(first_ip(&run("ADD", "z", &c).ok()), "10.96.0.6/24");
    assert!(index_lists(&idxdir, "z:eth0 10.96.0.6"));
}
