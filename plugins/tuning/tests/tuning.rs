//! tuning against the real kernel: a container made by the real bridge + host-local, then
//! tuning chained on its result as a runtime would run it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::path::PathBuf;
use tempfile::TempDir;
use testkit::{Run, TestNs, cni, have_root, unique_name};

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// A host namespace, a network name, data dirs, and an allow-list path (absent unless a test
/// writes it, so the machine's /etc is never read).
struct World {
    host: TestNs,
    net: String,
    ipam: TempDir,
    data: TempDir,
    etc: TempDir,
}

/// A container attached by bridge: its namespace, ID and the bridge result.
struct Container {
    ns: TestNs,
    cid: String,
    prev: Value,
}

/// What `ip link` says about a container's eth0.
#[derive(Debug, Clone, PartialEq)]
struct LinkState {
    mac: String,
    mtu: u64,
    txqlen: u64,
    promisc: bool,
    allmulti: bool,
}

fn link_state(ns: &TestNs, ifname: &str) -> LinkState {
    let j = ns.ip_json(&["link", "show", "dev", ifname]);
    let flags = j[0]["flags"].to_string();
    LinkState {
        mac: j[0]["address"].as_str().unwrap().to_string(),
        mtu: j[0]["mtu"].as_u64().unwrap(),
        txqlen: j[0]["txqlen"].as_u64().unwrap(),
        promisc: flags.contains("PROMISC"),
        allmulti: flags.contains("ALLMULTI"),
    }
}

impl World {
    fn new() -> World {
        World {
            host: TestNs::new(),
            net: unique_name("tun"),
            ipam: tempfile::tempdir().unwrap(),
            data: tempfile::tempdir().unwrap(),
            etc: tempfile::tempdir().unwrap(),
        }
    }

