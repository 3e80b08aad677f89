//! Shared by the portmap integration tests: a test's world (a host namespace with a bridge
//! network made by the real bridge + host-local plugins, and a client namespace wired to
//! the host), containers, and TCP/UDP exchanges through published ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tempfile::TempDir;
use testkit::{Run, TestNs, cni};

/// The host's address facing the client namespace, and the client's.
pub const HOST4: &str = "192.0.2.1";
pub const CLIENT4: &str = "192.0.2.2";
pub const HOST6: &str = "2001:db8:1::1";
pub const CLIENT6: &str = "2001:db8:1::2";
/// The bridge network's gateways (on the bridge, in the host).
pub const GW4: &str = "10.77.0.1";
pub const GW6: &str = "fd77::1";

/// One test's world.
pub struct World {
    pub host: TestNs,
    /// A second namespace, routed through the host: the "outside" client.
    pub client: TestNs,
    pub data: TempDir,
    pub net: String,
    pub bridge: String,
    pub host_veth: String,
}

/// One container attached by the bridge plugin.
pub struct Container {
    pub ns: TestNs,
    pub id: String,
    /// The bridge plugin's ADD result (what portmap gets as prevResult).
    pub result: Value,
}

impl Container {
    pub fn ip(&self, v4: bool) -> IpAddr {
        let strip = |a: &str| a.split('/').next().unwrap().parse::<IpAddr>().unwrap();
        match self.result["ips"].as_array() {
            Some(ips) => ips
                .iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(strip)
                .find(|a| a.is_ipv4() == v4)
                .unwrap(),
            // 0.1.0/0.2.0 results: ip4 / ip6.
            None => strip(
                self.result[if v4 { "ip4" } else { "ip6" }]["ip"]
                    .as_str()
                    .unwrap(),
            ),
        }
    }
}

