//! The result of ADD, typed in the 1.1.0 shape, read from and printed in every spec version.
//!
//! Plugins work on [`CniResult`] and convert only when printing ([`CniResult::to_json`]);
//! `prevResult` in any version is read with [`CniResult::from_json`].

use super::config::Dns;
use super::version::Version;
use crate::error::{Error, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::net::IpAddr;

/// An ADD result (spec 1.1.0 shape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// One address; `address` keeps its host bits ("10.0.0.5/24").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(with = "cidr")]
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(with = "cidr")]
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub advmss: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: 0,
            advmss: 0,
            priority: 0,
            table: None,
            scope: None,
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Serde for CIDRs that must carry a prefix ("10.0.0.5/24", never a bare address).
pub mod cidr {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn parse(s: &str) -> Result<IpNetwork, String> {
        if !s.contains('/') {
            return Err(format!("invalid CIDR {s:?}: missing /prefix"));
        }
        s.parse::<IpNetwork>()
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))
    }

    pub fn serialize<S: Serializer>(n: &IpNetwork, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(D::Error::custom)
    }
}

/// The 0.1.0/0.2.0 result shape.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LegacyResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
struct LegacyIp {
    #[serde(with = "cidr")]
    ip: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<LegacyRoute>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LegacyRoute {
    #[serde(with = "cidr")]
    dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<IpAddr>,
}

/// The 0.3.0 to 1.1.0 shape as read (tolerates `ips[].version`).
#[derive(Debug, Default, Deserialize)]
struct CurrentResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Reads a result in any version. `default_version` is used when it has no `cniVersion`
    /// (as Go's `version.ParsePrevResult` fills it from the config).
    pub fn from_json(v: &Value, default_version: Version) -> Result<CniResult> {
        let version = match crate::gojson::get(v, "cniVersion").and_then(Value::as_str) {
            Some(s) => Version::parse(s)?,
            None => default_version,
        };
        let decode = |e: serde_json::Error| Error::Decode(format!("decoding result: {e}"));
        if version.has_chaining() {
            let r: CurrentResult = crate::gojson::from_value(v).map_err(decode)?;
            Ok(CniResult {
                interfaces: r.interfaces,
                ips: r.ips,
                routes: r.routes,
                dns: r.dns,
            })
        } else {
            let r: LegacyResult = crate::gojson::from_value(v).map_err(decode)?;
            let mut out = CniResult {
                dns: r.dns,
                ..CniResult::default()
            };
            for ip in [r.ip4, r.ip6].into_iter().flatten() {
                out.ips.push(IpConfig {
                    interface: None,
                    address: ip.ip,
                    gateway: ip.gateway,
                });
                out.routes
                    .extend(ip.routes.into_iter().map(|r| Route::new(r.dst, r.gw)));
            }
            Ok(out)
        }
    }