    fn allowlist(&self) -> PathBuf {
        self.etc.path().join("allowlist.conf")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "CNIRS_TUNING_ALLOWLIST",
            self.allowlist().to_str().unwrap().to_string(),
        )]
    }

    /// A new container on the bridge (cniVersion `version`).
    fn container(&self, version: &str) -> Container {
        let ns = TestNs::new();
        let cid = unique_name("ctr");
        let conf = json!({
            "cniVersion": version,
            "name": self.net,
            "type": "bridge",
            "bridge": "cnitest0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam.path(),
                "ranges": [[{"subnet": "10.99.0.0/16"}]],
            }
        });
        let prev = cni(
            &self.host,
            "bridge",
            "ADD",
            &cid,
            ns.path(),
            "eth0",
            &conf,
            &[],
        )
        .ok()
        .json();
        Container { ns, cid, prev }
    }

    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": self.net,
            "type": "tuning",
            "dataDir": self.data.path(),
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// Runs tuning with `conf` (prevResult added when `prev`) and extra env.
    fn run(
        &self,
        cmd: &str,
        c: &Container,
        netns: &str,
        conf: &Value,
        prev: bool,
        extra: &[(&str, &str)],
    ) -> Run {
        let mut conf = conf.clone();
        if prev {
            conf["prevResult"] = c.prev.clone();
        }
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        cni(
            &self.host, "tuning", cmd, &c.cid, netns, "eth0", &conf, &all,
        )
    }

    fn add(&self, c: &Container, conf: &Value) -> Run {
        self.run("ADD", c, c.ns.path(), conf, true, &[])
    }

    fn backup_path(&self, c: &Container) -> PathBuf {
        self.data.path().join(format!("{}_eth0.json", c.cid))
    }

    fn backups(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

const NEW_MAC: &str = "02:12:34:56:78:9a";

fn full_settings() -> Value {
    json!({
        "mac": NEW_MAC,
        "mtu": 1400,
        "promisc": true,
        "allmulti": true,
        "txQLen": 4321,
        "sysctl": {
            "net.core.somaxconn": "1234",
            "net/ipv4/conf/IFNAME/arp_filter": "1",
        }
    })
}

fn sysctls(ns: &TestNs) -> (String, String) {
    (
        ns.sysctl("net.core.somaxconn"),
        ns.sysctl("net/ipv4/conf/eth0/arp_filter"),
    )
}

#[test]
fn every_version_add_check_del_restores() {
    if !have_root() {
        return;
    }
    for version in VERSIONS {
        let w = World::new();
        let c = w.container(version);
        let before = link_state(&c.ns, "eth0");
        let host_before = w.host.sysctl("net.core.somaxconn");
        let sys_before = sysctls(&c.ns);
        assert_ne!(sys_before.0, "1234");
        let conf = w.conf(version, full_settings());

        let out = w.add(&c, &conf).ok().json();
        assert_eq!(out["cniVersion"], version);
        let after = link_state(&c.ns, "eth0");
        assert_eq!(
            after,
            LinkState {
                mac: NEW_MAC.into(),
                mtu: 1400,
                txqlen: 4321,
                promisc: true,
                allmulti: true
            },
            "{version}"
        );
        // The sysctls are read back inside the container's namespace; the namespace the
        // plugin ran in is untouched.
        assert_eq!(sysctls(&c.ns), ("1234".into(), "1".into()), "{version}");
        assert_eq!(w.host.sysctl("net.core.somaxconn"), host_before);
        if version >= "0.3.0" {
            let eth0 = out["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == "eth0" && i.get("sandbox").is_some())
                .unwrap();
            assert_eq!(eth0["mac"], NEW_MAC, "{version}: {out}");
            if version == "1.1.0" {
                assert_eq!(eth0["mtu"], 1400, "{out}");
            }
        } else {
            assert!(out["ip4"]["ip"].is_string(), "{out}");
        }
        assert!(w.backup_path(&c).is_file());

        if version >= "0.4.0" {
            let mut cc = conf.clone();
            cc["prevResult"] = out.clone();
            w.run("CHECK", &c, c.ns.path(), &cc, false, &[]).ok();
        }

        let mut dc = conf.clone();
        if version >= "0.4.0" {
            dc["prevResult"] = out.clone();
        }
        w.run("DEL", &c, c.ns.path(), &dc, false, &[]).ok();
        assert_eq!(link_state(&c.ns, "eth0"), before, "{version}");
        assert_eq!(sysctls(&c.ns), sys_before, "{version}");
        assert!(w.backups().is_empty(), "{:?}", w.backups());
        // DEL twice.
        w.run("DEL", &c, c.ns.path(), &dc, false, &[]).ok();
        assert_eq!(link_state(&c.ns, "eth0"), before);
    }
}

#[test]
fn forbidden_keys_are_refused_with_code_7_and_nothing_changes() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.0.0");
    let before = link_state(&c.ns, "eth0");
    let sys_before = sysctls(&c.ns);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let unchanged = |what: &str| {
        assert_eq!(link_state(&c.ns, "eth0"), before, "{what}");
        assert_eq!(sysctls(&c.ns), sys_before, "{what}");
        assert!(w.backups().is_empty(), "{what}: {:?}", w.backups());
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
            hostname
        );
    };
    let with = |key: &str| {
        let mut s = full_settings();
        s["sysctl"][key] = json!("1");
        w.conf("1.0.0", s)
    };
    for key in [
        "kernel.hostname",
        "kernel/hostname",
        "net/../kernel/hostname",
        "net/core/../../kernel/hostname",
        "/proc/sys/kernel/hostname",
        "net.core.no_such_sysctl",
        "net.ipv4.conf.IFNAME",
    ] {
        let r = w.add(&c, &with(key));
        assert_eq!(r.err_code(), 7, "{key}: {}", r.stdout);
        unchanged(key);
    }

    // The allow-list: unanchored regexes; a key matching none is refused.
    std::fs::write(w.allowlist(), "# ops\n^net[./]ipv4[./]conf[./]IFNAME[./]\n").unwrap();
    let r = w.add(&c, &w.conf("1.0.0", full_settings()));
    assert_eq!(r.err_code(), 7, "{}", r.stdout);
    assert!(r.stdout.contains("net.core.somaxconn"), "{}", r.stdout);
    unchanged("not in the allow-list");
    // args.cni sysctls are checked too.
    let mut s = json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1"}});
    s["args"] = json!({"cni": {"sysctl": {"net.ipv4.ip_forward": "1"}}});
    assert_eq!(w.add(&c, &w.conf("1.0.0", s)).err_code(), 7);
    unchanged("args.cni not in the allow-list");

    // Unanchored: "somaxconn" allows net.core.somaxconn.
    std::fs::write(
        w.allowlist(),
        "^net[./]ipv4[./]conf[./]IFNAME[./]\nsomaxconn\n",
    )
    .unwrap();
    w.add(&c, &w.conf("1.0.0", full_settings())).ok();
    assert_eq!(sysctls(&c.ns), ("1234".into(), "1".into()));

    // An invalid regex is a config error.
    std::fs::write(w.allowlist(), "(\n").unwrap();
    assert_eq!(w.add(&c, &w.conf("1.0.0", full_settings())).err_code(), 7);
    // ... and read only when sysctls are configured.
    w.add(&c, &w.conf("1.0.0", json!({"mtu": 1400}))).ok();
}

