//! The bandwidth plugin chained after the real bridge + host-local, run as a runtime runs
//! them (built binaries, spawned in a "host" namespace made for the test; containers are
//! namespaces of their own). Assertions on kernel state (tc, ip) and on measured TCP rates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use testkit::{Run, TestNs, cni, have_root, unique_name};

const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// One test's world: its host namespace, IPAM data dir and network name.
struct World {
    host: TestNs,
    data: TempDir,
    net: String,
}

/// A container attached by bridge: its namespace, its ID and the bridge result.
struct Ctr {
    ns: TestNs,
    id: String,
    prev: Value,
}

impl Ctr {
    fn host_veth(&self) -> String {
        self.prev["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn addr(&self) -> IpAddr {
        let a = self.prev["ips"][0]["address"].as_str().unwrap();
        a.split('/').next().unwrap().parse().unwrap()
    }
}

impl World {
    fn new() -> World {
        World::named(&unique_name("bw"))
    }

    fn named(net: &str) -> World {
        World {
            host: TestNs::new(),
            data: tempfile::tempdir().unwrap(),
            net: net.to_string(),
        }
    }

    fn bridge_conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.net,
            "type": "bridge",
            "bridge": "cnibw0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [[{"subnet": "10.88.0.0/24"}]],
            }
        })
    }

    /// A container on the bridge (ADD of bridge in `version`).
    fn container(&self, version: &str) -> Ctr {
        let ns = TestNs::new();
        let id = unique_name("ctr");
        let prev = cni(
            &self.host,
            "bridge",
            "ADD",
            &id,
            ns.path(),
            "eth0",
            &self.bridge_conf(version),
            &[],
        )
        .ok()
        .json();
        Ctr { ns, id, prev }
    }

    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({"cniVersion": version, "name": self.net, "type": "bandwidth"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// The bandwidth plugin for one verb; `prev` becomes prevResult.
    fn bw(&self, cmd: &str, cid: &str, netns: &str, conf: &Value, prev: Option<&Value>) -> Run {
        let mut c = conf.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        cni(&self.host, "bandwidth", cmd, cid, netns, "eth0", &c, &[])
    }

    fn add(&self, ctr: &Ctr, conf: &Value) -> Value {
        self.bw("ADD", &ctr.id, ctr.ns.path(), conf, Some(&ctr.prev))
            .ok()
            .json()
    }

    fn check(&self, ctr: &Ctr, conf: &Value, prev: &Value) -> Run {
        self.bw("CHECK", &ctr.id, ctr.ns.path(), conf, Some(prev))
    }

    fn gc(&self, conf: &Value, valid: &[&Ctr]) -> Run {
        let mut c = conf.clone();
        let list: Vec<Value> = valid
            .iter()
            .map(|v| json!({"containerID": v.id, "ifname": "eth0"}))
            .collect();
        c["cni.dev/valid-attachments"] = Value::Array(list);
        cni(&self.host, "bandwidth", "GC", "", "", "", &c, &[])
    }

    /// Names of the ifb devices in the host namespace.
    fn ifbs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .host
            .ip_json(&["-d", "link", "show", "type", "ifb"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// `tc -j qdisc show dev DEV`, the qdiscs of one kind.
    fn qdiscs(&self, dev: &str, kind: &str) -> Vec<Value> {
        let out = self.host.exec("tc", &["-j", "qdisc", "show", "dev", dev]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
        v.as_array()
            .unwrap()
            .iter()
            .filter(|q| q["kind"] == kind)
            .cloned()
            .collect()
    }

    fn tc(&self, args: &[&str]) -> String {
        let out = self.host.exec("tc", args);
        assert!(
            out.status.success(),
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn limits(ingress: (u64, u64), egress: (u64, u64)) -> Value {
    json!({
        "ingressRate": ingress.0, "ingressBurst": ingress.1,
        "egressRate": egress.0, "egressBurst": egress.1,
    })
}

/// The ifb interface of a result (the one named `bwp…`).
fn ifb_of(result: &Value) -> String {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("bwp"))
        .unwrap_or_else(|| panic!("no ifb in {result}"))
        .to_string()
}

/// Goodput in bits/s of a bulk TCP transfer from `client` to `addr` (served in `server`),
/// measured by the receiver from its first byte over a few seconds. No warm-up is cut off:
/// a loss makes the application see nothing until the retransmission arrives and then a
/// lump of data that arrived meanwhile, so a window that starts mid-stall would count data
/// from before it. From the first byte, the error is the tbf burst (a few %).
fn measure(server: &TestNs, client: &TestNs, addr: SocketAddr) -> f64 {
    let window = Duration::from_secs(3);
    let listener = server.run(|| TcpListener::bind(addr)).unwrap();
    std::thread::scope(|s| {
        let rx = s.spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut first: Option<Instant> = None;
            let mut bytes = 0u64;
            loop {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "sender stopped early");
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                bytes += n as u64;
                if now - t0 >= window {
                    return bytes as f64 * 8.0 / (now - t0).as_secs_f64();
                }
            }
        });
        let mut conn = client
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
            .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let chunk = vec![0x5au8; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(20);
        // Until the receiver hangs up (its window is done) or something is badly wrong.
        while Instant::now() < deadline && conn.write_all(&chunk).is_ok() {
            if rx.is_finished() {
                break;
            }
        }
        drop(conn);
        rx.join().unwrap()
    })
}

fn assert_rate(measured: f64, configured: u64, what: &str) {
    let ratio = measured / configured as f64;
    eprintln!(
        "{what}: measured {:.3} Mbit/s, configured {:.3} Mbit/s ({:.1} %)",
        measured / 1e6,
        configured as f64 / 1e6,
        ratio * 100.0
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "{what}: measured {measured:.0} bit/s for {configured} bit/s"
    );
}

/// Ingress 8 Mbit/s and egress 4 Mbit/s, each measured with a bulk TCP transfer; CHECK
/// passes, then fails once either tbf or the redirect is changed by hand; DEL (twice) takes
/// everything away.
#[test]
fn shapes_both_directions_and_check_sees_hand_changes() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let ctr = w.container("1.0.0");
    let (in_rate, eg_rate) = (8_000_000, 4_000_000);
    let conf = w.conf("1.0.0", limits((in_rate, 400_000), (eg_rate, 400_000)));
    let result = w.add(&ctr, &conf);

    // The result: prevResult's interfaces, then the ifb (name and MAC only).
    let ifb = ifb_of(&result);
    assert_eq!(
        result["interfaces"].as_array().unwrap().len(),
        4,
        "{result}"
    );
    assert_eq!(result["interfaces"][3]["name"], ifb);
    assert_eq!(result["interfaces"][3]["mac"].as_str().unwrap().len(), 17);
    assert_eq!(result["ips"], ctr.prev["ips"]);
    assert_eq!(ifb.len(), 15);

    // The kernel: tbf on the host veth, ingress qdisc + redirect to the ifb, tbf on the ifb.
    let veth = ctr.host_veth();
    let tbf = w.qdiscs(&veth, "tbf");
    assert_eq!(tbf.len(), 1, "{tbf:?}");
    assert_eq!(tbf[0]["handle"], "1:");
    assert_eq!(tbf[0]["options"]["rate"], in_rate / 8);
    assert_eq!(tbf[0]["options"]["burst"], 50_000);
    assert_eq!(w.qdiscs(&veth, "ingress").len(), 1);
    let filters = w.tc(&["filter", "show", "dev", &veth, "ingress"]);
    assert!(
        filters.contains(&format!("Egress Redirect to device {ifb}")),
        "{filters}"
    );
    let ifb_tbf = w.qdiscs(&ifb, "tbf");
    assert_eq!(ifb_tbf[0]["options"]["rate"], eg_rate / 8);
    let link = w.host.ip_json(&["-d", "link", "show", &ifb]);
    assert_eq!(
        link[0]["mtu"],
        w.host.ip_json(&["link", "show", &veth])[0]["mtu"]
    );
    // ip prints no txqlen when it is 0.
    assert!(matches!(link[0].get("txqlen"), None | Some(Value::Null)) || link[0]["txqlen"] == 0);
    assert!(link[0]["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(
        link[0]["ifalias"],
        format!("{}/{}/eth0", w.net, ctr.id),
        "{link}"
    );

    // Traffic: host → container is the ingress limit, container → host the egress one.
    let a = ctr.addr();
    let ingress = measure(&ctr.ns, &w.host, SocketAddr::new(a, 7101));
    assert_rate(ingress, in_rate, "ingress");
    let gw: IpAddr = "10.88.0.1".parse().unwrap();
    let egress = measure(&w.host, &ctr.ns, SocketAddr::new(gw, 7102));
    assert_rate(egress, eg_rate, "egress");

    // CHECK with the ADD result as prevResult.
    w.check(&ctr, &conf, &result).ok();
    // Another rate in the config: CHECK fails.
    let other = w.conf("1.0.0", limits((in_rate * 2, 400_000), (eg_rate, 400_000)));
    assert_ne!(w.check(&ctr, &other, &result).code, 0);

    // The ingress tbf changed by hand (same rate, other burst): CHECK fails, naming it.
    w.tc(&[
        "qdisc", "change", "dev", &veth, "root", "handle", "1:", "tbf", "rate", "8mbit", "burst",
        "60000", "latency", "25ms",
    ]);
    let r = w.check(&ctr, &conf, &result);
    assert_ne!(r.code, 0);
    assert!(
        r.json()["msg"].as_str().unwrap().contains("burst"),
        "{}",
        r.stdout
    );
    // Put back exactly as ADD made it (ADD again is idempotent on the kernel state).
    w.add(&ctr, &conf);
    w.check(&ctr, &conf, &result).ok();

    // The egress tbf's rate changed by hand.
    w.tc(&[
        "qdisc", "change", "dev", &ifb, "root", "handle", "1:", "tbf", "rate", "5mbit", "burst",
        "50000", "latency", "25ms",
    ]);
    let r = w.check(&ctr, &conf, &result);
    assert_ne!(r.code, 0);
    assert!(
        r.json()["msg"].as_str().unwrap().contains("rate"),
        "{}",
        r.stdout
    );
    w.add(&ctr, &conf);
    w.check(&ctr, &conf, &result).ok();

    // The redirect removed by hand.
    w.tc(&["filter", "del", "dev", &veth, "ingress"]);
    assert_ne!(w.check(&ctr, &conf, &result).code, 0);

    // DEL (twice): the ifb and the veth's qdiscs are gone.
    w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&result))
        .ok();
    assert!(w.ifbs().is_empty());
    assert!(w.qdiscs(&veth, "tbf").is_empty());
    assert!(w.qdiscs(&veth, "ingress").is_empty());
    w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&result))
        .ok();
}

