//! Traffic control against the real kernel, each test in its own network namespace, checked
//! with `tc` and `ip` (root only).

use super::*;
use crate::netlink::{RouteSocket, VethSpec};
use crate::netns::NetNs;
use nix::sched::{CloneFlags, unshare};
use serde_json::Value;
use std::process::Command;

fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root (network namespaces)");
        false
    }
}

/// Runs `f` on a thread that has its own fresh network namespace (gone when it ends);
/// processes it spawns start in that namespace.
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(program: &str, args: &[&str]) -> Value {
    let out = run(program, args);
    if out.trim().is_empty() {
        Value::Array(vec![])
    } else {
        serde_json::from_str(&out).unwrap()
    }
}

/// A veth pair `v0`/`v1` in the current namespace, both up; returns v0's index.
fn veth() -> (RouteSocket, u32) {
    let mut s = RouteSocket::open().unwrap();
    let me = NetNs::open("/proc/thread-self/ns/net").unwrap();
    s.create_veth(&VethSpec {
        name: "v0",
        peer_name: "v1",
        peer_ns: &me,
        mtu: 1400,
        peer_mac: None,
    })
    .unwrap();
    let v0 = s.link_by_name("v0").unwrap().unwrap().index;
    let v1 = s.link_by_name("v1").unwrap().unwrap().index;
    s.set_up(v0).unwrap();
    s.set_up(v1).unwrap();
    (s, v0)
}

#[test]
fn psched_parsing() {
    let c = PschedClock::parse("000003e8 00000040 000f4240 3b9aca00\n").unwrap();
    assert_eq!(c, PschedClock::DEFAULT);
    assert_eq!(c.ticks_per_usec, 15.625);
    // A nanosecond clock resolution means ticks are reported 1:1 (Go's compatibility case).
    let ns = PschedClock::parse("000003e8 00000040 3b9aca00 3b9aca00").unwrap();
    assert_eq!(ns.ticks_per_usec, 1000.0);
    assert!(PschedClock::parse("").is_none());
    assert!(PschedClock::parse("zz 40 f4240").is_none());
    assert!(PschedClock::parse("3e8 0 f4240 1").is_none());
}

#[test]
fn tbf_parameters_follow_the_reference_arithmetic() {
    let c = PschedClock::DEFAULT;
    // 1 Mbit/s, burst 80 kbit: 125000 B/s, 10000 B = 80000 µs = 1250000 ticks,
    // limit = 125000 * 0.025 + 10000.
    let t = Tbf::from_bits(1_000_000, 80_000, 25, c).unwrap();
    assert_eq!(
        t,
        Tbf {
            rate: 125_000,
            buffer: 1_250_000,
            limit: 13_125,
        }
    );
    assert_eq!(t.burst_bytes(c), 10_000);
    assert_eq!(t.max_packet(), 10_000);
    assert_eq!(
        Tbf::from_bits_as_reference(1_000_000, 80_000, 25, c),
        Some(t)
    );
    // Bits that do not make a whole byte are dropped.
    assert_eq!(Tbf::from_bits(1_000_007, 80_007, 25, c).unwrap(), t);

    for (rate, burst) in [(7, 800), (800, 7), (800, 8 * u64::from(u32::MAX))] {
        let e = Tbf::from_bits(rate, burst, 25, c).unwrap_err();
        assert_eq!(e.code(), 7, "{rate} {burst}: {e}");
        assert_eq!(Tbf::from_bits_as_reference(rate, burst, 25, c), None);
    }
    // The largest burst allowed.
    assert!(Tbf::from_bits(800, 8 * u64::from(u32::MAX - 1), 25, c).is_ok());
}

