//! Shared by the bridge integration tests: a test's world (host namespace, IPAM data dir,
//! network name) and small readers of kernel state.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::net::IpAddr;
use tempfile::TempDir;
use testkit::{Run, TestNs, cni};

/// One test's world: its host namespace, its IPAM data dir, its network name.
pub struct World {
    pub host: TestNs,
    pub data: TempDir,
    pub net: String,
}

impl World {
    pub fn new() -> World {
        World {
            host: TestNs::new(),
            data: tempfile::tempdir().unwrap(),
            net: testkit::unique_name("net"),
        }
    }

    pub fn conf(&self, version: &str, extra: Value, ranges: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": self.net,
            "type": "bridge",
            "bridge": "cnitest0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": ranges,
                "routes": [{"dst": "0.0.0.0/0"}],
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    pub fn run(&self, cmd: &str, cid: &str, netns: &str, conf: &Value) -> Run {
        cni(&self.host, "bridge", cmd, cid, netns, "eth0", conf, &[])
    }

    pub fn add(&self, cid: &str, ns: &TestNs, conf: &Value) -> Value {
        self.run("ADD", cid, ns.path(), conf).ok().json()
    }

    /// DEL with the ADD result as prevResult (as libcni sends it from its cache).
    pub fn del(&self, cid: &str, netns: &str, conf: &Value, prev: Option<&Value>) -> Run {
        let mut c = conf.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        self.run("DEL", cid, netns, &c)
    }

    pub fn check(&self, cid: &str, ns: &TestNs, conf: &Value, prev: &Value) -> Run {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.run("CHECK", cid, ns.path(), &c)
    }

    /// Allocation files (named by IP) in host-local's network directory.
    pub fn allocations(&self) -> Vec<String> {
        let dir = self.data.path().join(&self.net);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut v: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    pub fn host_veths(&self) -> Vec<String> {
        self.host
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("veth"))
            .map(String::from)
            .collect()
    }
}

pub fn v4_ranges(subnet: &str) -> Value {
    json!([[{"subnet": subnet}]])
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

pub fn container_addrs(ns: &TestNs) -> Vec<String> {
    ns.ip_json(&["addr", "show", "dev", "eth0"])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The nftables elements (set members) whose comment mentions `needle`.
pub fn nft_mentions(host: &TestNs, needle: &str) -> bool {
    host.nft_ruleset().to_string().contains(needle)
}
