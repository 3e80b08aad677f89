//! Shared by the firewall integration tests: a host namespace with bridges made by the real
//! bridge + host-local plugins, an "outside" namespace routed through the host, and the
//! firewall plugin run as a runtime would (prevResult = the bridge's result).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use tempfile::TempDir;
use testkit::{Run, TestNs, cni};

/// One test's world: its host namespace and IPAM data dir.
pub struct World {
    pub host: TestNs,
    pub data: TempDir,
}

/// A container attached by the bridge plugin.
pub struct Ctr {
    pub id: String,
    pub ns: TestNs,
    /// The bridge plugin's result (what the firewall gets as prevResult).
    pub result: Value,
    /// The network (conflist) name.
    pub net: String,
}

impl Ctr {
    pub fn v4(&self) -> IpAddr {
        addr_of(&self.result, true)
    }
    pub fn v6(&self) -> IpAddr {
        addr_of(&self.result, false)
    }
}

pub fn addr_of(result: &Value, v4: bool) -> IpAddr {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap().parse::<IpAddr>().unwrap())
        .find(|a| a.is_ipv4() == v4)
        .unwrap()
}

impl World {
    pub fn new() -> World {
        World {
            host: TestNs::new(),
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// A bridge network: gateway on the bridge, default routes through it.
    pub fn bridge_conf(&self, net: &str, bridge: &str, v4: &str, v6: Option<&str>) -> Value {
        let mut ranges = vec![json!([{"subnet": v4}])];
        let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
        if let Some(v6) = v6 {
            ranges.push(json!([{"subnet": v6}]));
            routes.push(json!({"dst": "::/0"}));
        }
        json!({
            "cniVersion": "1.1.0",
            "name": net,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": ranges,
                "routes": routes,
            }
        })
    }

    /// Attaches a new container namespace with the bridge plugin.
    pub fn attach(&self, conf: &Value) -> Ctr {
        let ns = TestNs::new();
        let id = testkit::unique_name("c");
        let result = cni(
            &self.host,
            "bridge",
            "ADD",
            &id,
            ns.path(),
            "eth0",
            conf,
            &[],
        )
        .ok()
        .json();
        Ctr {
            id,
            ns,
            result,
            net: conf["name"].as_str().unwrap().to_string(),
        }
    }

    /// Runs the firewall plugin for `ctr` with its bridge result as prevResult.
    pub fn fw(&self, cmd: &str, ctr: &Ctr, conf: &Value) -> Run {
        let mut c = conf.clone();
        c["name"] = json!(ctr.net);
        c["prevResult"] = ctr.result.clone();
        cni(
            &self.host,
            "firewall",
            cmd,
            &ctr.id,
            ctr.ns.path(),
            "eth0",
            &c,
            &[],
        )
    }

    /// The host's forward policy made drop exactly as `iptables-nft -P FORWARD DROP` (and
    /// `ip6tables-nft`) make it.
    pub fn forward_policy_drop(&self) {
        for fam in ["ip", "ip6"] {
            self.nft(&["add", "table", fam, "filter"]);
            self.nft(&[
                "add",
                "chain",
                fam,
                "filter",
                "FORWARD",
                "{ type filter hook forward priority 0; policy drop; }",
            ]);
        }
    }

    pub fn nft(&self, args: &[&str]) -> String {
        let out = self.host.exec("nft", args);
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An "outside" namespace behind a veth from the host: 192.0.2.2 / fd00:99::2, with routes
    /// to the containers' 10.0.0.0/8 and fd00::/8 (other than its own) through the host.
    pub fn outside(&self) -> TestNs {
        let out = TestNs::new();
        let (h, o) = (testkit::unique_name("up"), testkit::unique_name("uo"));
        self.host.ip(&[
            "link",
            "add",
            &h,
            "type",
            "veth",
            "peer",
            "name",
            &o,
            "netns",
            &out.tid(),
        ]);
        self.host.ip(&["addr", "add", "192.0.2.1/24", "dev", &h]);
        self.host
            .ip(&["addr", "add", "fd00:99::1/64", "dev", &h, "nodad"]);
        self.host.ip(&["link", "set", &h, "up"]);
        out.ip(&["addr", "add", "192.0.2.2/24", "dev", &o]);
        out.ip(&["addr", "add", "fd00:99::2/64", "dev", &o, "nodad"]);
        out.ip(&["link", "set", &o, "up"]);
        out.ip(&["route", "add", "10.0.0.0/8", "via", "192.0.2.1"]);
        out.ip(&["route", "add", "fd00::/12", "via", "fd00:99::1"]);
        out
    }

    /// Elements of a set of ours, as listed (`[]` when the table or set is missing).
    pub fn elements(&self, family: &str, set: &str) -> Vec<Value> {
        let out = self
            .host
            .exec("nft", &["-j", "list", "set", family, "cnirs_firewall", set]);
        if !out.status.success() {
            return vec![];
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["set"]["elem"].as_array())
            .flatten()
            .cloned()
            .collect()
    }

    /// True when any element of our tables carries this comment.
    pub fn has_comment(&self, comment: &str) -> bool {
        self.host
            .nft_ruleset()
            .to_string()
            .contains(&format!("\"comment\":\"{comment}\""))
    }
}

/// Firewall config of a version with extra keys.
pub fn fw_conf(version: &str, extra: Value) -> Value {
    let mut c = json!({"cniVersion": version, "type": "firewall"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A TCP exchange from `client` to `server` at `addr`, as a bool.
pub fn reaches(server: &TestNs, client: &TestNs, addr: SocketAddr) -> bool {
    testkit::tcp_exchange(server, client, addr).is_ok()
}

pub fn comment(net: &str, ctr: &Ctr) -> String {
    format!("{net}/{}/eth0", ctr.id)
}

/// Which binary the host-side iptables-nft checks use, if installed.
pub fn iptables_nft(v6: bool) -> Option<&'static str> {
    let name = if v6 { "ip6tables-nft" } else { "iptables-nft" };
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(name).exists())
        .then_some(name)
}