/// Every version from 0.3.0, limits through the `bandwidth` capability; top-level keys beat
/// it when present.
#[test]
fn capability_in_every_version() {
    if !have_root() {
        return;
    }
    for version in ALL_VERSIONS {
        let w = World::new();
        let ctr = w.container(version);
        let rc = json!({"runtimeConfig": {"bandwidth": {
            "ingressRate": 16_000_000, "ingressBurst": 800_000,
            "egressRate": 24_000_000, "egressBurst": 800_000,
        }}});
        let conf = w.conf(version, rc.clone());
        let result = w.add(&ctr, &conf);
        assert_eq!(result["cniVersion"], version);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{result}"
        );
        let ifb = ifb_of(&result);
        assert_eq!(w.ifbs(), vec![ifb.clone()]);
        assert_eq!(
            w.qdiscs(&ctr.host_veth(), "tbf")[0]["options"]["rate"],
            2_000_000
        );
        assert_eq!(w.qdiscs(&ifb, "tbf")[0]["options"]["rate"], 3_000_000);
        if version >= "0.4.0" {
            w.check(&ctr, &conf, &result).ok();
        } else {
            assert_eq!(w.check(&ctr, &conf, &result).err_code(), 1);
        }
        w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&result))
            .ok();
        assert!(w.ifbs().is_empty(), "{version}");

        // A top-level key wins over the capability: ingress only, no ifb.
        let mut top = w.conf(version, rc);
        top["ingressRate"] = json!(8_000_000);
        top["ingressBurst"] = json!(80_000);
        let result = w.add(&ctr, &top);
        assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
        assert!(w.ifbs().is_empty());
        assert_eq!(
            w.qdiscs(&ctr.host_veth(), "tbf")[0]["options"]["rate"],
            1_000_000
        );
        w.bw("DEL", &ctr.id, ctr.ns.path(), &top, Some(&result))
            .ok();
    }
}

