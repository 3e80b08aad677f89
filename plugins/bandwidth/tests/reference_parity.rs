//! Our bandwidth and the reference's (Debian's 1.1.1 binary, /usr/lib/cni/bandwidth) given the
//! same input side by side, each in namespaces of its own (a host namespace holding the veth
//! made by the test, and a container namespace holding its peer `eth0`); then the qdiscs the
//! kernel reports on the host veth and on the ifb are compared: `tc -d -j qdisc show` whole
//! (but for reference counts), and every field of the tbf's TCA_OPTIONS from a netlink dump.
//!
//! Both sides use the same network name and container ID, so even the ifb names are equal.
//! Where the reference's arithmetic wraps a count past u32 (long buffers, limits past 4 GiB)
//! ours saturates: each case says which fields differ for that reason, and both sides must
//! then hold exactly what [`Tbf::from_bits`] and [`Tbf::from_bits_as_reference`] compute.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use common::netlink::RouteSocket;
use common::netlink::tc::{PschedClock, Qdisc, Tbf};
use common::netns::NetNs;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use testkit::{Run, TestNs, have_root, run_in, unique_name};

const REFERENCE: &str = "/usr/lib/cni/bandwidth";
const VETH: &str = "vhparity";
const LATENCY_MS: u32 = 25;
/// containerd's burst for a pod with a bandwidth annotation: MaxUint32 bits.
const CONTAINERD_BURST: u64 = 4_294_967_295;
/// CRI-O's: MaxUint32·8 − 1 bits, just under the 4 GB the plugins accept.
const CRIO_BURST: u64 = 34_359_738_359;
const U32_MAX: u64 = u32::MAX as u64;

/// The reference binary; None (skip) where it is not installed, a failure under CI.
fn reference() -> Option<PathBuf> {
    if !have_root() {
        return None;
    }
    let p = PathBuf::from(REFERENCE);
    if p.is_file() {
        return Some(p);
    }
    testkit::cannot_run(&format!("{REFERENCE} is missing"));
    None
}

/// Where a limit comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The top-level keys of the config.
    Config,
    /// `runtimeConfig.bandwidth`, as a runtime passes a pod's annotations.
    Capability,
}

/// What the two plugins must do with one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The same qdiscs, field for field.
    Same,
    /// The same but for these tbf fields, where the reference wraps and ours saturates.
    Differ(&'static [&'static str]),
    /// Both fail (ours with code 7, before touching anything).
    Refused,
}

struct Case {
    name: &'static str,
    rate: u64,
    burst: u64,
    source: Source,
    expect: Expect,
}

const fn case(name: &'static str, rate: u64, burst: u64, source: Source, expect: Expect) -> Case {
    Case {
        name,
        rate,
        burst,
        source,
        expect,
    }
}

use Expect::{Differ, Refused, Same};
use Source::{Capability, Config};

const BUFFER: &[&str] = &["buffer"];
const LIMIT: &[&str] = &["limit"];
const BOTH: &[&str] = &["buffer", "limit"];

/// Kubernetes' annotations (1k..1P bit/s) with containerd's and CRI-O's bursts.
const KUBERNETES: &[Case] = &[
    case(
        "containerd 10M",
        10_000_000,
        CONTAINERD_BURST,
        Capability,
        Differ(BUFFER),
    ),
    // The reference's buffer wraps to 4376 ticks: a 273-byte bucket, full-size packets dropped.
    case(
        "containerd 7812500",
        7_812_500,
        CONTAINERD_BURST,
        Capability,
        Differ(BUFFER),
    ),
    case(
        "containerd 1k",
        1_000,
        CONTAINERD_BURST,
        Capability,
        Differ(BUFFER),
    ),
    case(
        "containerd 15624k (the last wrapping k)",
        15_624_000,
        CONTAINERD_BURST,
        Capability,
        Differ(BUFFER),
    ),
    case(
        "containerd 15625k",
        15_625_000,
        CONTAINERD_BURST,
        Capability,
        Same,
    ),
    case(
        "containerd 100M",
        100_000_000,
        CONTAINERD_BURST,
        Capability,
        Same,
    ),
    case(
        "containerd 1G",
        1_000_000_000,
        CONTAINERD_BURST,
        Capability,
        Same,
    ),
    case(
        "containerd 1T",
        1_000_000_000_000,
        CONTAINERD_BURST,
        Capability,
        Same,
    ),
    case(
        "containerd 1P",
        1_000_000_000_000_000,
        CONTAINERD_BURST,
        Capability,
        Differ(LIMIT),
    ),
    case(
        "CRI-O 10M",
        10_000_000,
        CRIO_BURST,
        Capability,
        Differ(BOTH),
    ),
    case("CRI-O 1k", 1_000, CRIO_BURST, Capability, Differ(BOTH)),
    case(
        "CRI-O 200M",
        200_000_000,
        CRIO_BURST,
        Capability,
        Differ(LIMIT),
    ),
    case(
        "CRI-O 1G",
        1_000_000_000,
        CRIO_BURST,
        Capability,
        Differ(LIMIT),
    ),
    case(
        "CRI-O 1P",
        1_000_000_000_000_000,
        CRIO_BURST,
        Capability,
        Differ(LIMIT),
    ),
];