#[test]
fn a_failed_add_changes_nothing() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.0.0");
    let before = link_state(&c.ns, "eth0");
    let sys_before = sysctls(&c.ns);
    let cases = [
        // The kernel refuses the value after the link was changed: all undone.
        (
            "bad sysctl value",
            json!({"net.core.somaxconn": "lots"}),
            json!(1400),
        ),
        ("MTU over the device's maximum", json!({}), json!(70000)),
    ];
    for (what, extra_sysctl, mtu) in cases {
        let mut s = full_settings();
        s["mtu"] = mtu;
        for (k, v) in extra_sysctl.as_object().unwrap() {
            s["sysctl"][k] = v.clone();
        }
        let r = w.add(&c, &w.conf("1.0.0", s));
        assert_eq!(r.err_code(), 7, "{what}: {}", r.stdout);
        assert_eq!(link_state(&c.ns, "eth0"), before, "{what}");
        assert_eq!(sysctls(&c.ns), sys_before, "{what}");
        assert!(w.backups().is_empty(), "{what}: {:?}", w.backups());
    }
}

#[test]
fn mac_precedence_and_args_cni_overrides() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.1.0");
    let mut conf = w.conf(
        "1.1.0",
        json!({
            "mac": "02:00:00:00:00:01",
            "mtu": 1400,
            "runtimeConfig": {"mac": "02:00:00:00:00:03"},
            "args": {"cni": {"mac": "02:00:00:00:00:04", "mtu": 1300, "allmulti": true,
                "sysctl": {"net.core.somaxconn": "777"}}},
            "sysctl": {"net.core.somaxconn": "555"},
        }),
    );
    let args = [(
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=p;MAC=02:00:00:00:00:02",
    )];
    let out = w
        .run("ADD", &c, c.ns.path(), &conf, true, &args)
        .ok()
        .json();
    let st = link_state(&c.ns, "eth0");
    assert_eq!(
        (st.mac.as_str(), st.mtu, st.allmulti),
        ("02:00:00:00:00:04", 1300, true)
    );
    assert_eq!(c.ns.sysctl("net.core.somaxconn"), "777");
    assert!(out.to_string().contains("02:00:00:00:00:04"));

    // Without args.cni, runtimeConfig wins over CNI_ARGS; without it, CNI_ARGS over the conf.
    conf.as_object_mut().unwrap().remove("args");
    w.run("ADD", &c, c.ns.path(), &conf, true, &args).ok();
    assert_eq!(link_state(&c.ns, "eth0").mac, "02:00:00:00:00:03");
    conf.as_object_mut().unwrap().remove("runtimeConfig");
    w.run("ADD", &c, c.ns.path(), &conf, true, &args).ok();
    assert_eq!(link_state(&c.ns, "eth0").mac, "02:00:00:00:00:02");
    w.run("ADD", &c, c.ns.path(), &conf, true, &[]).ok();
    assert_eq!(link_state(&c.ns, "eth0").mac, "02:00:00:00:00:01");
}