/// containerd passes a burst of 2^32-1 bits when a pod sets only a rate: at 10 Mbit/s a
/// bucket of 429 s, more ticks than the kernel API's u32 holds (the buffer is the largest
/// that fits). ADD and CHECK must both accept it.
#[test]
fn containerds_maximal_burst_passes_check() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let ctr = w.container("1.0.0");
    let conf = w.conf(
        "1.0.0",
        limits((10_000_000, 4_294_967_295), (10_000_000, 4_294_967_295)),
    );
    let result = w.add(&ctr, &conf);
    w.check(&ctr, &conf, &result).ok();
    // And CHECK still notices a changed rate.
    w.tc(&[
        "qdisc",
        "change",
        "dev",
        &ctr.host_veth(),
        "root",
        "handle",
        "1:",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "536870911",
        "latency",
        "25ms",
    ]);
    assert_ne!(w.check(&ctr, &conf, &result).code, 0);
    w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&result))
        .ok();
}

/// No limits, or all zero: prevResult comes back as it was and the kernel is untouched;
/// CHECK without limits succeeds.
#[test]
fn no_limits_is_pass_through() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let ctr = w.container("1.1.0");
    for extra in [
        json!({}),
        limits((0, 0), (0, 0)),
        json!({"runtimeConfig": {"bandwidth": {}}}),
        json!({"runtimeConfig": {"portMappings": []}}),
    ] {
        let conf = w.conf("1.1.0", extra);
        let out = w.add(&ctr, &conf);
        assert_eq!(out, ctr.prev, "{conf}");
        assert!(w.qdiscs(&ctr.host_veth(), "tbf").is_empty());
        assert!(w.ifbs().is_empty());
        w.check(&ctr, &conf, &out).ok();
        w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&out)).ok();
    }
    // Older result versions are passed through converted to the config's version.
    let conf = w.conf("0.4.0", json!({}));
    let out = w.add(&ctr, &conf);
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(out["ips"][0]["version"], "4");
}

