//! Capability arguments given on the command line, turned into the runtime's
//! `CapabilityArgs` map (CONVENTIONS.md key names).

use common::{Error, Result};
use serde_json::{Map, Value, json};
use std::net::IpAddr;

/// `HOST:CONTAINER[/PROTO][@HOSTIP]` → a `portMappings` entry. PROTO is tcp (default), udp or
/// sctp; HOSTIP may be IPv4 or IPv6 (no brackets needed, `@` separates it).
pub fn parse_port_mapping(s: &str) -> Result<Value> {
    let bad = |why: &str| {
        Error::config(format!(
            "--port-mapping {s:?}: {why} (expected HOST:CONTAINER[/PROTO][@HOSTIP])"
        ))
    };
    let (spec, host_ip) = match s.split_once('@') {
        Some((spec, ip)) => {
            let ip: IpAddr = ip.parse().map_err(|_| bad("invalid host IP"))?;
            (spec, Some(ip))
        }
        None => (s, None),
    };
    let (ports, proto) = match spec.split_once('/') {
        Some((ports, proto)) => (ports, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("protocol must be tcp, udp or sctp"));
    }
    let (host, container) = ports.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    let port = |p: &str| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad("ports must be 1-65535")),
        }
    };
    let mut m = json!({
        "hostPort": port(host)?,
        "containerPort": port(container)?,
        "protocol": proto,
    });
    if let (Some(ip), Value::Object(obj)) = (host_ip, &mut m) {
        obj.insert("hostIP".into(), json!(ip.to_string()));
    }
    Ok(m)
}

/// `ingressRate=N,ingressBurst=N,egressRate=N,egressBurst=N` (any subset; rates in bit/s,
/// bursts in bits) → the `bandwidth` object.
pub fn parse_bandwidth(s: &str) -> Result<Value> {
    const KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
    let mut out = Map::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| Error::config(format!("--bandwidth: {part:?} is not KEY=VALUE")))?;
        let key = KEYS
            .iter()
            .find(|known| known.eq_ignore_ascii_case(k.trim()))
            .ok_or_else(|| {
                Error::config(format!("--bandwidth: unknown key {k:?} (known: {KEYS:?})"))
            })?;
        let n: u64 = v.trim().parse().map_err(|_| {
            Error::config(format!(
                "--bandwidth: {key} needs a non-negative integer, got {v:?}"
            ))
        })?;
        out.insert((*key).to_string(), json!(n));
    }
    if out.is_empty() {
        return Err(Error::config("--bandwidth: no values given"));
    }
    Ok(Value::Object(out))
}

/// `ADDR[/PREFIX]` → one `ips` entry, checked and normalised.
pub fn parse_ip(s: &str) -> Result<String> {
    let bad = || Error::config(format!("--ip {s:?}: expected ADDR or ADDR/PREFIX"));
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match prefix {
        Some(p) if p > max => Err(bad()),
        Some(p) => Ok(format!("{addr}/{p}")),
        None => Ok(addr.to_string()),
    }
}

/// A MAC address `xx:xx:xx:xx:xx:xx` (or with `-`), normalised to lower case with `:`.
pub fn parse_mac(s: &str) -> Result<String> {
    let mac = common::netlink::parse_mac(s).map_err(|_| {
        Error::config(format!(
            "--mac {s:?}: expected six hex octets like 0a:58:0a:00:00:02"
        ))
    })?;
    Ok(common::netlink::format_mac(&mac))
}

/// What the command line said about capability arguments.
#[derive(Debug, Clone, Default)]
pub struct CapArgsInput {
    pub port_mappings: Vec<String>,
    pub bandwidth: Option<String>,
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub raw: Option<String>,
}

impl CapArgsInput {
    pub fn is_empty(&self) -> bool {
        self.port_mappings.is_empty()
            && self.bandwidth.is_none()
            && self.ips.is_empty()
            && self.mac.is_none()
            && self.raw.is_none()
    }