#[test]
fn repeated_add_keeps_the_true_originals() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.0.0");
    let before = link_state(&c.ns, "eth0");
    let sys_before = sysctls(&c.ns);
    w.add(&c, &w.conf("1.0.0", full_settings())).ok();
    // An ADD retried without DEL (or after a crash) with other values: the backup still
    // holds what was there before the first ADD.
    let mut s = full_settings();
    s["mac"] = json!("02:00:00:00:00:99");
    s["mtu"] = json!(1300);
    s["sysctl"]["net.core.somaxconn"] = json!("999");
    w.add(&c, &w.conf("1.0.0", s)).ok();
    assert_eq!(link_state(&c.ns, "eth0").mtu, 1300);
    let b: Value =
        serde_json::from_str(&std::fs::read_to_string(w.backup_path(&c)).unwrap()).unwrap();
    assert_eq!(b["mac"], before.mac.as_str(), "{b}");
    assert_eq!(b["mtu"], before.mtu, "{b}");
    assert_eq!(b["cnirs"]["network"], w.net.as_str());
    assert_eq!(
        b["cnirs"]["sysctl"]["/proc/sys/net/core/somaxconn"],
        sys_before.0.as_str()
    );
    let mode = std::fs::metadata(w.backup_path(&c)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    w.run(
        "DEL",
        &c,
        c.ns.path(),
        &w.conf("1.0.0", json!({})),
        false,
        &[],
    )
    .ok();
    assert_eq!(link_state(&c.ns, "eth0"), before);
    assert_eq!(sysctls(&c.ns), sys_before);
}

#[test]
fn del_without_prev_result_netns_or_interface() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf("1.1.0", full_settings());

    // No netns and no prevResult: nothing can be restored, the backup goes.
    let c = w.container("1.1.0");
    w.add(&c, &conf).ok();
    w.run("DEL", &c, "", &conf, false, &[]).ok();
    assert!(w.backups().is_empty());
    w.run("DEL", &c, "", &conf, false, &[]).ok();

    // The interface is gone: the sysctls are still restored, the backup goes.
    let c = w.container("1.1.0");
    let sys_before = c.ns.sysctl("net.core.somaxconn");
    w.add(&c, &conf).ok();
    c.ns.ip(&["link", "del", "eth0"]);
    w.run("DEL", &c, c.ns.path(), &conf, false, &[]).ok();
    assert!(w.backups().is_empty());
    assert_eq!(c.ns.sysctl("net.core.somaxconn"), sys_before);

    // The netns is gone.
    let c = w.container("1.1.0");
    w.add(&c, &conf).ok();
    let path = c.ns.path().to_string();
    let Container { ns, cid, prev } = c;
    drop(ns);
    let gone = Container {
        ns: TestNs::new(),
        cid,
        prev,
    };
    w.run("DEL", &gone, &path, &conf, true, &[]).ok();
    assert!(w.backups().is_empty());

    // The interface was re-created since ADD: its fresh values are left alone.
    let c = w.container("1.1.0");
    w.add(&c, &conf).ok();
    c.ns.ip(&["link", "del", "eth0"]);
    c.ns.ip(&[
        "link", "add", "eth0", "mtu", "1280", "type", "veth", "peer", "name", "p0",
    ]);
    w.run("DEL", &c, c.ns.path(), &conf, false, &[]).ok();
    assert_eq!(link_state(&c.ns, "eth0").mtu, 1280);
    assert!(w.backups().is_empty());
}