/// Where a count does not fit a u32, ours is the largest that does and the reference's wraps
/// (Go's float-to-uint32 conversion on amd64, and u32 sums); everywhere else they agree.
#[test]
fn tbf_counts_saturate_where_the_reference_wraps() {
    let c = PschedClock::DEFAULT;
    let both = |rate: u64, burst: u64| {
        (
            Tbf::from_bits(rate, burst, 25, c).unwrap(),
            Tbf::from_bits_as_reference(rate, burst, 25, c).unwrap(),
        )
    };

    // containerd's burst (2^32-1 bits = 536870911 B) at 10 Mbit/s: 429496728 µs is
    // 6710886375 ticks; the reference keeps 6710886375 - 2^32.
    let (ours, reference) = both(10_000_000, 4_294_967_295);
    assert_eq!((ours.buffer, reference.buffer), (u32::MAX, 2_415_919_079));
    assert_eq!(ours.limit, 31_250 + 536_870_911);
    assert_eq!(reference.limit, ours.limit);

    // At 7.8125 Mbit/s the reference's buffer wraps to 4376 ticks (280 µs): its largest
    // packet is 273 bytes, so nothing of full size gets through.
    let (ours, reference) = both(7_812_500, 4_294_967_295);
    assert_eq!(reference.buffer, 4_376);
    assert_eq!(reference.max_packet(), 273);
    assert_eq!(ours.buffer, u32::MAX);
    assert_eq!(ours.max_packet(), 4_194_301);

    // CRI-O's burst (2^35-9 bits = 2^32-2 B): the limit passes 2^32; the reference's sum
    // wraps to 25 ms of traffic minus 2 bytes.
    let (ours, reference) = both(10_000_000, 34_359_738_359);
    assert_eq!((ours.limit, reference.limit), (u32::MAX, 31_248));
    assert_eq!((ours.buffer, reference.buffer), (u32::MAX, 2_147_483_619));
    // ... and below 480 kbit/s the wrapped limit is less than a full-size packet.
    let (ours, reference) = both(1_000, 34_359_738_359);
    assert_eq!((ours.limit, reference.limit), (u32::MAX, 1));

    // The microseconds themselves pass 2^32 (1 B/s, 4400 B: 4.4e9 µs).
    let (ours, reference) = both(8, 8 * 4_400);
    assert_eq!(ours.buffer, u32::MAX);
    assert_eq!(
        reference.buffer,
        ((4_400_000_000u64 - (1 << 32)) * 125 / 8) as u32
    );

    // 1 Pbit/s: rate·25 ms is 3.125e12 bytes, past u32 on its own.
    let (ours, reference) = both(1_000_000_000_000_000, 4_294_967_295);
    assert_eq!(ours.rate, 125_000_000_000_000);
    assert_eq!((ours.buffer, reference.buffer), (62, 62));
    assert_eq!(ours.limit, u32::MAX);
    let wrapped = (3_125_000_000_000u64 % (1 << 32)) as u32;
    assert_eq!(reference.limit, wrapped.wrapping_add(536_870_911));

    // Nothing overflows: identical, to the tick.
    for (rate, burst) in [
        (100_000_000, 4_294_967_295),
        (1_000_000_000, 34_359_738_359 / 8),
        (8, 8),
        (34_359_738_360, 80_000),
        (34_359_738_368, 80_000),
    ] {
        let (ours, reference) = both(rate, burst);
        assert_eq!(ours, reference, "{rate} {burst}");
    }
}

/// The kernel refuses a tbf whose bucket lets no byte through; so does from_bits, with code 7.
#[test]
fn tbf_with_an_empty_bucket_is_refused() {
    let c = PschedClock::DEFAULT;
    for (rate, burst) in [
        // 1 B at 3 B/s: 333333 µs, 5208328 ticks = 333332992 ns, worth 0.99 byte.
        (24, 8),
        // 1250 B at 1.25e14 B/s: under a microsecond, 0 ticks.
        (1_000_000_000_000_000, 10_000),
        (u64::MAX, 34_359_738_359),
    ] {
        let e = Tbf::from_bits(rate, burst, 25, c).unwrap_err();
        assert_eq!(e.code(), 7, "{rate} {burst}: {e}");
        let reference = Tbf::from_bits_as_reference(rate, burst, 25, c).unwrap();
        assert_eq!(reference.max_packet(), 0, "{rate} {burst}");
    }
}

#[test]
fn go_conversions_wrap_as_on_amd64() {
    // Values printed by go1.19 on amd64 for uint32(float64(x)).
    for (x, go) in [
        (4_294_967_295.9, 4_294_967_295u32),
        (4_294_967_296.0, 0),
        (6_710_886_375.0, 2_415_919_079),
        (3.125e12, 2_558_775_808),
        (9.3e18, 0),
        (1e20, 0),
        (-1.0, 4_294_967_295),
        (f64::NAN, 0),
    ] {
        assert_eq!(Narrowing::Wrap.count(x), go, "{x}");
    }
    assert_eq!(Narrowing::Saturate.count(6_710_886_375.0), u32::MAX);
    assert_eq!(Narrowing::Saturate.count(-1.0), 0);
    assert_eq!(Narrowing::Wrap.sum(4_294_967_294, 31_250), 31_248);
    assert_eq!(Narrowing::Saturate.sum(4_294_967_294, 31_250), u32::MAX);
}