/// DEL with neither prevResult nor netns removes the ifb; DEL with the container gone too.
/// With an empty CNI_NETNS and prevResult, the live veth's qdiscs go as well.
#[test]
fn del_without_prev_result_or_netns() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf("1.0.0", limits((8_000_000, 80_000), (8_000_000, 80_000)));

    let c1 = w.container("1.0.0");
    w.add(&c1, &conf);
    assert_eq!(w.ifbs().len(), 1);
    w.bw("DEL", &c1.id, "", &conf, None).ok();
    assert!(w.ifbs().is_empty());
    w.bw("DEL", &c1.id, "", &conf, None).ok();

    let c2 = w.container("1.0.0");
    let r2 = w.add(&c2, &conf);
    let veth = c2.host_veth();
    w.bw("DEL", &c2.id, "", &conf, Some(&r2)).ok();
    assert!(w.ifbs().is_empty());
    assert!(w.qdiscs(&veth, "tbf").is_empty());
    assert!(w.qdiscs(&veth, "ingress").is_empty());

    let c3 = w.container("1.0.0");
    let r3 = w.add(&c3, &conf);
    let path = c3.ns.path().to_string();
    let id = c3.id.clone();
    drop(c3); // the container namespace is gone (and with it both veth ends)
    w.bw("DEL", &id, &path, &conf, Some(&r3)).ok();
    assert!(w.ifbs().is_empty());
    w.bw("DEL", &id, &path, &conf, Some(&r3)).ok();
}