#[test]
fn check_compares_every_value() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.0.0");
    let conf = w.conf("1.0.0", full_settings());
    let out = w.add(&c, &conf).ok().json();
    let mut cc = conf.clone();
    cc["prevResult"] = out;
    let check = || w.run("CHECK", &c, c.ns.path(), &cc, false, &[]);
    check().ok();
    let drift: [(&[&str], &[&str]); 5] = [
        (
            &["link", "set", "eth0", "mtu", "1500"],
            &["link", "set", "eth0", "mtu", "1400"],
        ),
        (
            &["link", "set", "eth0", "address", "02:00:00:00:00:77"],
            &["link", "set", "eth0", "address", NEW_MAC],
        ),
        (
            &["link", "set", "eth0", "promisc", "off"],
            &["link", "set", "eth0", "promisc", "on"],
        ),
        (
            &["link", "set", "eth0", "allmulticast", "off"],
            &["link", "set", "eth0", "allmulticast", "on"],
        ),
        (
            &["link", "set", "eth0", "txqueuelen", "1000"],
            &["link", "set", "eth0", "txqueuelen", "4321"],
        ),
    ];
    for (change, back) in drift {
        c.ns.ip(change);
        let r = check();
        assert_ne!(r.code, 0, "{change:?} not detected");
        c.ns.ip(back);
        check().ok();
    }
    c.ns.run(|| std::fs::write("/proc/sys/net/core/somaxconn", "10").unwrap());
    assert!(check().stdout.contains("somaxconn"));
    c.ns.run(|| std::fs::write("/proc/sys/net/core/somaxconn", "1234").unwrap());
    check().ok();

    // promisc false (the default) means "must not be promiscuous".
    let mut off = cc.clone();
    off.as_object_mut().unwrap().remove("promisc");
    let r = w.run("CHECK", &c, c.ns.path(), &off, false, &[]);
    assert!(r.stdout.contains("promisc"), "{}", r.stdout);
}

#[test]
fn gc_with_empty_and_partial_valid_lists() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c1 = w.container("1.1.0");
    let c2 = w.container("1.1.0");
    let conf = w.conf("1.1.0", json!({"mtu": 1400}));
    w.add(&c1, &conf).ok();
    w.add(&c2, &conf).ok();
    // Another network's backup and a reference-written one (no owner): never ours to remove.
    let other = json!({"mtu": 1500, "cnirs": {"network": "other", "containerID": "x",
        "ifname": "eth0", "netnsInode": 1, "ifindex": 2}});
    std::fs::write(w.data.path().join("x_eth0.json"), other.to_string()).unwrap();
    std::fs::write(w.data.path().join("ref_eth0.json"), r#"{"mtu":1500}"#).unwrap();
    let gc = |valid: Value| {
        let mut g = w.conf("1.1.0", json!({}));
        g["cni.dev/valid-attachments"] = valid;
        testkit::run_in(
            &w.host,
            &testkit::bin("tuning"),
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/nonexistent")],
            &g.to_string(),
        )
    };
    let f1 = format!("{}_eth0.json", c1.cid);
    let f2 = format!("{}_eth0.json", c2.cid);
    let mut expect = vec![
        f1.clone(),
        f2.clone(),
        "ref_eth0.json".into(),
        "x_eth0.json".into(),
    ];
    expect.sort();
    assert_eq!(w.backups(), expect);

    gc(json!([{"containerID": c1.cid, "ifname": "eth0"}])).ok();
    let mut expect = vec![f1.clone(), "ref_eth0.json".into(), "x_eth0.json".into()];
    expect.sort();
    assert_eq!(w.backups(), expect);
    // GC removes files; it restores nothing (that is DEL's job).
    assert_eq!(link_state(&c2.ns, "eth0").mtu, 1400);

    gc(json!([])).ok();
    assert_eq!(
        w.backups(),
        vec!["ref_eth0.json".to_string(), "x_eth0.json".into()]
    );
    // DEL after GC still succeeds.
    w.run("DEL", &c1, c1.ns.path(), &conf, false, &[]).ok();
    // GC with no data dir at all.
    let mut g = w.conf("1.1.0", json!({"dataDir": w.data.path().join("none")}));
    g["cni.dev/valid-attachments"] = json!([]);
    testkit::run_in(
        &w.host,
        &testkit::bin("tuning"),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
        &g.to_string(),
    )
    .ok();
}