#[test]
fn tbf_encoding_roundtrips_and_uses_rate64_above_u32() {
    let small = Tbf {
        rate: 125_000,
        buffer: 1_250_000,
        limit: 13_125,
    };
    let big = Tbf {
        rate: 5 << 32,
        buffer: 7,
        limit: 9,
    };
    for t in [small, big] {
        let opts = t.options();
        assert_eq!(opts.len(), if t.rate > u64::from(u32::MAX) { 2 } else { 1 });
        let mut nested = vec![0u8; opts.as_slice().buffer_len()];
        opts.as_slice().emit(&mut nested);
        assert_eq!(Tbf::parse(&nested), Some(t));
    }
}

use netlink_packet_core::Emitable;

#[test]
fn tbf_root_add_replace_dump_delete() {
    if !have_root() {
        return;
    }
    in_netns(|| {
        let (mut s, v0) = veth();
        let clock = PschedClock::read();
        let t = Tbf::from_bits(8_000_000, 800_000, 25, clock).unwrap();
        s.add_tbf(v0, &t).unwrap();

        let root = s.root_qdisc(v0).unwrap().unwrap();
        assert_eq!(root.kind, "tbf");
        assert_eq!(root.handle, TBF_HANDLE);
        assert_eq!(root.tbf, Some(t));

        // tc agrees: rate 8 Mbit, burst 100000 bytes, and a limit worth 25 ms.
        let q = json("tc", &["-j", "qdisc", "show", "dev", "v0"]);
        let tbf = q
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["kind"] == "tbf")
            .unwrap_or_else(|| panic!("{q}"));
        assert_eq!(tbf["handle"], "1:");
        assert_eq!(tbf["options"]["rate"], 1_000_000, "{tbf}");
        assert_eq!(tbf["options"]["burst"], 100_000, "{tbf}");
        assert_eq!(tbf["options"]["lat"], 25_000, "{tbf}");

        // A second add is refused; replace changes it in place.
        assert!(s.add_tbf(v0, &t).unwrap_err().is_exists());
        let t2 = Tbf::from_bits(16_000_000, 800_000, 25, clock).unwrap();
        s.replace_tbf(v0, &t2).unwrap();
        assert_eq!(s.root_qdisc(v0).unwrap().unwrap().tbf, Some(t2));

        // A rate above 2^32 bytes/s goes through TCA_TBF_RATE64.
        let fast = Tbf::from_bits(8 * (6u64 << 32), 8 * 1_000_000, 25, clock).unwrap();
        s.replace_tbf(v0, &fast).unwrap();
        let got = s.root_qdisc(v0).unwrap().unwrap().tbf.unwrap();
        assert_eq!(got.rate, 6u64 << 32);
        assert_eq!(got, fast);

        // A buffer of u32::MAX ticks (275 s, past the 2^32 ns the kernel uses for its
        // largest packet) comes back whole.
        let long = Tbf::from_bits(10_000_000, 4_294_967_295, 25, clock).unwrap();
        assert_eq!(long.buffer, u32::MAX);
        s.replace_tbf(v0, &long).unwrap();
        assert_eq!(s.root_qdisc(v0).unwrap().unwrap().tbf, Some(long));

        // Replace also takes over a root qdisc someone else put there.
        run(
            "tc",
            &[
                "qdisc", "replace", "dev", "v0", "root", "handle", "5:", "pfifo",
            ],
        );
        s.replace_tbf(v0, &t).unwrap();
        assert_eq!(s.root_qdisc(v0).unwrap().unwrap().tbf, Some(t));

        assert!(s.delete_qdisc(v0, TC_H_ROOT, TBF_HANDLE).unwrap());
        assert!(!s.delete_qdisc(v0, TC_H_ROOT, TBF_HANDLE).unwrap());
        assert_ne!(
            s.root_qdisc(v0).unwrap().map(|q| q.kind),
            Some("tbf".into())
        );
        // A device that does not exist has no qdiscs.
        assert!(s.qdiscs(99_999).unwrap().is_empty());
        assert!(!s.delete_qdisc(99_999, TC_H_ROOT, TBF_HANDLE).unwrap());
    });
}

#[test]
fn a_hand_made_tbf_reads_as_tc_wrote_it() {
    if !have_root() {
        return;
    }
    in_netns(|| {
        let (mut s, v0) = veth();
        run(
            "tc",
            &[
                "qdisc", "add", "dev", "v0", "root", "handle", "1:", "tbf", "rate", "4mbit",
                "burst", "50000", "limit", "60000",
            ],
        );
        let t = s.root_qdisc(v0).unwrap().unwrap().tbf.unwrap();
        assert_eq!(t.rate, 500_000);
        assert_eq!(t.limit, 60_000);
        assert_eq!(t.burst_bytes(PschedClock::read()), 50_000);
    });
}