/// GC removes the ifbs of this network's attachments missing from the valid list (empty
/// list: all of them), and leaves other networks' ifbs and ifbs it cannot attribute.
#[test]
fn gc_empty_and_partial_lists() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let conf = w.conf("1.1.0", limits((8_000_000, 80_000), (8_000_000, 80_000)));
    let (a, b) = (w.container("1.1.0"), w.container("1.1.0"));
    let ifb_a = ifb_of(&w.add(&a, &conf));
    let ifb_b = ifb_of(&w.add(&b, &conf));

    // Another network on the same host, with the same container ID as `a`.
    let other_net = unique_name("oth");
    let mut other_conf = conf.clone();
    other_conf["name"] = json!(other_net);
    let mut other_bridge = w.bridge_conf("1.1.0");
    other_bridge["name"] = json!(other_net);
    other_bridge["bridge"] = json!("cnibw1");
    other_bridge["ipam"]["ranges"] = json!([[{"subnet": "10.89.0.0/24"}]]);
    let c = TestNs::new();
    let prev_c = cni(
        &w.host,
        "bridge",
        "ADD",
        &a.id,
        c.path(),
        "eth0",
        &other_bridge,
        &[],
    )
    .ok()
    .json();
    let mut cc = other_conf.clone();
    cc["prevResult"] = prev_c;
    let ifb_c = ifb_of(
        &cni(
            &w.host,
            "bandwidth",
            "ADD",
            &a.id,
            c.path(),
            "eth0",
            &cc,
            &[],
        )
        .ok()
        .json(),
    );
    // An ifb the reference plugin could have made: no alias, so no owner GC can tell.
    let stray = "bwp0123456789ab";
    w.host.ip(&["link", "add", stray, "type", "ifb"]);

    let mut all = vec![
        ifb_a.clone(),
        ifb_b.clone(),
        ifb_c.clone(),
        stray.to_string(),
    ];
    all.sort();
    assert_eq!(w.ifbs(), all);

    w.gc(&conf, &[&a]).ok();
    let mut left = vec![ifb_a.clone(), ifb_c.clone(), stray.to_string()];
    left.sort();
    assert_eq!(w.ifbs(), left, "partial list: only b's ifb goes");

    w.gc(&conf, &[]).ok();
    let mut left = vec![ifb_c.clone(), stray.to_string()];
    left.sort();
    assert_eq!(w.ifbs(), left, "empty list: every ifb of this network goes");

    // `cni.dev/attachments` (the older key) is read too.
    let mut old = other_conf.clone();
    old["cni.dev/attachments"] = json!([{"containerID": a.id, "ifname": "eth0"}]);
    cni(&w.host, "bandwidth", "GC", "", "", "", &old, &[]).ok();
    assert_eq!(w.ifbs().len(), 2);
    w.gc(&other_conf, &[]).ok();
    assert_eq!(w.ifbs(), vec![stray.to_string()]);

    // GC needs 1.1.0.
    let old_conf = w.conf("1.0.0", json!({}));
    assert_eq!(w.gc(&old_conf, &[]).err_code(), 1);
}