#[test]
fn hostile_input() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.0.0");
    let before = link_state(&c.ns, "eth0");
    let code = |conf: &Value, prev: bool, extra: &[(&str, &str)]| {
        w.run("ADD", &c, c.ns.path(), conf, prev, extra).err_code()
    };
    let s = |v: Value| w.conf("1.0.0", v);
    assert_eq!(
        code(&s(json!({"mtu": 1400})), false, &[]),
        7,
        "no prevResult"
    );
    assert_eq!(code(&s(json!({"mac": "02:00:00:00:00"})), true, &[]), 7);
    assert_eq!(code(&s(json!({"mac": "01:00:5e:00:00:01"})), true, &[]), 7);
    assert_eq!(code(&s(json!({"mtu": -1})), true, &[]), 6);
    assert_eq!(code(&s(json!({"mtu": "big"})), true, &[]), 6);
    assert_eq!(
        code(&s(json!({"sysctl": {"net.core.somaxconn": 5}})), true, &[]),
        6
    );
    assert_eq!(code(&s(json!({"sysctl": ["x"]})), true, &[]), 6);
    assert_eq!(code(&s(json!({"promisc": "yes"})), true, &[]), 6);
    assert_eq!(
        code(
            &s(json!({"sysctl": {"net.core.somaxconn": "1\n2"}})),
            true,
            &[]
        ),
        7
    );
    assert_eq!(
        code(&s(json!({"mtu": 1400})), true, &[("CNI_ARGS", "FOO=1")]),
        4
    );
    // An interface that is not there.
    let r = cni(
        &w.host,
        "tuning",
        "ADD",
        &c.cid,
        c.ns.path(),
        "eth9",
        &{
            let mut x = s(json!({"mtu": 1400}));
            x["prevResult"] = c.prev.clone();
            x
        },
        &[("CNIRS_TUNING_ALLOWLIST", "/nonexistent")],
    );
    assert!(r.code != 0 && r.stdout.contains("eth9"), "{}", r.stdout);

    // Duplicate keys (only visible in the raw JSON).
    let raw = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","type":"tuning","dataDir":"{}",
            "sysctl":{{"net.core.somaxconn":"1","net.core.somaxconn":"2"}},
            "prevResult":{}}}"#,
        w.net,
        w.data.path().display(),
        c.prev
    );
    let r = testkit::run_in(
        &w.host,
        &testkit::bin("tuning"),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &c.cid),
            ("CNI_NETNS", c.ns.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ],
        &raw,
    );
    assert_eq!(r.err_code(), 7, "{}", r.stdout);
    assert!(r.stdout.contains("duplicated"), "{}", r.stdout);

    assert_eq!(link_state(&c.ns, "eth0"), before);
    assert!(w.backups().is_empty(), "{:?}", w.backups());
}

#[test]
fn leftover_backups_are_handled() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let c = w.container("1.0.0");
    let before = link_state(&c.ns, "eth0");
    let conf = w.conf("1.0.0", json!({"mtu": 1400}));
    let del = || {
        w.run("DEL", &c, c.ns.path(), &conf, false, &[]).ok();
    };

    // A torn or corrupt file (an older crash): replaced by ADD, DEL restores the truth.
    std::fs::write(w.backup_path(&c), "{\"mtu\": 13").unwrap();
    std::fs::write(w.data.path().join(format!(".{}_eth0.json.tmp", c.cid)), "{").unwrap();
    w.add(&c, &conf).ok();
    del();
    assert_eq!(link_state(&c.ns, "eth0"), before);
    assert!(w.backups().is_empty(), "{:?}", w.backups());

    // A backup made for another namespace (a container ID reused after a missed DEL):
    // its values are not this interface's originals.
    let stale = json!({"mtu": 1280, "cnirs": {"network": w.net, "containerID": c.cid,
        "ifname": "eth0", "netnsInode": 1, "ifindex": 2}});
    std::fs::write(w.backup_path(&c), stale.to_string()).unwrap();
    w.add(&c, &conf).ok();
    del();
    assert_eq!(link_state(&c.ns, "eth0"), before);

    // A file the reference plugin wrote (no owner): DEL restores it by interface name.
    std::fs::write(w.backup_path(&c), r#"{"mtu":1280,"promisc":false}"#).unwrap();
    c.ns.ip(&["link", "set", "eth0", "promisc", "on"]);
    del();
    let st = link_state(&c.ns, "eth0");
    assert_eq!((st.mtu, st.promisc), (1280, false));
    assert!(w.backups().is_empty());
}
