//! The portmap configuration: the plugin's keys, the `portMappings` capability, and the
//! container addresses taken from prevResult.

use common::error::{Error, Result};
use common::skel::CmdArgs;
use common::spec::{CniResult, NetConf};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::net::IpAddr;

/// The config as it arrives on stdin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawConf {
    /// The common keys, decoded from the same config by [`CmdArgs::net_conf`].
    #[serde(skip)]
    pub net: NetConf,
    /// Masquerade hairpin and localhost traffic to the container (default true).
    #[serde(default)]
    pub snat: Option<bool>,
    /// Masquerade every connection that reaches the container through a mapping.
    #[serde(default)]
    pub masq_all: bool,
    #[serde(default, rename = "conditionsV4")]
    pub conditions_v4: Option<Vec<String>>,
    #[serde(default, rename = "conditionsV6")]
    pub conditions_v6: Option<Vec<String>>,
    /// `iptables` or `nftables`: accepted for compatibility; rules are always nftables.
    #[serde(default)]
    pub backend: Option<String>,
    /// iptables only: validated as the reference does, otherwise unused.
    #[serde(default)]
    pub mark_masq_bit: Option<i64>,
    /// iptables only: validated as the reference does, otherwise unused.
    #[serde(default)]
    pub external_set_mark_chain: Option<String>,
}

/// A transport protocol a mapping can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Result<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => Err(Error::config(format!(
                "portMappings: protocol {s:?} is not one of tcp, udp, sctp"
            ))),
        }
    }

    /// The name nft uses (`inet_proto`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One entry of `runtimeConfig.portMappings`, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: String,
    #[serde(default, rename = "hostIP")]
    host_ip: String,
}

/// One port mapping, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    /// None: every local address of both families. An unspecified address (`0.0.0.0`,
    /// `::`) means every local address of its family only.
    pub host_ip: Option<IpAddr>,
}

impl Mapping {
    /// Whether the mapping applies to `v6` traffic, and with which specific host address
    /// (`None` = any local address).
    pub fn for_family(&self, v6: bool) -> Option<Option<IpAddr>> {
        match self.host_ip {
            None => Some(None),
            Some(ip) if ip.is_ipv6() != v6 => None,
            Some(ip) if ip.is_unspecified() => Some(None),
            Some(ip) => Some(Some(ip)),
        }
    }
}

fn port(v: i64, what: &str) -> Result<u16> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::config(format!("Invalid {what} port number: {v}")))
}

fn parse_mapping(raw: RawMapping) -> Result<Mapping> {
    let host_ip = match raw.host_ip.trim() {
        "" => None,
        s => Some(s.parse::<IpAddr>().map_err(|_| {
            Error::config(format!("portMappings: hostIP {s:?} is not an IP address"))
        })?),
    };
    Ok(Mapping {
        host_port: port(raw.host_port, "host")?,
        container_port: port(raw.container_port, "container")?,
        proto: Proto::parse(&raw.protocol)?,
        host_ip,
    })
}

/// What `conditionsV4`/`conditionsV6` hold, joined into one nft match expression.
fn conditions(list: &Option<Vec<String>>, key: &str) -> Result<Option<String>> {
    let Some(tokens) = list else {
        return Ok(None);
    };
    let first = tokens.iter().map(|t| t.trim()).find(|t| !t.is_empty());
    let Some(first) = first else {
        return Ok(None);
    };
    if first.starts_with('-') || first.starts_with('!') {
        return Err(Error::config(format!(
            "{key} is in iptables syntax ({first:?}...); this portmap writes nftables rules \
             only: give nft match expressions, e.g. [\"ip\", \"saddr\", \"!=\", \"10.0.0.0/8\"]"
        )));
    }
    let joined = tokens
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    // One rule's matches: nothing that could end the command (`;`, a line break), comment
    // out the rest of it (`#`) or continue it (`\`).
    if let Some(bad) = joined
        .chars()
        .find(|c| matches!(c, ';' | '#' | '\\') || c.is_control())
    {
        return Err(Error::config(format!(
            "{key}: character {bad:?} is not allowed in nft match expressions here"
        )));
    }
    Ok(Some(joined))
}

/// The checked configuration of one invocation.
#[derive(Debug, Clone)]
pub struct Conf {
    pub raw: RawConf,
    pub snat: bool,
    pub masq_all: bool,
    pub conditions_v4: Option<String>,
    pub conditions_v6: Option<String>,
    /// `None` when `runtimeConfig.portMappings` is absent (DEL then lists by comment).
    pub mappings: Option<Vec<Mapping>>,
}