    /// The result printed in `version`: the legacy ip4/ip6 shape below 0.3.0 (first address
    /// of each family; an error if there is none), `ips[].version` below 1.0.0, and the
    /// 1.1.0 interface fields only from 1.1.0.
    pub fn to_json(&self, version: Version) -> Result<Value> {
        if !version.has_chaining() {
            return self.to_legacy_json(version);
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if version < Version::V1_1_0 {
                        i.mtu = 0;
                        i.socket_path.clear();
                        i.pci_id.clear();
                    }
                    serde_json::to_value(i)
                })
                .collect::<Result<_, _>>()?;
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = serde_json::to_value(ip)?;
                    if version < Version::V1_0_0 {
                        if let Value::Object(m) = &mut v {
                            let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                            m.insert("version".into(), json!(fam));
                        }
                    }
                    Ok::<_, serde_json::Error>(v)
                })
                .collect::<Result<_, _>>()?;
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), serde_json::to_value(&self.routes)?);
        }
        out.insert("dns".into(), serde_json::to_value(&self.dns)?);
        Ok(Value::Object(out))
    }

    fn to_legacy_json(&self, version: Version) -> Result<Value> {
        let first = |v4: bool| {
            self.ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4)
                .map(|ip| LegacyIp {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .map(|r| LegacyRoute {
                            dst: r.dst,
                            gw: r.gw,
                        })
                        .collect(),
                })
        };
        let legacy = LegacyResult {
            ip4: first(true),
            ip6: first(false),
            dns: self.dns.clone(),
        };
        if legacy.ip4.is_none() && legacy.ip6.is_none() {
            return Err(Error::internal(format!(
                "cannot convert the result to version {version}: no valid IP addresses"
            )));
        }
        let mut v = serde_json::to_value(legacy)?;
        if let Value::Object(m) = &mut v {
            m.insert("cniVersion".into(), json!(version.as_str()));
        }
        Ok(v)
    }

    /// The container interface of an attachment: the one named `ifname` with a sandbox, and
    /// its index in `interfaces` (what `ips[].interface` refers to).
    pub fn container_interface(&self, ifname: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && !i.sandbox.is_empty())
    }

    /// The addresses of the interface at `index`; addresses with no interface index count too
    /// (IPAM results and some plugins leave it out).
    pub fn ips_of(&self, index: Option<usize>) -> impl Iterator<Item = &IpConfig> {
        self.ips
            .iter()
            .filter(move |ip| ip.interface.is_none() || index.is_none() || ip.interface == index)
    }

    /// Interfaces on the host side (no sandbox), e.g. a bridge and a host veth.
    pub fn host_interfaces(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces.iter().filter(|i| i.sandbox.is_empty())
    }

    /// Reads `prevResult` from a config if there is one.
    pub fn from_prev(prev: Option<&Value>, conf_version: Version) -> Result<Option<CniResult>> {
        match prev {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_json(v, conf_version)
                .map(Some)
                .map_err(|e| e.context("parsing prevResult")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        let r = json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55", "mtu": 1500},
                {"name": "veth1", "mac": "00:11:22:33:44:66"},
                {"name": "eth0", "mac": "00:11:22:33:44:77", "sandbox": "/run/netns/x", "mtu": 1400}
            ],
            "ips": [
                {"interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                {"interface": 2, "address": "fd00::5/64", "gateway": "fd00::1"},
                {"interface": 2, "address": "10.2.0.5/24"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300},
                       {"dst": "::/0"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        CniResult::from_json(&r, Version::V1_1_0).unwrap()
    }

    #[test]
    fn every_version_roundtrips_through_the_typed_result() {
        let r = sample();
        for v in Version::ALL {
            let j = r.to_json(v).unwrap();
            assert_eq!(j["cniVersion"], v.as_str());
            let back = CniResult::from_json(&j, v).unwrap();
            if v.has_chaining() {
                assert_eq!(back.ips, r.ips, "{v}");
                assert_eq!(back.routes, r.routes, "{v}");
                assert_eq!(back.interfaces.len(), 3);
            } else {
                assert_eq!(back.ips.len(), 2, "{v}: first v4 and first v6 only");
                assert_eq!(back.ips[0].address.to_string(), "10.1.0.5/24");
                assert_eq!(back.ips[1].address.to_string(), "fd00::5/64");
                assert_eq!(back.routes.len(), 2);
            }
            assert_eq!(back.dns, r.dns);
        }
    }

    #[test]
    fn go_field_names_in_a_prev_result() {
        let r = json!({"CNIVersion": "1.0.0",
            "Interfaces": [{"Name": "eth0", "Mac": "00:11:22:33:44:55", "Sandbox": "/x"}],
            "IPs": [{"Interface": 0, "Address": "10.0.0.5/24", "Gateway": "10.0.0.1"}],
            "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.0.0.1"}], "DNS": {"Nameservers": ["10.0.0.1"]}});
        let r = CniResult::from_json(&r, Version::V0_2_0).unwrap();
        assert_eq!(r.container_interface("eth0").unwrap().0, 0);
        assert_eq!(r.ips[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.routes[0].gw, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.dns.nameservers, vec!["10.0.0.1"]);
    }

    #[test]
    fn attachment_lookups() {
        let r = sample();
        let (idx, eth0) = r.container_interface("eth0").unwrap();
        assert_eq!((idx, eth0.sandbox.as_str()), (2, "/run/netns/x"));
        assert!(
            r.container_interface("cni0").is_none(),
            "no sandbox: not a container interface"
        );
        assert_eq!(r.ips_of(Some(2)).count(), 3);
        assert_eq!(r.ips_of(Some(0)).count(), 0);
        assert_eq!(r.host_interfaces().count(), 2);
    }

    #[test]
    fn version_specific_fields() {
        let r = sample();
        let v040 = r.to_json(Version::V0_4_0).unwrap();
        assert_eq!(v040["ips"][0]["version"], "4");
        assert_eq!(v040["ips"][1]["version"], "6");
        assert!(v040["interfaces"][0].get("mtu").is_none());
        assert_eq!(
            v040["routes"][0]["mtu"], 1300,
            "route extras survive (shared Go type)"
        );
        let v100 = r.to_json(Version::V1_0_0).unwrap();
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][2].get("mtu").is_none());
        let v110 = r.to_json(Version::V1_1_0).unwrap();
        assert_eq!(v110["interfaces"][2]["mtu"], 1400);
        let v020 = r.to_json(Version::V0_2_0).unwrap();
        assert_eq!(v020["ip4"]["ip"], "10.1.0.5/24");
        assert_eq!(v020["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v020["ip6"]["routes"][0]["dst"], "::/0");
        assert!(v020.get("ips").is_none());
    }

    #[test]
    fn empty_dns_is_always_printed_and_no_ip_fails_legacy() {
        let r = CniResult::default();
        assert_eq!(
            r.to_json(Version::V1_0_0).unwrap(),
            json!({"cniVersion":"1.0.0","dns":{}})
        );
        assert!(r.to_json(Version::V0_2_0).is_err());
    }

    #[test]
    fn missing_version_uses_the_config_version_and_bad_cidrs_fail() {
        let legacy = json!({"ip4": {"ip": "10.0.0.2/8"}});
        let r = CniResult::from_json(&legacy, Version::V0_2_0).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/8");
        let bad = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]});
        assert_eq!(
            CniResult::from_json(&bad, Version::V1_0_0)
                .unwrap_err()
                .code(),
            6
        );
        let nulls = json!({"cniVersion": "1.0.0", "interfaces": null, "ips": null, "routes": null, "dns": null});
        assert_eq!(
            CniResult::from_json(&nulls, Version::V1_0_0).unwrap(),
            CniResult::default()
        );
        let unknown = json!({"cniVersion": "9.9.9"});
        assert_eq!(
            CniResult::from_json(&unknown, Version::V1_0_0)
                .unwrap_err()
                .code(),
            1
        );
    }
}
