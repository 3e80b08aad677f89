//! host-local swapped on a live data directory, in both directions: allocate with ours,
//! release with the reference, allocate with the reference, release and GC with ours,
//! allocate with ours again. At every step the directory holds exactly the expected
//! allocations (nothing lost, nothing handed out twice), and each binary continues the
//! round-robin from where the other one stopped (`last_reserved_ip.<set>`).
//!
//! The chain is our bridge + host-local, run by libcni's `cnitool` (1.0.0: the reference speaks
//! nothing later); only the `host-local` link on CNI_PATH changes between steps. cnitool has no
//! GC verb (libcni 1.1.2), so GC is sent to our host-local directly, as libcni 1.2 would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use support::{Network, Side, addresses, container_id};
use testkit::{TestNs, run_in};

/// Each set has five addresses to hand out, .2 to .6 (the gateway .1 is skipped), the same
/// last number in both families so that one number names a container's pair.
fn chain() -> Value {
    json!([{
        "type": "bridge",
        "bridge": "cni-swap0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.97.0.0/29"}],
                [{"subnet": "fd5e:2a6c:9a::/125", "rangeEnd": "fd5e:2a6c:9a::6"}]
            ]
        }
    }])
}

fn v4(n: u8) -> IpAddr {
    format!("10.97.0.{n}").parse().unwrap()
}

fn v6(n: u8) -> IpAddr {
    format!("fd5e:2a6c:9a::{n}").parse().unwrap()
}

struct Swap {
    net: Network,
    ctrs: Vec<TestNs>,
}

impl Swap {
    /// ADD container `i` (1-based) and check it got the pair numbered `n`.
    fn add(&self, i: usize, n: u8) {
        let r = self.net.add(&self.ctrs[i - 1], None);
        assert_eq!(addresses(&r), vec![v4(n), v6(n)], "c{i}: {r}");
    }

    fn del(&self, i: usize) {
        self.net.del(&self.ctrs[i - 1], None);
    }

    /// The directory holds exactly `owners` (pair number → container) and the round-robin
    /// position of both sets is `last`.
    fn expect(&self, step: &str, owners: &[(u8, usize)], last: u8) {
        let mut want = BTreeMap::new();
        for (n, i) in owners {
            let content = format!("{}\r\neth0", container_id(&self.ctrs[i - 1]));
            want.insert(v4(*n), content.clone());
            want.insert(v6(*n), content);
        }
        assert_eq!(self.net.allocations(), want, "{step}: allocations");
        assert_eq!(
            self.net.last_reserved(0).as_deref(),
            Some(v4(last).to_string().as_str()),
            "{step}: IPv4 round-robin position"
        );
        assert_eq!(
            self.net.last_reserved(1).as_deref(),
            Some(v6(last).to_string().as_str()),
            "{step}: IPv6 round-robin position"
        );
    }

    /// GC with our host-local, keeping the attachments of `valid` containers.
    fn gc_ours(&self, valid: &[usize]) {
        let mut conf = self.net.list["plugins"][0]["ipam"].clone();
        conf = json!({
            "cniVersion": "1.1.0",
            "name": self.net.name,
            "type": "host-local",
            "ipam": conf,
            "cni.dev/valid-attachments": valid
                .iter()
                .map(|i| json!({"containerID": container_id(&self.ctrs[i - 1]), "ifname": "eth0"}))
                .collect::<Vec<_>>(),
        });
        run_in(
            &self.net.host,
            &testkit::bin("host-local"),
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/nonexistent")],
            &conf.to_string(),
        )
        .ok();
    }
}

#[test]
fn host_local_swapped_both_ways_on_a_live_directory() {
    let Some(cnitool) = support::ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "swap",
        "1.0.0",
        chain(),
        &[("bridge", Side::Ours), ("host-local", Side::Ours)],
    );
    let s = Swap {
        net,
        ctrs: (0..8).map(|_| TestNs::new()).collect(),
    };

    // Ours hands out .2, .3, .4.
    s.add(1, 2);
    s.add(2, 3);
    s.add(3, 4);
    s.expect("ours allocated", &[(2, 1), (3, 2), (4, 3)], 4);

    // The reference releases c2's pair; it allocates from where ours stopped (.5 after .4,
    // not the free .3), then wraps around to .3, skipping what ours holds.
    s.net.swap("host-local", Side::Reference);
    s.del(2);
    s.expect("reference released", &[(2, 1), (4, 3)], 4);
    s.add(4, 5);
    s.add(5, 6);
    s.add(6, 3);
    s.expect(
        "reference allocated",
        &[(2, 1), (3, 6), (4, 3), (5, 4), (6, 5)],
        3,
    );

    // Ours releases c1's pair (it must see what the reference changed behind its index) and
    // GC frees c5's, which is not in the valid list.
    s.net.swap("host-local", Side::Ours);
    s.del(1);
    s.expect("ours released", &[(3, 6), (4, 3), (5, 4), (6, 5)], 3);
    s.gc_ours(&[3, 4, 6]);
    s.expect("ours collected", &[(3, 6), (4, 3), (5, 4)], 3);

    // Ours allocates from where the reference stopped: .6 after .3 (not the free .2), then
    // wraps around to .2.
    s.add(7, 6);
    s.add(8, 2);
    s.expect(
        "ours allocated again",
        &[(2, 8), (3, 6), (4, 3), (5, 4), (6, 7)],
        2,
    );

    // c5, collected, is deleted by the runtime later: its pair now belongs to c7 and stays so.
    s.del(5);
    s.expect(
        "collected attachment deleted",
        &[(2, 8), (3, 6), (4, 3), (5, 4), (6, 7)],
        2,
    );

    // The rest goes: c3 and c4 through the reference, the others through ours.
    s.net.swap("host-local", Side::Reference);
    s.del(3);
    s.del(4);
    s.net.swap("host-local", Side::Ours);
    for i in [6, 7, 8] {
        s.del(i);
    }
    let ips: Vec<IpAddr> = (2..=6).flat_map(|n| [v4(n), v6(n)]).collect();
    let ctrs: Vec<&TestNs> = s.ctrs.iter().collect();
    s.net.assert_nothing_left(&ctrs, &ips);
}