impl Conf {
    pub fn network(&self) -> &str {
        &self.raw.net.name
    }
}

/// The config for DEL and GC. A value ADD would refuse (a malformed `portMappings` from the
/// runtime, a key edited since) is logged and ignored: the attachment's rules are then found
/// by their owner in the kernel instead of being derived from the mappings.
pub fn load_for_teardown(args: &CmdArgs) -> Conf {
    load(args).unwrap_or_else(|e| {
        log::warn!(
            "{}: ignoring an unusable config ({e}); the attachment's rules are found by owner",
            args.command.as_str()
        );
        let mut raw = RawConf::default();
        raw.net.name = common::gojson::get(&args.conf, "name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        Conf {
            raw,
            snat: true,
            masq_all: false,
            conditions_v4: None,
            conditions_v6: None,
            mappings: None,
        }
    })
}

/// Parses and checks the configuration (code 6 for malformed JSON, 7 for bad values).
pub fn load(args: &CmdArgs) -> Result<Conf> {
    let mut raw: RawConf = args.parse_conf()?;
    raw.net = args.net_conf()?;
    match raw.backend.as_deref() {
        None | Some("") | Some("iptables") | Some("nftables") => {}
        Some(other) => {
            return Err(Error::config(format!(
                "backend {other:?} is not one of \"iptables\", \"nftables\""
            )));
        }
    }
    if raw.mark_masq_bit.is_some() && raw.external_set_mark_chain.is_some() {
        return Err(Error::config(
            "Cannot specify externalSetMarkChain and markMasqBit",
        ));
    }
    if let Some(bit) = raw.mark_masq_bit {
        if !(0..=31).contains(&bit) {
            return Err(Error::config("MasqMarkBit must be between 0 and 31"));
        }
    }
    let conditions_v4 = conditions(&raw.conditions_v4, "conditionsV4")?;
    let conditions_v6 = conditions(&raw.conditions_v6, "conditionsV6")?;
    let mappings = match raw.net.runtime("portMappings") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let list: Vec<RawMapping> = common::gojson::from_value(v)
                .map_err(|e| Error::Decode(format!("runtimeConfig.portMappings: {e}")))?;
            Some(
                list.into_iter()
                    .map(parse_mapping)
                    .collect::<Result<Vec<_>>>()?,
            )
        }
    };
    Ok(Conf {
        snat: raw.snat.unwrap_or(true),
        masq_all: raw.masq_all,
        conditions_v4,
        conditions_v6,
        mappings,
        raw,
    })
}