/// Values of the other tests, small, huge, odd, and what both refuse.
const OTHERS: &[Case] = &[
    case("8M/400k", 8_000_000, 400_000, Config, Same),
    case("3M/240k", 3_000_000, 240_000, Config, Same),
    case("1M/80k", 1_000_000, 80_000, Config, Same),
    case("16M/800k", 16_000_000, 800_000, Capability, Same),
    case(
        "10M/2^32-1 top-level",
        10_000_000,
        CONTAINERD_BURST,
        Config,
        Differ(BUFFER),
    ),
    case("1000 bit/s, one MTU", 1_000, 12_000, Config, Same),
    case("1 byte/s, 1 byte", 8, 8, Config, Same),
    // 4400 s of burst: the reference's microseconds pass 2^32 and wrap.
    case("1 byte/s, 4400 bytes", 8, 8 * 4_400, Config, Differ(BUFFER)),
    case("not multiples of 8", 1_000_007, 80_007, Config, Same),
    case("12345678901/98765", 12_345_678_901, 98_765, Config, Same),
    case(
        "u32::MAX B/s (no rate64)",
        34_359_738_360,
        80_000,
        Config,
        Same,
    ),
    case("2^32 B/s (rate64)", 34_359_738_368, 80_000, Config, Same),
    case(
        "1P, 1 GB",
        1_000_000_000_000_000,
        8_000_000_000,
        Config,
        Differ(LIMIT),
    ),
    case(
        "largest burst",
        8_000_000,
        8 * (U32_MAX - 1),
        Config,
        Differ(BOTH),
    ),
    // A bucket worth less than a byte, which the kernel refuses.
    case("1 byte at 3 B/s", 24, 8, Config, Refused),
    case(
        "1P, 1250 bytes",
        1_000_000_000_000_000,
        10_000,
        Config,
        Refused,
    ),
    case("u64::MAX bit/s", u64::MAX, CRIO_BURST, Config, Refused),
    case("under a byte/s", 7, 8_000, Config, Refused),
    case("4 GB burst", 8_000_000, 8 * U32_MAX, Config, Refused),
];

/// One implementation's world: a host namespace with the veth `VETH`, its peer `eth0` in a
/// container namespace.
struct Side {
    host: TestNs,
    ctr: TestNs,
}

impl Side {
    fn new() -> Side {
        let host = TestNs::new();
        let ctr = TestNs::new();
        host.ip(&[
            "link",
            "add",
            VETH,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ctr.tid(),
        ]);
        host.ip(&["link", "set", VETH, "up"]);
        ctr.ip(&["link", "set", "eth0", "up"]);
        Side { host, ctr }
    }