    /// The capability args map: `--capability-args` first, then the typed options, which
    /// replace a key of the same name.
    pub fn build(&self) -> Result<Map<String, Value>> {
        let mut out = match &self.raw {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(Error::config("--capability-args must be a JSON object")),
                Err(e) => return Err(Error::config(format!("--capability-args: {e}"))),
            },
        };
        if !self.port_mappings.is_empty() {
            let pm = self
                .port_mappings
                .iter()
                .map(|s| parse_port_mapping(s))
                .collect::<Result<Vec<_>>>()?;
            out.insert("portMappings".into(), Value::Array(pm));
        }
        if let Some(bw) = &self.bandwidth {
            out.insert("bandwidth".into(), parse_bandwidth(bw)?);
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|s| parse_ip(s))
                .collect::<Result<Vec<_>>>()?;
            out.insert("ips".into(), json!(ips));
        }
        if let Some(mac) = &self.mac {
            out.insert("mac".into(), json!(parse_mac(mac)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings() {
        assert_eq!(
            parse_port_mapping("8080:80").unwrap(),
            json!({"hostPort":8080,"containerPort":80,"protocol":"tcp"})
        );
        assert_eq!(
            parse_port_mapping("53:5353/UDP@127.0.0.1").unwrap(),
            json!({"hostPort":53,"containerPort":5353,"protocol":"udp","hostIP":"127.0.0.1"})
        );
        assert_eq!(
            parse_port_mapping("443:8443/sctp@::1").unwrap()["hostIP"],
            "::1"
        );
        assert_eq!(
            parse_port_mapping("1:2@fd00::1").unwrap()["protocol"],
            "tcp"
        );
        for bad in [
            "80",
            "0:80",
            "80:70000",
            "80:80/icmp",
            "80:80@nohost",
            "a:b",
            "",
        ] {
            assert_eq!(parse_port_mapping(bad).unwrap_err().code(), 7, "{bad}");
        }
    }

    #[test]
    fn bandwidth() {
        assert_eq!(
            parse_bandwidth(
                "ingressRate=1000000,ingressBurst=50000,egressRate=2000,egressBurst=10"
            )
            .unwrap(),
            json!({"ingressRate":1000000,"ingressBurst":50000,"egressRate":2000,"egressBurst":10})
        );
        assert_eq!(
            parse_bandwidth("egressrate=5").unwrap(),
            json!({"egressRate": 5})
        );
        for bad in [
            "",
            "ingressRate",
            "ingressRate=-1",
            "speed=5",
            "ingressRate=1k",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ips_and_mac() {
        assert_eq!(parse_ip("10.0.0.5/24").unwrap(), "10.0.0.5/24");
        assert_eq!(parse_ip("fd00::5").unwrap(), "fd00::5");
        assert!(parse_ip("10.0.0.5/33").is_err());
        assert!(parse_ip("10.0.0/24").is_err());
        assert_eq!(parse_mac("0A-58-0a-00-00-02").unwrap(), "0a:58:0a:00:00:02");
        assert!(parse_mac("0a:58:0a:00:00").is_err());
    }

    #[test]
    fn typed_options_override_raw_json() {
        let input = CapArgsInput {
            port_mappings: vec!["80:8080".into()],
            ips: vec!["10.1.0.2/16".into()],
            raw: Some(r#"{"portMappings":[],"aliases":["x"]}"#.into()),
            ..Default::default()
        };
        let m = input.build().unwrap();
        assert_eq!(m["portMappings"][0]["hostPort"], 80);
        assert_eq!(m["aliases"], json!(["x"]));
        assert_eq!(m["ips"], json!(["10.1.0.2/16"]));
        assert!(!m.contains_key("mac"));
        let raw_only = CapArgsInput {
            raw: Some("[1]".into()),
            ..Default::default()
        };
        assert!(raw_only.build().is_err());
    }
}