/// The container's first IPv4 and first IPv6 address (with prefix) on `ifname`: addresses
/// of the interface named `ifname` that has a sandbox, and addresses with no interface.
pub fn container_ips(result: &CniResult, ifname: &str) -> (Option<IpNetwork>, Option<IpNetwork>) {
    let index = result.container_interface(ifname).map(|(i, _)| i);
    let on_container = |ip: &&common::spec::IpConfig| match ip.interface {
        None => true,
        Some(i) => Some(i) == index,
    };
    let v4 = result
        .ips
        .iter()
        .filter(on_container)
        .map(|ip| ip.address)
        .find(IpNetwork::is_ipv4);
    let v6 = result
        .ips
        .iter()
        .filter(on_container)
        .map(|ip| ip.address)
        .find(IpNetwork::is_ipv6);
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(m: serde_json::Value) -> Result<Mapping> {
        parse_mapping(common::gojson::from_value(&m).map_err(|e| Error::Decode(e.to_string()))?)
    }

    fn cmd(command: common::skel::Command, conf: serde_json::Value) -> CmdArgs {
        CmdArgs {
            command,
            container_id: "c1".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
            path: "/opt/cni/bin".into(),
            stdin: conf.to_string().into_bytes(),
            conf,
            version: common::spec::Version::V1_0_0,
        }
    }

    #[test]
    fn containerd_sends_go_field_names() {
        use common::skel::Command;
        let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "portmap",
            "runtimeConfig": {"portMappings": [
                {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
                {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp", "HostIP": "192.0.2.1"}]}});
        let c = load(&cmd(Command::Add, conf)).unwrap();
        let m = c.mappings.unwrap();
        assert_eq!((m[0].host_port, m[0].container_port), (8080, 80));
        assert_eq!((m[0].proto, m[0].host_ip), (Proto::Tcp, None));
        assert_eq!(m[1].proto, Proto::Udp);
        assert_eq!(m[1].host_ip, Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn teardown_ignores_what_add_refuses() {
        use common::skel::Command;
        for bad_rc in [
            json!({"portMappings": "8080:80"}),
            json!({"portMappings": [{"HostPort": 0, "ContainerPort": 80, "Protocol": "tcp"}]}),
            json!({"portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "icmp"}]}),
        ] {
            let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "portmap",
                "conditionsV4": ["-s", "10.0.0.0/8"], "runtimeConfig": bad_rc});
            assert!(load(&cmd(Command::Add, conf.clone())).is_err(), "{bad_rc}");
            let c = load_for_teardown(&cmd(Command::Del, conf));
            assert_eq!(c.network(), "k8s");
            assert!(
                c.mappings.is_none(),
                "unknown mappings: rules are found by owner"
            );
        }
    }

    #[test]
    fn mappings_are_checked() {
        let m = raw(json!({"hostPort": 8080, "containerPort": 80, "protocol": "TCP"})).unwrap();
        assert_eq!(
            m,
            Mapping {
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp,
                host_ip: None
            }
        );
        for bad in [
            json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"}),
            json!({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}),
            json!({"hostPort": 1, "containerPort": -1, "protocol": "tcp"}),
            json!({"hostPort": 1, "containerPort": 1, "protocol": "icmp"}),
            json!({"hostPort": 1, "containerPort": 1, "protocol": ""}),
            json!({"hostPort": 1, "containerPort": 1, "protocol": "tcp", "hostIP": "nope"}),
        ] {
            assert_eq!(raw(bad.clone()).unwrap_err().code(), 7, "{bad}");
        }
    }

    #[test]
    fn families_of_a_mapping() {
        let mut m = raw(json!({"hostPort": 1, "containerPort": 1, "protocol": "udp"})).unwrap();
        assert_eq!(
            (m.for_family(false), m.for_family(true)),
            (Some(None), Some(None))
        );
        m.host_ip = Some("0.0.0.0".parse().unwrap());
        assert_eq!(
            (m.for_family(false), m.for_family(true)),
            (Some(None), None)
        );
        m.host_ip = Some("::".parse().unwrap());
        assert_eq!(
            (m.for_family(false), m.for_family(true)),
            (None, Some(None))
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        m.host_ip = Some(ip);
        assert_eq!(
            (m.for_family(false), m.for_family(true)),
            (Some(Some(ip)), None)
        );
    }

    #[test]
    fn conditions_syntax() {
        let c =
            |v: serde_json::Value| conditions(&serde_json::from_value(v).unwrap(), "conditionsV4");
        assert_eq!(
            c(json!(["ip", "saddr", "!=", "10.0.0.0/8"]))
                .unwrap()
                .as_deref(),
            Some("ip saddr != 10.0.0.0/8")
        );
        assert_eq!(c(json!([])).unwrap(), None);
        assert_eq!(c(json!(null)).unwrap(), None);
        assert_eq!(c(json!(["-s", "1.2.3.4"])).unwrap_err().code(), 7);
        assert_eq!(c(json!(["!", "-d", "1.2.3.4"])).unwrap_err().code(), 7);
        assert!(
            c(json!(["-s 1.2.3.4"]))
                .unwrap_err()
                .to_string()
                .contains("iptables")
        );
        assert_eq!(
            c(json!(["ip saddr 1.2.3.4; flush ruleset"]))
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            c(json!(["ip saddr 1.2.3.4\nflush ruleset"]))
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(c(json!(["ip saddr 1.2.3.4 #"])).unwrap_err().code(), 7);
    }

    #[test]
    fn container_addresses_from_prev_result() {
        let r = CniResult::from_json(
            &json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "br0"}, {"name": "eth0", "sandbox": "/x"}, {"name": "eth1", "sandbox": "/x"}],
                "ips": [
                    {"interface": 0, "address": "10.9.0.1/24"},
                    {"interface": 2, "address": "10.8.0.5/24"},
                    {"interface": 1, "address": "10.0.0.5/24"},
                    {"interface": 1, "address": "10.0.0.6/24"},
                    {"address": "fd00::5/64"}
                ]}),
            common::spec::Version::V1_0_0,
        )
        .unwrap();
        let (v4, v6) = container_ips(&r, "eth0");
        assert_eq!(v4, Some("10.0.0.5/24".parse().unwrap()));
        assert_eq!(v6, Some("fd00::5/64".parse().unwrap()));
        let (v4, _) = container_ips(&r, "eth1");
        assert_eq!(v4, Some("10.8.0.5/24".parse().unwrap()));
    }
}
