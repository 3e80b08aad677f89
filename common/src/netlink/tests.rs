//! Tests against the real kernel, each in throwaway network namespaces (root only).

use super::*;
use nix::sched::{CloneFlags, setns, unshare};
use serde_json::Value;
use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A network namespace held by a parked thread; gone (with everything in it) when dropped.
pub(crate) struct TestNs {
    path: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestNs {
    pub(crate) fn new() -> TestNs {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let res = unshare(CloneFlags::CLONE_NEWNET).map(|_| nix::unistd::gettid().as_raw());
            let ok = res.is_ok();
            ready_tx.send(res).unwrap();
            if ok {
                let _ = stop_rx.recv();
            }
        });
        let tid = ready_rx.recv().unwrap().expect("unshare(CLONE_NEWNET)");
        let ns = TestNs {
            path: format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn netns(&self) -> NetNs {
        NetNs::open(&self.path).unwrap()
    }

    fn sock(&self) -> RouteSocket {
        RouteSocket::open_in_for_waits(&self.netns()).unwrap()
    }

    /// Runs `f` on a thread inside the namespace.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(&self.path).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = self.run(|| Command::new("ip").args(args).output().unwrap());
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS`, parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).unwrap()
        }
    }

    fn sysctl(&self, key: &str, value: &str) {
        self.run(|| crate::sysctl::write(key, value)).unwrap();
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root (network namespaces)");
        false
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn link(s: &mut RouteSocket, name: &str) -> Link {
    s.link_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no link {name}"))
}

/// A host namespace and a container namespace joined by a veth pair: `veth0` on the host
/// side, `eth0` (with `peer_mac`) in the container.
struct Pair {
    host: TestNs,
    cont: TestNs,
    hs: RouteSocket,
    cs: RouteSocket,
    veth: Link,
    eth0: Link,
}

const PEER_MAC: Mac = [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x07];

fn pair(mtu: u32) -> Pair {
    let host = TestNs::new();
    let cont = TestNs::new();
    let mut hs = host.sock();
    let mut cs = cont.sock();
    let cns = cont.netns();
    hs.create_veth(&VethSpec {
        name: "veth0",
        peer_name: "eth0",
        peer_ns: &cns,
        mtu,
        peer_mac: Some(PEER_MAC),
    })
    .unwrap();
    let veth = link(&mut hs, "veth0");
    let eth0 = link(&mut cs, "eth0");
    Pair {
        host,
        cont,
        hs,
        cs,
        veth,
        eth0,
    }
}

#[test]
fn mac_roundtrip() {
    let m = parse_mac("0a:58:0A:f4:00:01").unwrap();
    assert_eq!(format_mac(&m), "0a:58:0a:f4:00:01");
    assert_eq!(parse_mac("0a:58:0a:f4:00").unwrap_err().code(), 7);
    assert_eq!(parse_mac("zz:58:0a:f4:00:01").unwrap_err().code(), 7);
}

#[test]
fn bridge_lifecycle_and_link_settings() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    let mut s = ns.sock();
    s.create_bridge("br0", 1400, false).unwrap();
    let br = link(&mut s, "br0");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    assert!(!br.up && !br.promisc);
    assert_eq!(br.master, None);
    assert_eq!(s.link_by_index(br.index).unwrap().as_ref(), Some(&br));

    // STP is off, as the kernel reports it.
    let d = ns.ip_json(&["-d", "link", "show", "br0"]);
    assert_eq!(d[0]["linkinfo"]["info_kind"], "bridge");
    assert_eq!(d[0]["linkinfo"]["info_data"]["stp_state"], 0, "{d}");
    assert_eq!(d[0]["mtu"], 1400);

    let e = s.create_bridge("br0", 0, false).unwrap_err();
    assert!(e.is_exists(), "{e}");

    s.set_up(br.index).unwrap();
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    s.set_mac(br.index, &mac).unwrap();
    s.set_promisc(br.index, true).unwrap();
    s.set_mtu(br.index, 1300).unwrap();
    let br2 = link(&mut s, "br0");
    assert!(br2.up && br2.promisc);
    assert_eq!(br2.mac, Some(mac));
    assert_eq!(br2.mtu, 1300);
    let j = ns.ip_json(&["link", "show", "br0"]);
    let flags = j[0]["flags"].to_string();
    assert!(flags.contains("\"UP\"") && flags.contains("PROMISC"), "{j}");
    assert_eq!(j[0]["address"], "02:11:22:33:44:55");
    assert_eq!(j[0]["mtu"], 1300);

    s.set_promisc(br.index, false).unwrap();
    s.set_down(br.index).unwrap();
    let br3 = link(&mut s, "br0");
    assert!(!br3.up && !br3.promisc);

    let names: Vec<String> = s.links().unwrap().into_iter().map(|l| l.name).collect();
    assert!(names.contains(&"lo".to_string()) && names.contains(&"br0".to_string()));
    // A socket opened with open() belongs to the calling thread's namespace.
    let seen = ns.run(|| RouteSocket::open().unwrap().links().unwrap());
    assert_eq!(seen.len(), names.len());

    s.delete_link(br.index).unwrap();
    assert_eq!(s.link_by_name("br0").unwrap(), None);
    assert_eq!(s.link_by_index(br.index).unwrap(), None);
    let e = s.delete_link(br.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = s.set_up(br.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(ns.ip_json(&["link", "show", "type", "bridge"]) == Value::Array(vec![]));
}

#[test]
fn veth_pair_across_namespaces() {
    if !have_root() {
        return;
    }
    let Pair {
        host,
        cont,
        mut hs,
        mut cs,
        veth,
        eth0,
    } = pair(1450);
    assert_eq!(veth.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!((veth.mtu, eth0.mtu), (1450, 1450));
    assert_eq!(eth0.mac, Some(PEER_MAC));
    assert_eq!(veth.link_index, Some(eth0.index));
    assert_eq!(eth0.link_index, Some(veth.index));
    assert!(veth.link_netnsid.is_some());

    let j = cont.ip_json(&["link", "show", "eth0"]);
    assert_eq!(j[0]["address"], "0a:58:0a:f4:00:07");
    assert_eq!(j[0]["mtu"], 1450);
    let j = host.ip_json(&["link", "show", "veth0"]);
    assert_eq!(j[0]["mtu"], 1450);
    assert!(cs.link_by_name("veth0").unwrap().is_none());
    assert!(hs.link_by_name("eth0").unwrap().is_none());

    // Either name taken is EEXIST, and nothing is left behind.
    let cns = cont.netns();
    let spec = VethSpec {
        name: "veth0",
        peer_name: "eth1",
        peer_ns: &cns,
        mtu: 0,
        peer_mac: None,
    };
    assert!(hs.create_veth(&spec).unwrap_err().is_exists());
    let spec = VethSpec {
        name: "veth1",
        peer_name: "eth0",
        ..spec
    };
    assert!(hs.create_veth(&spec).unwrap_err().is_exists());
    assert!(hs.link_by_name("veth1").unwrap().is_none());
    assert!(cs.link_by_name("eth1").unwrap().is_none());

    // Deleting one end takes the other with it.
    hs.delete_link(veth.index).unwrap();
    assert!(cs.link_by_name("eth0").unwrap().is_none());
}

#[test]
fn wait_oper_up_is_event_driven() {
    if !have_root() {
        return;
    }
    let Pair {
        host: _host,
        cont: _cont,
        mut hs,
        mut cs,
        veth,
        eth0,
    } = pair(0);
    hs.set_up(veth.index).unwrap();
    // The peer is down: a short timeout comes back false, quickly.
    let t = Instant::now();
    assert!(
        !hs.wait_oper_up(veth.index, Duration::from_millis(300))
            .unwrap()
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // The peer comes up while we wait: the link event wakes us.
    let t = Instant::now();
    let up = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            cs.set_up(eth0.index).unwrap();
        });
        hs.wait_oper_up(veth.index, Duration::from_secs(10))
            .unwrap()
    });
    assert!(up, "not up after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(link(&mut hs, "veth0").oper_up);
    // Already up: true at once.
    assert!(
        cs.wait_oper_up(eth0.index, Duration::from_secs(10))
            .unwrap()
    );

    let e = hs
        .wait_oper_up(99_999, Duration::from_millis(100))
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn bridge_port_master_hairpin_isolated() {
    if !have_root() {
        return;
    }
    let Pair {
        host,
        cont: _cont,
        mut hs,
        veth,
        ..
    } = pair(0);
    hs.create_bridge("br0", 0, false).unwrap();
    let br = link(&mut hs, "br0");
    hs.set_master(veth.index, br.index).unwrap();
    assert_eq!(link(&mut hs, "veth0").master, Some(br.index));
    assert_eq!(hs.bridge_port_flags(veth.index).unwrap(), (false, false));

    hs.set_bridge_port(veth.index, true, true).unwrap();
    assert_eq!(hs.bridge_port_flags(veth.index).unwrap(), (true, true));
    let d = host.ip_json(&["-d", "link", "show", "veth0"]);
    let port = &d[0]["linkinfo"]["info_slave_data"];
    assert_eq!(port["hairpin"], true, "{d}");
    assert_eq!(port["isolated"], true, "{d}");
    assert_eq!(d[0]["master"], "br0");

    hs.set_bridge_port(veth.index, true, false).unwrap();
    assert_eq!(hs.bridge_port_flags(veth.index).unwrap(), (true, false));
    hs.set_bridge_port(veth.index, false, false).unwrap();
    assert_eq!(hs.bridge_port_flags(veth.index).unwrap(), (false, false));
    let d = host.ip_json(&["-d", "link", "show", "veth0"]);
    assert_eq!(d[0]["linkinfo"]["info_slave_data"]["hairpin"], false);

    // The bridge itself is no port; a missing link is not found.
    assert!(hs.bridge_port_flags(br.index).is_err());
    assert!(hs.bridge_port_flags(99_999).unwrap_err().is_not_found());
    assert!(
        hs.set_bridge_port(99_999, true, false)
            .unwrap_err()
            .is_not_found()
    );

    hs.set_master(veth.index, 0).unwrap();
    assert_eq!(link(&mut hs, "veth0").master, None);
}

#[test]
fn bridge_vlans() {
    if !have_root() {
        return;
    }
    let Pair {
        host,
        cont: _cont,
        mut hs,
        veth,
        ..
    } = pair(0);
    match hs.create_bridge("brv", 0, true) {
        Ok(()) => {
            let d = host.ip_json(&["-d", "link", "show", "brv"]);
            assert_eq!(d[0]["linkinfo"]["info_data"]["vlan_filtering"], 1, "{d}");
            let brv = link(&mut hs, "brv").index;
            hs.delete_link(brv).unwrap();
        }
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
            eprintln!("bridge_vlans: kernel without bridge VLAN filtering ({e})");
        }
        Err(e) => panic!("{e}"),
    }

    hs.create_bridge("br0", 0, false).unwrap();
    let br = link(&mut hs, "br0");
    hs.set_master(veth.index, br.index).unwrap();
    match hs.bridge_vlan_add(veth.index, 10, true, true) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipping bridge_vlans: kernel without CONFIG_BRIDGE_VLAN_FILTERING ({e})");
            // The dump still works; it just has nothing to say.
            assert!(hs.bridge_vlans(veth.index).unwrap().is_empty());
            return;
        }
        Err(e) => panic!("{e}"),
    }
    hs.bridge_vlan_add(veth.index, 20, false, false).unwrap();
    let vlans = hs.bridge_vlans(veth.index).unwrap();
    assert!(vlans.contains(&(10, true, true)), "{vlans:?}");
    assert!(vlans.contains(&(20, false, false)), "{vlans:?}");
    let out = host.run(|| {
        Command::new("bridge")
            .args(["-j", "vlan", "show", "dev", "veth0"])
            .output()
            .unwrap()
    });
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j.to_string().contains("\"vlan\":20"), "{j}");

    hs.bridge_vlan_add(br.index, 30, false, false).unwrap();
    assert!(
        hs.bridge_vlans(br.index)
            .unwrap()
            .contains(&(30, false, false))
    );

    hs.bridge_vlan_del(veth.index, 20).unwrap();
    let vlans = hs.bridge_vlans(veth.index).unwrap();
    assert!(!vlans.iter().any(|v| v.0 == 20), "{vlans:?}");
    assert!(
        link(&mut hs, "veth0").index == veth.index,
        "the port survives"
    );
    assert!(hs.bridge_vlans(99_999).unwrap_err().is_not_found());
}

#[test]
fn addresses_v4_and_v6() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    let mut s = ns.sock();
    s.create_bridge("br0", 0, false).unwrap();
    let br = link(&mut s, "br0");
    s.set_up(br.index).unwrap();

    s.add_address(br.index, net("10.1.2.3/24")).unwrap();
    s.add_address(br.index, net("10.1.3.4/31")).unwrap();
    s.add_address(br.index, net("fd00::5/64")).unwrap();

    let v4 = s.addresses(Some(br.index), Some(Family::V4)).unwrap();
    let got: Vec<String> = v4.iter().map(|a| a.addr.to_string()).collect();
    assert_eq!(got, ["10.1.2.3/24", "10.1.3.4/31"]);
    assert!(v4.iter().all(|a| a.index == br.index && a.scope == 0));
    let v6 = s.addresses(Some(br.index), Some(Family::V6)).unwrap();
    assert!(
        v6.iter()
            .any(|a| a.addr == net("fd00::5/64") && a.scope == 0),
        "{v6:?}"
    );
    assert!(v6.iter().all(|a| a.addr.is_ipv6()));
    let all = s.addresses(None, None).unwrap();
    assert!(all.iter().any(|a| a.addr == net("127.0.0.1/8")));
    assert!(all.iter().any(|a| a.addr == net("fd00::5/64")));
    assert!(
        !s.addresses(Some(br.index), None)
            .unwrap()
            .iter()
            .any(|a| a.addr.ip().is_loopback())
    );

    let j = ns.ip_json(&["addr", "show", "dev", "br0"]);
    let infos = j[0]["addr_info"].as_array().unwrap();
    let find = |local: &str| {
        infos
            .iter()
            .find(|i| i["local"] == local)
            .unwrap_or_else(|| panic!("{local} not in {j}"))
    };
    assert_eq!(find("10.1.2.3")["prefixlen"], 24);
    assert_eq!(find("10.1.2.3")["broadcast"], "10.1.2.255");
    assert!(find("10.1.3.4").get("broadcast").is_none());
    assert_eq!(find("fd00::5")["prefixlen"], 64);

    let e = s.add_address(br.index, net("10.1.2.3/24")).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let e = s.add_address(br.index, net("fd00::5/64")).unwrap_err();
    assert!(e.is_exists(), "{e}");

    s.del_address(br.index, net("10.1.2.3/24")).unwrap();
    s.del_address(br.index, net("fd00::5/64")).unwrap();
    let left: Vec<IpNetwork> = s
        .addresses(Some(br.index), None)
        .unwrap()
        .into_iter()
        .map(|a| a.addr)
        .collect();
    assert!(!left.contains(&net("10.1.2.3/24")) && !left.contains(&net("fd00::5/64")));
    assert!(left.contains(&net("10.1.3.4/31")));
    let e = s.del_address(br.index, net("10.1.2.3/24")).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EADDRNOTAVAIL), "{e}");
    let e = s.add_address(99_999, net("10.7.0.1/24")).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn routes_v4_and_v6() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    let mut s = ns.sock();
    s.create_bridge("br0", 0, false).unwrap();
    let br = link(&mut s, "br0");
    s.set_up(br.index).unwrap();
    s.add_address(br.index, net("10.9.0.1/24")).unwrap();
    s.add_address(br.index, net("fd00:9::1/64")).unwrap();

    let mut via = RouteEntry::new(net("10.20.0.0/16"), Some(ip("10.9.0.254")), Some(br.index));
    via.mtu = 1300;
    via.advmss = 1260;
    s.add_route(&via).unwrap();
    let onlink = RouteEntry::new(net("10.30.0.0/16"), None, Some(br.index));
    s.add_route(&onlink).unwrap();
    let default = RouteEntry::new(net("0.0.0.0/0"), Some(ip("10.9.0.254")), None);
    s.add_route(&default).unwrap();
    let mut other_table = RouteEntry::new(net("10.40.0.0/16"), Some(ip("10.9.0.254")), None);
    other_table.table = Some(100);
    other_table.priority = 50;
    s.add_route(&other_table).unwrap();

    let main = s.routes(Family::V4, false).unwrap();
    let with_oif = |r: &RouteEntry| RouteEntry {
        oif: Some(br.index),
        ..r.clone()
    };
    assert!(main.contains(&via), "{main:?}");
    assert!(main.contains(&onlink), "{main:?}");
    assert!(main.contains(&with_oif(&default)), "{main:?}");
    assert!(!main.iter().any(|r| r.dst == net("10.40.0.0/16")));
    let all = s.routes(Family::V4, true).unwrap();
    assert!(all.contains(&with_oif(&other_table)), "{all:?}");

    let j = ns.ip_json(&["-d", "route", "show", "10.20.0.0/16"]);
    assert_eq!(j[0]["gateway"], "10.9.0.254", "{j}");
    assert_eq!(j[0]["type"], "unicast");
    assert_eq!(j[0]["scope"], "global");
    assert_eq!(j[0]["dev"], "br0");
    assert_eq!(j[0]["protocol"], "boot");
    let metrics = j[0]["metrics"].to_string();
    assert!(metrics.contains("1300") && metrics.contains("1260"), "{j}");
    let j = ns.ip_json(&["route", "show", "10.30.0.0/16"]);
    assert_eq!(j[0]["scope"], "link", "{j}");
    let j = ns.ip_json(&["route", "show", "table", "100"]);
    assert_eq!(j[0]["dst"], "10.40.0.0/16", "{j}");
    assert_eq!(j[0]["metric"], 50, "{j}");

    assert!(s.add_route(&via).unwrap_err().is_exists());
    // The kernel's extended ack text travels with the errno.
    let far = RouteEntry::new(net("10.50.0.0/16"), Some(ip("10.99.0.1")), None);
    let e = s.add_route(&far).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}");
    assert!(e.to_string().contains("gateway"), "{e}");

    // IPv6, through a gateway and on-link.
    let mut via6 = RouteEntry::new(net("fd00:20::/64"), Some(ip("fd00:9::254")), Some(br.index));
    via6.mtu = 1400;
    s.add_route(&via6).unwrap();
    let onlink6 = RouteEntry::new(net("fd00:30::/64"), None, Some(br.index));
    s.add_route(&onlink6).unwrap();
    let v6 = s.routes(Family::V6, false).unwrap();
    let strip = |r: &RouteEntry| RouteEntry {
        priority: 0,
        ..r.clone()
    };
    assert!(v6.iter().map(strip).any(|r| r == via6), "{v6:?}");
    assert!(v6.iter().map(strip).any(|r| r == onlink6), "{v6:?}");
    assert!(v6.iter().all(|r| r.dst.is_ipv6()));
    let j = ns.ip_json(&["-6", "route", "show", "fd00:20::/64"]);
    assert_eq!(j[0]["gateway"], "fd00:9::254", "{j}");
    assert!(j[0]["metrics"].to_string().contains("1400"), "{j}");
    assert!(s.add_route(&via6).unwrap_err().is_exists());

    for r in [&via, &onlink, &default, &other_table, &via6, &onlink6] {
        s.del_route(r).unwrap();
        let e = s.del_route(r).unwrap_err();
        assert!(e.is_not_found(), "{r:?}: {e}");
    }
    let left = s.routes(Family::V4, true).unwrap();
    assert!(
        !left
            .iter()
            .any(|r| [via.dst, onlink.dst, default.dst, other_table.dst].contains(&r.dst)),
        "{left:?}"
    );
    let left6 = s.routes(Family::V6, false).unwrap();
    assert!(
        !left6
            .iter()
            .any(|r| r.dst == via6.dst || r.dst == onlink6.dst)
    );
    // The connected routes of the addresses stay.
    assert!(left.iter().any(|r| r.dst == net("10.9.0.0/24")));
}

#[test]
fn wait_dad_done_on_veth() {
    if !have_root() {
        return;
    }
    let Pair {
        host,
        cont,
        mut hs,
        mut cs,
        veth,
        eth0,
    } = pair(0);
    host.sysctl("net.ipv6.conf.veth0.accept_dad", "1");
    cont.sysctl("net.ipv6.conf.eth0.accept_dad", "1");
    hs.set_up(veth.index).unwrap();
    cs.set_up(eth0.index).unwrap();
    assert!(
        hs.wait_oper_up(veth.index, Duration::from_secs(10))
            .unwrap()
    );

    hs.add_address(veth.index, net("fd00:1::1/64")).unwrap();
    let tentative = hs
        .addresses(Some(veth.index), Some(Family::V6))
        .unwrap()
        .iter()
        .any(|a| a.addr == net("fd00:1::1/64") && a.flags & 0x40 != 0);
    assert!(tentative, "a fresh address is tentative");
    let t = Instant::now();
    assert!(
        hs.wait_dad_done(veth.index, Duration::from_secs(15))
            .unwrap()
    );
    let a = hs.addresses(Some(veth.index), Some(Family::V6)).unwrap();
    assert!(a.iter().all(|a| a.flags & 0x40 == 0), "{a:?}");
    assert!(a.iter().any(|a| a.addr == net("fd00:1::1/64")));
    eprintln!("DAD took {:?}", t.elapsed());
    let j = host.ip_json(&["-6", "addr", "show", "dev", "veth0"]);
    assert!(!j.to_string().contains("tentative"), "{j}");

    // The same address on the other end fails DAD there.
    cs.add_address(eth0.index, net("fd00:1::1/64")).unwrap();
    let e = cs
        .wait_dad_done(eth0.index, Duration::from_secs(15))
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EADDRNOTAVAIL), "{e}");
    assert!(e.to_string().contains("fd00:1::1"), "{e}");

    // A bridge without ports has no carrier, so DAD never starts: a timeout is Ok(false).
    hs.create_bridge("br0", 0, false).unwrap();
    let br = link(&mut hs, "br0");
    hs.set_up(br.index).unwrap();
    hs.add_address(br.index, net("fd00:2::1/64")).unwrap();
    let t = Instant::now();
    assert!(
        !hs.wait_dad_done(br.index, Duration::from_millis(300))
            .unwrap()
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn dumps_span_many_datagrams() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    let mut s = ns.sock();
    for i in 0..150 {
        s.create_bridge(&format!("br{i}"), 0, false).unwrap();
    }
    let links = s.links().unwrap();
    assert_eq!(links.len(), 151, "lo and 150 bridges");
    let br = link(&mut s, "br149");
    for i in 0..400u32 {
        let a = format!("10.{}.{}.1/24", 100 + i / 256, i % 256);
        s.add_address(br.index, net(&a)).unwrap();
    }
    assert_eq!(
        s.addresses(Some(br.index), Some(Family::V4)).unwrap().len(),
        400
    );
    // The socket is still in step after the big dumps.
    assert_eq!(s.link_by_name("br7").unwrap().unwrap().name, "br7");
}

#[test]
fn allmulti_txqlen_and_mtu_range() {
    if !have_root() {
        return;
    }
    let p = pair(0);
    let mut cs = p.cs;
    let eth0 = p.eth0;
    assert!(!eth0.allmulti);
    assert_eq!(eth0.max_mtu, Some(65535), "{eth0:?}");
    assert_eq!(eth0.min_mtu, Some(68), "{eth0:?}");
    cs.set_allmulti(eth0.index, true).unwrap();
    cs.set_txqlen(eth0.index, 321).unwrap();
    let l = link(&mut cs, "eth0");
    assert!(l.allmulti);
    assert_eq!(l.txqlen, 321);
    let j = p.cont.ip_json(&["link", "show", "eth0"]);
    assert!(j[0]["flags"].to_string().contains("ALLMULTI"), "{j}");
    assert_eq!(j[0]["txqlen"], 321);
    cs.set_allmulti(eth0.index, false).unwrap();
    assert!(!link(&mut cs, "eth0").allmulti);
}

/// The links' own decoder (`link_from_reply`) reads what netlink-packet-route's full decoder
/// reads, for every kind of link a plugin meets: loopback, bridge, veth (peer in another
/// namespace), ifb, a bridge port with flags set, a device down and one up.
#[test]
fn link_decoder_agrees_with_netlink_packet_route() {
    if !have_root() {
        return;
    }
    let p = pair(1400);
    let mut hs = p.hs;
    hs.create_bridge("br0", 1300, false).unwrap();
    let br = link(&mut hs, "br0");
    hs.set_master(p.veth.index, br.index).unwrap();
    hs.set_bridge_port(p.veth.index, true, true).unwrap();
    hs.set_up(br.index).unwrap();
    hs.set_promisc(p.veth.index, true).unwrap();
    hs.create_ifb("ifb0", 1500, None).unwrap();
    let ifb = link(&mut hs, "ifb0");
    hs.set_txqlen(ifb.index, 77).unwrap();
    hs.set_alias(ifb.index, "owned by a test").unwrap();
    let mut dump = || {
        let req = super::link::link_request_for_test();
        let msgs = hs.nl.dump(req, "dump links").unwrap();
        let theirs: Vec<Link> = msgs
            .iter()
            .filter_map(|m| match m {
                netlink_packet_route::RouteNetlinkMessage::NewLink(l) => {
                    Some(super::link::link_from_msg(l))
                }
                _ => None,
            })
            .collect();
        (hs.links().unwrap(), theirs)
    };
    let (ours, theirs) = dump();
    assert_eq!(ours.len(), 4, "{ours:?}");
    assert_eq!(ours, theirs);
    let veth = ours.iter().find(|l| l.name == "veth0").unwrap();
    assert_eq!(veth.master, Some(br.index));
    assert!(
        veth.link_netnsid.is_some() && veth.promisc && veth.mtu == 1400,
        "{veth:?}"
    );
    assert_eq!(hs.bridge_port_flags(veth.index).unwrap(), (true, true));
    let ifb = ours.iter().find(|l| l.name == "ifb0").unwrap();
    assert_eq!((ifb.kind.as_deref(), ifb.txqlen), (Some("ifb"), 77));
    assert_eq!(ifb.alias.as_deref(), Some("owned by a test"));
}

/// The address and route decoders (`address_from_reply`, `route_from_reply`) read what
/// netlink-packet-route's full decoder reads: addresses of both families (a peer address
/// too), routes through a gateway, on-link, with metrics, in another table, IPv6.
#[test]
fn address_and_route_decoders_agree_with_netlink_packet_route() {
    if !have_root() {
        return;
    }
    let p = pair(0);
    let mut hs = p.hs;
    let v = p.veth.index;
    hs.set_up(v).unwrap();
    hs.add_address(v, net("10.9.0.1/24")).unwrap();
    hs.add_address(v, net("10.9.1.1/32")).unwrap();
    hs.add_address(v, net("fd00:9::1/64")).unwrap();
    p.host.ip(&[
        "addr",
        "add",
        "10.9.2.1",
        "peer",
        "10.9.2.2/32",
        "dev",
        "veth0",
    ]);
    // A flag beyond the header's 8 bits, sent in IFA_FLAGS only.
    p.host.ip(&[
        "addr",
        "add",
        "fd00:9::5/64",
        "dev",
        "veth0",
        "noprefixroute",
    ]);
    let mut via = RouteEntry::new(net("10.20.0.0/16"), Some(ip("10.9.0.254")), Some(v));
    via.mtu = 1300;
    via.advmss = 1260;
    hs.add_route(&via).unwrap();
    hs.add_route(&RouteEntry::new(net("10.30.0.0/16"), None, Some(v)))
        .unwrap();
    let mut other_table = RouteEntry::new(net("10.40.0.0/16"), Some(ip("10.9.0.254")), None);
    other_table.table = Some(100);
    other_table.priority = 50;
    hs.add_route(&other_table).unwrap();
    hs.add_route(&RouteEntry::new(
        net("fd00:20::/48"),
        Some(ip("fd00:9::fe")),
        Some(v),
    ))
    .unwrap();

    let req = netlink_packet_route::RouteNetlinkMessage::GetAddress(Default::default());
    let theirs: Vec<Address> = hs
        .nl
        .dump(req, "dump addresses")
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            netlink_packet_route::RouteNetlinkMessage::NewAddress(a) => {
                super::addr::address_from_msg(a)
            }
            _ => None,
        })
        .collect();
    let ours = hs.addresses(None, None).unwrap();
    assert!(ours.len() >= 6, "{ours:?}");
    assert_eq!(ours, theirs);
    assert!(
        ours.iter().any(|a| a.addr == net("10.9.2.1/32")),
        "{ours:?}"
    );
    let noprefixroute = ours.iter().find(|a| a.addr == net("fd00:9::5/64"));
    assert!(
        noprefixroute.is_some_and(|a| a.flags & 0x200 != 0),
        "{ours:?}"
    );
    // The kernel-side filter by link and family keeps the same addresses.
    let v4_of_veth: Vec<Address> = theirs
        .iter()
        .filter(|a| a.index == v && a.addr.is_ipv4())
        .cloned()
        .collect();
    assert_eq!(hs.addresses(Some(v), Some(Family::V4)).unwrap(), v4_of_veth);
    // A link that is gone has no addresses (the kernel's filter refuses it with ENODEV).
    assert_eq!(
        hs.addresses(Some(99_999), Some(Family::V6)).unwrap(),
        Vec::new()
    );

    for family in [Family::V4, Family::V6] {
        let mut req = netlink_packet_route::route::RouteMessage::default();
        req.header.address_family = super::addr::family_of(family);
        let theirs: Vec<RouteEntry> = hs
            .nl
            .dump(
                netlink_packet_route::RouteNetlinkMessage::GetRoute(req),
                "dump routes",
            )
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                netlink_packet_route::RouteNetlinkMessage::NewRoute(r) => {
                    super::route::route_from_msg(r)
                }
                _ => None,
            })
            .collect();
        let ours = hs.routes(family, true).unwrap();
        assert!(ours.len() >= 2, "{ours:?}");
        assert_eq!(ours, theirs, "{family:?}");
    }
}