/// Bad input fails with the right code and leaves the kernel as it was.
#[test]
fn hostile_input() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let ctr = w.container("1.0.0");
    let veth = ctr.host_veth();
    let untouched = |what: &str| {
        assert!(w.ifbs().is_empty(), "{what}: ifb left");
        assert!(w.qdiscs(&veth, "tbf").is_empty(), "{what}: tbf left");
        assert!(
            w.qdiscs(&veth, "ingress").is_empty(),
            "{what}: ingress left"
        );
    };
    let code7 = [
        json!({"ingressRate": 1_000_000}),
        json!({"egressBurst": 1_000_000}),
        json!({"ingressRate": 1_000_000, "ingressBurst": 0, "egressRate": 8_000, "egressBurst": 8_000}),
        json!({"egressRate": 1_000_000, "egressBurst": 8u64 * u64::from(u32::MAX)}),
        json!({"ingressRate": -8, "ingressBurst": 8_000}),
        json!({"ingressRate": "8mbit", "ingressBurst": 8_000}),
        json!({"ingressRate": 8.5e6, "ingressBurst": 8_000}),
        json!({"ingressRate": 4, "ingressBurst": 8_000}),
        json!({"runtimeConfig": {"bandwidth": "fast"}}),
        json!({"runtimeConfig": {"bandwidth": {"egressRate": 8_000_000}}}),
    ];
    for extra in code7 {
        let conf = w.conf("1.0.0", extra.clone());
        let r = w.bw("ADD", &ctr.id, ctr.ns.path(), &conf, Some(&ctr.prev));
        assert_eq!(r.err_code(), 7, "{extra}: {}", r.stdout);
        untouched(&extra.to_string());
    }

    let good = w.conf("1.0.0", limits((8_000_000, 80_000), (8_000_000, 80_000)));
    // Limits but no prevResult: not chained.
    let r = w.bw("ADD", &ctr.id, ctr.ns.path(), &good, None);
    assert_eq!(r.err_code(), 7, "{}", r.stdout);
    // A version without chaining.
    let mut v020 = good.clone();
    v020["cniVersion"] = json!("0.2.0");
    assert_eq!(
        w.bw("ADD", &ctr.id, ctr.ns.path(), &v020, Some(&ctr.prev))
            .err_code(),
        1
    );
    // A prevResult that is not a result.
    assert_eq!(
        w.bw(
            "ADD",
            &ctr.id,
            ctr.ns.path(),
            &good,
            Some(&json!({"interfaces": "eth0"}))
        )
        .err_code(),
        6
    );
    // A netns that is not one.
    assert_eq!(
        w.bw("ADD", &ctr.id, "/etc/hostname", &good, Some(&ctr.prev))
            .err_code(),
        8
    );
    // An interface the container does not have.
    let r = cni(
        &w.host,
        "bandwidth",
        "ADD",
        &ctr.id,
        ctr.ns.path(),
        "eth7",
        &{
            let mut c = good.clone();
            c["prevResult"] = ctr.prev.clone();
            c
        },
        &[],
    );
    assert_ne!(r.code, 0);
    // A prevResult whose host interfaces do not include the veth peer.
    let mut wrong = ctr.prev.clone();
    wrong["interfaces"][1]["name"] = json!("vethother");
    let r = w.bw("ADD", &ctr.id, ctr.ns.path(), &good, Some(&wrong));
    assert!(
        r.json()["msg"].as_str().unwrap().contains("prevResult"),
        "{}",
        r.stdout
    );
    // Not a veth: a container interface of another kind.
    ctr.ns.ip(&["link", "add", "br9", "type", "bridge"]);
    let mut c = good.clone();
    c["prevResult"] = ctr.prev.clone();
    let r = cni(
        &w.host,
        "bandwidth",
        "ADD",
        &ctr.id,
        ctr.ns.path(),
        "br9",
        &c,
        &[],
    );
    assert!(
        r.json()["msg"].as_str().unwrap().contains("not a veth"),
        "{}",
        r.stdout
    );
    untouched("runtime errors");

    // DEL with limits that do not parse still removes the ifb.
    w.add(&ctr, &good);
    assert_eq!(w.ifbs().len(), 1);
    let bad = w.conf("1.0.0", json!({"ingressRate": "x"}));
    w.bw("DEL", &ctr.id, ctr.ns.path(), &bad, Some(&ctr.prev))
        .ok();
    untouched("DEL with bad limits");
}

/// A failing ADD takes back what it did: here the ifb name is held by another attachment
/// (its alias says so) after the ingress tbf was already in place.
#[test]
fn failed_add_rolls_back_and_leftovers_are_taken_over() {
    if !have_root() {
        return;
    }
    let w = World::new();
    let ctr = w.container("1.0.0");
    let veth = ctr.host_veth();
    let conf = w.conf("1.0.0", limits((8_000_000, 80_000), (8_000_000, 80_000)));
    let name = {
        // The name ADD will use, learnt from a first ADD/DEL.
        let r = w.add(&ctr, &conf);
        w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&r)).ok();
        ifb_of(&r)
    };
    w.host.ip(&["link", "add", &name, "type", "ifb"]);
    w.host
        .ip(&["link", "set", &name, "alias", "othernet/otherctr/eth0"]);
    let r = w.bw("ADD", &ctr.id, ctr.ns.path(), &conf, Some(&ctr.prev));
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("belongs to attachment"), "{}", r.stdout);
    assert!(w.qdiscs(&veth, "tbf").is_empty(), "ingress tbf rolled back");
    assert!(w.qdiscs(&veth, "ingress").is_empty());
    assert_eq!(w.ifbs(), vec![name.clone()], "the other owner's ifb stays");
    // DEL of this attachment does not remove an ifb another attachment owns.
    w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, None).ok();
    assert_eq!(w.ifbs(), vec![name.clone()]);
    w.host.ip(&["link", "del", &name]);

    // A leftover of an interrupted ADD (no alias yet, wrong MTU, down): taken over.
    w.host
        .ip(&["link", "add", &name, "mtu", "1280", "type", "ifb"]);
    let r = w.add(&ctr, &conf);
    assert_eq!(ifb_of(&r), name);
    let link = w.host.ip_json(&["link", "show", &name]);
    assert_eq!(link[0]["mtu"], 1500);
    assert!(link[0]["flags"].as_array().unwrap().contains(&json!("UP")));
    w.check(&ctr, &conf, &r).ok();
    w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&r)).ok();
    assert!(w.ifbs().is_empty());
}