impl World {
    pub fn new() -> World {
        let host = TestNs::new();
        let client = TestNs::new();
        let host_veth = testkit::unique_name("hv");
        let client_veth = testkit::unique_name("cv");
        host.ip(&[
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &client_veth,
            "netns",
            &client.tid(),
        ]);
        host.ip(&["addr", "add", &format!("{HOST4}/24"), "dev", &host_veth]);
        host.ip(&[
            "addr",
            "add",
            &format!("{HOST6}/64"),
            "dev",
            &host_veth,
            "nodad",
        ]);
        host.ip(&["link", "set", &host_veth, "up"]);
        client.ip(&["addr", "add", &format!("{CLIENT4}/24"), "dev", &client_veth]);
        client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT6}/64"),
            "dev",
            &client_veth,
            "nodad",
        ]);
        client.ip(&["link", "set", &client_veth, "up"]);
        client.ip(&["route", "add", "default", "via", HOST4]);
        client.ip(&["-6", "route", "add", "default", "via", HOST6]);
        World {
            host,
            client,
            data: tempfile::tempdir().unwrap(),
            net: testkit::unique_name("pmnet"),
            bridge: testkit::unique_name("pm"),
            host_veth,
        }
    }

    /// The bridge plugin's config (IPv4 and IPv6, gateway on the bridge).
    pub fn bridge_conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.net,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            // Hairpin to a container's own published port is bridged back to the port it
            // came from when br_netfilter is loaded (bridge-nf-call-iptables=1).
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            }
        })
    }

    /// A new container on the bridge network.
    pub fn container(&self, version: &str) -> Container {
        let ns = TestNs::new();
        let id = testkit::unique_name("ctr");
        let result = cni(
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
        self.wait_bridge_link_local();
        Container { ns, id, result }
    }

    /// Waits (up to 5 s) until the bridge's IPv6 link-local address has passed DAD. Until
    /// then the host has no source for neighbour solicitations on the bridge when the
    /// packet's own source is on another interface (DNATed or forwarded IPv6), and the first
    /// packets wait in the neighbour queue. A bridge created a moment ago is a test artifact.
    pub fn wait_bridge_link_local(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let addrs =
                self.host
                    .ip_json(&["-6", "addr", "show", "dev", &self.bridge, "scope", "link"]);
            let ready = addrs[0]["addr_info"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|i| i["local"].is_string() && i["tentative"].as_bool() != Some(true))
            });
            if ready || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A portmap config in this network with `mappings` and `extra` keys.
    pub fn conf(&self, version: &str, mappings: Value, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": self.net,
            "type": "portmap",
            "runtimeConfig": {"portMappings": mappings},
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// Runs portmap with `prev` as prevResult (when given).
    pub fn portmap(
        &self,
        cmd: &str,
        ctr: &Container,
        netns: &str,
        conf: &Value,
        prev: Option<&Value>,
    ) -> Run {
        let mut c = conf.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        cni(&self.host, "portmap", cmd, &ctr.id, netns, "eth0", &c, &[])
    }

    pub fn add(&self, ctr: &Container, conf: &Value) -> Value {
        self.portmap("ADD", ctr, ctr.ns.path(), conf, Some(&ctr.result))
            .ok()
            .json()
    }

    pub fn del(&self, ctr: &Container, conf: &Value) -> Run {
        self.portmap("DEL", ctr, ctr.ns.path(), conf, Some(&ctr.result))
    }

    /// The JSON listing of this network's portmap table (None when it does not exist).
    pub fn table(&self) -> Option<Value> {
        table_of(&self.host, &self.net)
    }

    /// How many map/set elements this network's table holds (the marker map aside).
    pub fn element_count(&self) -> usize {
        self.table().map_or(0, |t| {
            t["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o.get("map").or_else(|| o.get("set")))
                .filter(|s| s["name"] != common::nft::SETUP_MARKER)
                .filter_map(|s| s["elem"].as_array())
                .map(Vec::len)
                .sum()
        })
    }

    /// Adds an address to the host's client-facing interface.
    pub fn add_host_addr(&self, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", &self.host_veth];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.host.ip(&args);
    }
}

pub fn table_of(host: &TestNs, net: &str) -> Option<Value> {
    let name = format!("cnirs_portmap_{net}");
    let out = host.exec("nft", &["-j", "list", "table", "inet", &name]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

pub fn addr(s: &str, port: u16) -> SocketAddr {
    sock(s.parse().unwrap(), port)
}

pub use testkit::tcp_via;

/// A UDP exchange from a client socket bound to `from` (or any address when None): the
/// server on `bind` answers; the client must get the answer from `connect`. Returns the
/// peer address the server saw.
pub fn udp_via(
    server: &TestNs,
    bind: SocketAddr,
    client: &TestNs,
    from: Option<SocketAddr>,
    connect: SocketAddr,
) -> Result<SocketAddr, String> {
    let srv_sock = server
        .run(|| UdpSocket::bind(bind))
        .map_err(|e| format!("bind {bind}: {e}"))?;
    srv_sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let client_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let srv = s.spawn(|| -> Result<SocketAddr, String> {
            let mut buf = [0u8; 16];
            let deadline = std::time::Instant::now() + Duration::from_millis(2500);
            let (n, peer) = loop {
                match srv_sock.recv_from(&mut buf) {
                    Ok(got) => break got,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) && std::time::Instant::now() < deadline
                            && !client_done.load(Ordering::SeqCst) => {}
                    Err(e) => return Err(format!("server recv: {e}")),
                }
            };
            srv_sock
                .send_to(&buf[..n], peer)
                .map_err(|e| format!("server send: {e}"))?;
            Ok(peer)
        });
        let res = client.run(|| udp_ping(from, connect));
        client_done.store(true, Ordering::SeqCst);
        let srv_res = srv
            .join()
            .unwrap_or_else(|_| Err("server thread panicked".into()));
        res.and(srv_res)
    })
}

/// Sends one datagram from `from` to `to` and waits briefly for the echo (in the calling
/// thread's namespace).
pub fn udp_ping(from: Option<SocketAddr>, to: SocketAddr) -> Result<(), String> {
    let local = from.unwrap_or_else(|| {
        if to.is_ipv4() {
            addr("0.0.0.0", 0)
        } else {
            addr("::", 0)
        }
    });
    let c = UdpSocket::bind(local).map_err(|e| format!("client bind {local}: {e}"))?;
    c.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    c.send(b"ping").map_err(|e| format!("client send: {e}"))?;
    let mut buf = [0u8; 16];
    let n = c.recv(&mut buf).map_err(|e| format!("client recv: {e}"))?;
    if &buf[..n] != b"ping" {
        return Err(format!("unexpected reply {:?}", &buf[..n]));
    }
    Ok(())
}

/// The conntrack table lines of `ns` mentioning `needle` (the thread's own
/// /proc/thread-self/net/nf_conntrack: /proc/net is the main thread's namespace).
pub fn conntrack_lines(ns: &TestNs, needle: &str) -> Vec<String> {
    ns.run(|| std::fs::read_to_string("/proc/thread-self/net/nf_conntrack").unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}