#[test]
fn ingress_redirect_to_ifb() {
    if !have_root() {
        return;
    }
    in_netns(|| {
        let (mut s, v0) = veth();
        s.create_ifb("ifbt0", 1400, Some("net/cid/eth0")).unwrap();
        let ifb = s.ifb_by_name("ifbt0").unwrap().unwrap();
        assert_eq!(ifb.mtu, 1400);
        assert_eq!(ifb.txqlen, 0);
        assert!(ifb.up);
        assert!(ifb.mac.is_some());
        assert_eq!(ifb.alias.as_deref(), Some("net/cid/eth0"));
        let l = json("ip", &["-j", "-d", "link", "show", "ifbt0"]);
        assert_eq!(l[0]["linkinfo"]["info_kind"], "ifb");
        assert_eq!(l[0]["ifalias"], "net/cid/eth0");
        assert!(s.create_ifb("ifbt0", 0, None).unwrap_err().is_exists());
        // Not an ifb: None, though the name exists.
        assert!(s.ifb_by_name("v0").unwrap().is_none());
        assert!(s.ifb_by_name("nosuch").unwrap().is_none());
        s.create_ifb("ifbt1", 0, None).unwrap();
        let mut all: Vec<(String, Option<String>)> = s
            .ifb_links()
            .unwrap()
            .into_iter()
            .map(|l| (l.name, l.alias))
            .collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("ifbt0".into(), Some("net/cid/eth0".into())),
                ("ifbt1".into(), None)
            ]
        );
        s.set_alias(ifb.index, "").unwrap();
        assert_eq!(s.ifb_by_name("ifbt0").unwrap().unwrap().alias, None);

        assert!(s.filters(v0, INGRESS_HANDLE).unwrap().is_empty());
        s.add_ingress_qdisc(v0).unwrap();
        assert!(s.add_ingress_qdisc(v0).unwrap_err().is_exists());
        s.add_redirect_filter(v0, INGRESS_HANDLE, 1, ifb.index)
            .unwrap();
        let qs = s.qdiscs(v0).unwrap();
        assert!(
            qs.iter().any(|q| q.kind == "ingress"
                && q.parent == TC_H_INGRESS
                && q.handle == INGRESS_HANDLE),
            "{qs:?}"
        );
        let filters = s.filters(v0, INGRESS_HANDLE).unwrap();
        let redirect: Vec<&Filter> = filters.iter().filter(|f| f.redirect_to.is_some()).collect();
        assert_eq!(redirect.len(), 1, "{filters:?}");
        assert_eq!(redirect[0].redirect_to, Some(ifb.index));
        assert_eq!((redirect[0].prio, redirect[0].protocol), (1, ETH_P_ALL));
        assert_eq!(redirect[0].kind, "u32");

        // tc sees a match-all u32 with a mirred egress redirect to the ifb.
        let shown = run("tc", &["filter", "show", "dev", "v0", "ingress"]);
        assert!(shown.contains("match 00000000/00000000 at 0"), "{shown}");
        assert!(shown.contains("Egress Redirect to device ifbt0"), "{shown}");

        // Traffic into v0 (sent from v1) comes out of the ifb.
        run("ip", &["addr", "add", "192.0.2.1/24", "dev", "v1"]);
        let before = tx_packets("ifbt0");
        let _ = Command::new("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", "-I", "v1", "192.0.2.2"])
            .output();
        assert!(
            tx_packets("ifbt0") >= before + 3,
            "ifb saw no redirected packets"
        );

        assert!(s.delete_filters(v0, INGRESS_HANDLE, 1).unwrap());
        assert!(!s.delete_filters(v0, INGRESS_HANDLE, 1).unwrap());
        assert!(s.delete_filters(v0, INGRESS_HANDLE, 0).is_err());
        assert!(s.delete_qdisc(v0, TC_H_INGRESS, INGRESS_HANDLE).unwrap());
        // Once the ingress qdisc was there, the kernel keeps a noop placeholder: still "gone".
        assert!(!s.delete_qdisc(v0, TC_H_INGRESS, INGRESS_HANDLE).unwrap());
        assert!(s.filters(v0, INGRESS_HANDLE).unwrap().is_empty());
        s.add_ingress_qdisc(v0).unwrap();
    });
}

fn tx_packets(dev: &str) -> u64 {
    let l = json("ip", &["-j", "-s", "link", "show", dev]);
    l[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}