/// An ifb made by another binary for the same network and container (the reference plugin
/// uses the same name): DEL and GC of ours remove it by name (DEL) — GC cannot, having no
/// owner to read.
#[test]
fn ifb_name_matches_the_reference() {
    // sha512("net1" + "ctr1"), first 12 hex digits.
    let out = std::process::Command::new("sh")
        .args(["-c", "printf %s net1ctr1 | sha512sum"])
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)[..12].to_string();
    assert_eq!(
        cni_bandwidth::shape::ifb_name("net1", "ctr1"),
        format!("bwp{hex}")
    );

    if !have_root() {
        return;
    }
    let w = World::named("net1");
    w.host
        .ip(&["link", "add", &format!("bwp{hex}"), "type", "ifb"]);
    let conf = w.conf("1.0.0", json!({}));
    w.bw("DEL", "ctr1", "", &conf, None).ok();
    assert!(w.ifbs().is_empty());
}

/// The reference plugin's binary (Debian's containernetworking-plugins), where installed.
fn reference_bandwidth() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from("/usr/lib/cni/bandwidth");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: the reference bandwidth plugin is not installed");
        None
    }
}

fn reference(w: &World, bin: &std::path::Path, cmd: &str, ctr: &Ctr, conf: &Value) -> Run {
    let path = testkit::bin_dir();
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", ctr.id.as_str()),
        ("CNI_NETNS", ctr.ns.path()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.to_str().unwrap()),
    ];
    testkit::run_in(&w.host, bin, &env, &conf.to_string())
}

/// Binaries swapped either way: CHECK and DEL of one accept what the other's ADD made (same
/// ifb name, same tbf arithmetic to the tick).
#[test]
fn interop_with_the_reference_binary() {
    if !have_root() {
        return;
    }
    let Some(refbin) = reference_bandwidth() else {
        return;
    };
    let w = World::new();
    let conf = w.conf("0.4.0", limits((8_000_000, 400_000), (3_000_000, 240_000)));

    // Reference ADD, our CHECK and DEL.
    let ctr = w.container("0.4.0");
    let mut c = conf.clone();
    c["prevResult"] = ctr.prev.clone();
    let r = reference(&w, &refbin, "ADD", &ctr, &c);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let result = r.json();
    let ifb = ifb_of(&result);
    w.check(&ctr, &conf, &result).ok();
    w.bw("DEL", &ctr.id, ctr.ns.path(), &conf, Some(&result))
        .ok();
    assert!(w.ifbs().is_empty(), "our DEL removes the reference's {ifb}");

    // Our ADD, the reference's CHECK and DEL.
    let ctr = w.container("0.4.0");
    let result = w.add(&ctr, &conf);
    let mut c = conf.clone();
    c["prevResult"] = result.clone();
    let r = reference(&w, &refbin, "CHECK", &ctr, &c);
    assert_eq!(r.code, 0, "reference CHECK: {} {}", r.stdout, r.stderr);
    // (Its CHECK does compare: a hand-changed rate fails it.)
    let ifb = ifb_of(&result);
    w.tc(&[
        "qdisc", "change", "dev", &ifb, "root", "handle", "1:", "tbf", "rate", "5mbit", "burst",
        "30000", "latency", "25ms",
    ]);
    assert_ne!(reference(&w, &refbin, "CHECK", &ctr, &c).code, 0);
    let r = reference(&w, &refbin, "DEL", &ctr, &c);
    assert_eq!(r.code, 0, "reference DEL: {} {}", r.stdout, r.stderr);
    assert!(w.ifbs().is_empty());
}