    fn prev_result(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": VETH}, {"name": "eth0", "sandbox": self.ctr.path()}],
            "ips": [],
        })
    }

    /// The plugin `bin` for one verb, in the host namespace; `prev` becomes prevResult.
    fn run(&self, bin: &Path, cmd: &str, cid: &str, conf: &Value, prev: &Value) -> Run {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        let path = testkit::bin_dir();
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", self.ctr.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.to_str().unwrap()),
        ];
        run_in(&self.host, bin, &env, &c.to_string())
    }

    /// `tc -d -j qdisc show dev DEV`, without the reference counts.
    fn tc(&self, dev: &str) -> Value {
        let out = self
            .host
            .exec("tc", &["-d", "-j", "qdisc", "show", "dev", dev]);
        assert!(
            out.status.success(),
            "tc qdisc show dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        for q in v.as_array_mut().unwrap() {
            q.as_object_mut().unwrap().remove("refcnt");
        }
        v
    }

    /// The root qdisc of `dev`, as our netlink dump reads it.
    fn root_qdisc(&self, dev: &str) -> Qdisc {
        let ns = NetNs::open(self.host.path()).unwrap();
        let mut s = RouteSocket::open_in(&ns).unwrap();
        let index = s.link_by_name(dev).unwrap().unwrap().index;
        s.root_qdisc(index).unwrap().unwrap()
    }

    fn ifbs(&self) -> Vec<String> {
        self.host
            .ip_json(&["link", "show", "type", "ifb"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
}

/// `struct tc_ratespec`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RateSpec {
    cell_log: u8,
    linklayer: u8,
    overhead: u16,
    cell_align: i16,
    mpu: u16,
    rate: u32,
}

/// Every field of a tbf's TCA_OPTIONS: `struct tc_tbf_qopt` field by field, and every other
/// attribute (RATE64, ...) as type and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TbfFields {
    rate: RateSpec,
    peakrate: RateSpec,
    limit: u32,
    buffer: u32,
    mtu: u32,
    others: Vec<(u16, Vec<u8>)>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn ratespec(b: &[u8]) -> RateSpec {
    RateSpec {
        cell_log: b[0],
        linklayer: b[1],
        overhead: u16_at(b, 2),
        cell_align: u16_at(b, 4) as i16,
        mpu: u16_at(b, 6),
        rate: u32_at(b, 8),
    }
}

/// Decodes the nested attributes of a tbf's TCA_OPTIONS.
fn tbf_fields(options: &[u8]) -> TbfFields {
    let mut parms = None;
    let mut others = Vec::new();
    let mut at = 0;
    while at + 4 <= options.len() {
        let len = usize::from(u16_at(options, at));
        let kind = u16_at(options, at + 2) & 0x3fff;
        assert!(len >= 4 && at + len <= options.len(), "bad attribute");
        let value = &options[at + 4..at + len];
        if kind == 1 {
            assert_eq!(value.len(), 36, "sizeof(struct tc_tbf_qopt)");
            parms = Some(value.to_vec());
        } else {
            others.push((kind, value.to_vec()));
        }
        at += (len + 3) & !3;
    }
    let p = parms.expect("no TCA_TBF_PARMS");
    TbfFields {
        rate: ratespec(&p[0..12]),
        peakrate: ratespec(&p[12..24]),
        limit: u32_at(&p, 24),
        buffer: u32_at(&p, 28),
        mtu: u32_at(&p, 32),
        others,
    }
}

/// The tc view without what tc derives from buffer and limit (burst, lat, limit).
fn without_derived(mut tc: Value) -> Value {
    for q in tc.as_array_mut().unwrap() {
        if let Some(o) = q.get_mut("options").and_then(Value::as_object_mut) {
            for k in ["burst", "lat", "limit"] {
                o.remove(k);
            }
        }
    }
    tc
}

fn conf(net: &str, case: &Case) -> Value {
    let limits = json!({
        "ingressRate": case.rate, "ingressBurst": case.burst,
        "egressRate": case.rate, "egressBurst": case.burst,
    });
    let mut c = json!({"cniVersion": "1.0.0", "name": net, "type": "bandwidth"});
    match case.source {
        Source::Config => {
            for (k, v) in limits.as_object().unwrap() {
                c[k] = v.clone();
            }
        }
        Source::Capability => {
            c["capabilities"] = json!({"bandwidth": true});
            c["runtimeConfig"] = json!({"bandwidth": limits});
        }
    }
    c
}

/// Runs one case on both sides and compares what the kernel holds.
fn compare(reference: &Path, case: &Case) {
    let what = case.name;
    let net = unique_name("par");
    let cid = unique_name("cid");
    let conf = conf(&net, case);
    let ours_bin = testkit::bin("bandwidth");
    let (ours, theirs) = (Side::new(), Side::new());
    let ours_add = ours.run(&ours_bin, "ADD", &cid, &conf, &ours.prev_result());
    let theirs_add = theirs.run(reference, "ADD", &cid, &conf, &theirs.prev_result());

    if case.expect == Refused {
        assert_eq!(ours_add.err_code(), 7, "{what}: {}", ours_add.stdout);
        assert_ne!(theirs_add.code, 0, "{what}: the reference accepted it");
        assert!(ours.ifbs().is_empty(), "{what}: ifb left");
        let veth = ours.tc(VETH);
        assert!(
            !veth
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["kind"] == "tbf" || q["kind"] == "ingress"),
            "{what}: {veth}"
        );
        eprintln!("{what}: refused by both");
        return;
    }
    assert_eq!(ours_add.code, 0, "{what}: ours: {}", ours_add.stdout);
    assert_eq!(
        theirs_add.code, 0,
        "{what}: reference: {} {}",
        theirs_add.stdout, theirs_add.stderr
    );
    let ours_result = ours_add.json();
    let theirs_result = theirs_add.json();
    let ifb = ours.ifbs();
    assert_eq!(ifb.len(), 1, "{what}");
    assert_eq!(
        theirs.ifbs(),
        ifb,
        "{what}: the same ifb name on both sides"
    );
    let ifb = &ifb[0];

    let clock = PschedClock::read();
    let want_ours = Tbf::from_bits(case.rate, case.burst, LATENCY_MS, clock).unwrap();
    let want_theirs =
        Tbf::from_bits_as_reference(case.rate, case.burst, LATENCY_MS, clock).unwrap();
    let mut differ = Vec::new();
    if want_ours.buffer != want_theirs.buffer {
        differ.push("buffer");
    }
    if want_ours.limit != want_theirs.limit {
        differ.push("limit");
    }
    assert_eq!(want_ours.rate, want_theirs.rate);
    let expected: &[&str] = match case.expect {
        Differ(fields) => fields,
        _ => &[],
    };
    assert_eq!(differ, expected, "{what}: where the reference wraps");

    for dev in [VETH, ifb.as_str()] {
        // The whole tc view: every qdisc of the device (tbf, and the ingress qdisc on the veth).
        let (tc_ours, tc_theirs) = (ours.tc(dev), theirs.tc(dev));
        if differ.is_empty() {
            assert_eq!(tc_ours, tc_theirs, "{what}: tc qdisc show dev {dev}");
        } else {
            assert_eq!(
                without_derived(tc_ours.clone()),
                without_derived(tc_theirs.clone()),
                "{what}: tc qdisc show dev {dev}"
            );
        }

        // Every field of the tbf, from the kernel.
        let (q_ours, q_theirs) = (ours.root_qdisc(dev), theirs.root_qdisc(dev));
        assert_eq!(
            (q_ours.kind.as_str(), q_ours.handle, q_ours.parent),
            (q_theirs.kind.as_str(), q_theirs.handle, q_theirs.parent),
            "{what}: {dev}"
        );
        assert_eq!(q_ours.tbf, Some(want_ours), "{what}: ours on {dev}");
        assert_eq!(
            q_theirs.tbf,
            Some(want_theirs),
            "{what}: reference on {dev}"
        );
        let (f_ours, f_theirs) = (tbf_fields(&q_ours.options), tbf_fields(&q_theirs.options));
        let mut aligned = f_ours.clone();
        if !differ.is_empty() {
            aligned.buffer = f_theirs.buffer;
            aligned.limit = f_theirs.limit;
        }
        assert_eq!(aligned, f_theirs, "{what}: tbf fields on {dev}");
        assert_eq!(
            u64::from(f_ours.rate.rate),
            want_ours.rate.min(u64::from(u32::MAX))
        );
        assert_eq!(
            f_ours.others.iter().any(|(kind, _)| *kind == 4),
            want_ours.rate > u64::from(u32::MAX),
            "{what}: TCA_TBF_RATE64 exactly when the rate passes u32"
        );
        if dev == VETH {
            eprintln!(
                "{what}: rate {} B/s, buffer {} ticks, limit {} B (reference: buffer {}, limit {})",
                want_ours.rate, f_ours.buffer, f_ours.limit, f_theirs.buffer, f_theirs.limit
            );
        }
    }

    // Our CHECK accepts both our qdiscs and the reference's (a node switched from the
    // reference keeps passing CHECK); the reference's CHECK accepts ours where nothing
    // wraps.
    ours.run(&ours_bin, "CHECK", &cid, &conf, &ours_result).ok();
    theirs
        .run(&ours_bin, "CHECK", &cid, &conf, &theirs_result)
        .ok();
    let r = ours.run(reference, "CHECK", &cid, &conf, &ours_result);
    assert_eq!(
        r.code == 0,
        differ.is_empty(),
        "{what}: the reference's CHECK on our qdiscs: {} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn kubernetes_values_make_the_references_tbf() {
    let Some(reference) = reference() else {
        return;
    };
    for case in KUBERNETES {
        compare(&reference, case);
    }
}

#[test]
fn small_huge_and_odd_values_make_the_references_tbf() {
    let Some(reference) = reference() else {
        return;
    };
    for case in OTHERS {
        compare(&reference, case);
    }
}
