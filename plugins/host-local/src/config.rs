//! The host-local configuration: the `ipam` section, the `ipRanges` and `ips` capabilities,
//! `args.cni.ips` and CNI_ARGS `IP=`, checked the way the reference checks them, with every
//! mistake reported as code 7 and a message that says what to change.

use crate::range::{Range, RangeSet, canonical};
use common::spec::result::cidr;
use common::spec::{Dns, Route, Version};
use common::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where allocations live when `dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// How long ADD, DEL, CHECK and GC wait for the network's lock when `lockTimeout` is not set.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub store: StoreLocation,
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
}

/// Where a network's allocations live and how long to wait for its lock: all that DEL and GC
/// need, since they find allocations by attachment.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    /// The network name (the directory under `data_dir`).
    pub name: String,
    pub data_dir: PathBuf,
    pub lock_timeout: Duration,
}

impl StoreLocation {
    /// `<dataDir>/<network>`.
    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNet {
    #[serde(default)]
    name: String,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default)]
    runtime_config: Option<RawRuntime>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    routes: Vec<Route>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
    lock_timeout: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    #[serde(default)]
    subnet: String,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntime {
    #[serde(default)]
    ip_ranges: Vec<Vec<RawRange>>,
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.trim()
        .parse::<IpAddr>()
        .map(canonical)
        .map_err(|_| Error::config(format!("{what}: {s:?} is not an IP address")))
}

fn opt_ip(what: &str, s: &Option<String>) -> Result<Option<IpAddr>> {
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => parse_ip(what, s).map(Some),
    }
}

fn build_range(r: &RawRange, where_: &str) -> Result<Range> {
    if r.subnet.is_empty() {
        return Err(Error::config(format!(
            "{where_}: missing \"subnet\" (e.g. \"10.22.0.0/16\")"
        )));
    }
    let subnet = cidr::parse(&r.subnet).map_err(|e| Error::config(format!("{where_}: {e}")))?;
    Range::new(
        subnet,
        opt_ip(&format!("{where_}: rangeStart"), &r.range_start)?,
        opt_ip(&format!("{where_}: rangeEnd"), &r.range_end)?,
        opt_ip(&format!("{where_}: gateway"), &r.gateway)?,
    )
    .map_err(|e| Error::config(format!("{where_}: {e}")))
}

/// Parses and checks the configuration of one invocation. `version` is the config's
/// cniVersion (below 0.3.0 a result holds one address per family).
pub fn load(conf: &Value, version: Version) -> Result<IpamConfig> {
    let raw: RawNet = common::gojson::from_value(conf)
        .map_err(|e| Error::config(format!("invalid host-local configuration: {e}")))?;
    let Some(ipam) = raw.ipam else {
        return Err(Error::config(
            "IPAM config missing 'ipam' key: host-local needs an \"ipam\" object with \"ranges\" or \"subnet\"",
        ));
    };

    // Order: runtimeConfig.ipRanges, then the legacy single range, then `ranges`.
    let mut raw_sets: Vec<(String, &Vec<RawRange>)> = Vec::new();
    let runtime = raw.runtime_config.unwrap_or_default();
    for (i, set) in runtime.ip_ranges.iter().enumerate() {
        raw_sets.push((format!("runtimeConfig.ipRanges[{i}]"), set));
    }
    let legacy;
    if ipam.subnet.as_deref().is_some_and(|s| !s.is_empty()) {
        legacy = vec![RawRange {
            subnet: ipam.subnet.clone().unwrap_or_default(),
            range_start: ipam.range_start.clone(),
            range_end: ipam.range_end.clone(),
            gateway: ipam.gateway.clone(),
        }];
        raw_sets.push(("ipam.subnet".into(), &legacy));
    }
    for (i, set) in ipam.ranges.iter().enumerate() {
        raw_sets.push((format!("ipam.ranges[{i}]"), set));
    }
    if raw_sets.is_empty() {
        return Err(Error::config(
            "no IP ranges specified: set ipam.ranges (e.g. [[{\"subnet\":\"10.22.0.0/16\"}]]) or ipam.subnet",
        ));
    }

    let mut ranges = Vec::with_capacity(raw_sets.len());
    for (i, (where_, set)) in raw_sets.iter().enumerate() {
        let built = set
            .iter()
            .enumerate()
            .map(|(j, r)| build_range(r, &format!("range set {i} ({where_}), range {j}")))
            .collect::<Result<Vec<_>>>()?;
        let set = RangeSet::new(built)
            .map_err(|e| Error::config(format!("invalid range set {i} ({where_}): {e}")))?;
        ranges.push(set);
    }

    let v4 = ranges.iter().filter(|s| s.is_ipv4()).count();
    let v6 = ranges.len() - v4;
    if (v4 > 1 || v6 > 1) && !version.has_chaining() {
        return Err(Error::config(format!(
            "CNI version {version} does not support more than 1 address per family: use cniVersion 0.3.0 or later, or one range set per family"
        )));
    }
    for (i, a) in ranges.iter().enumerate() {
        for (j, b) in ranges.iter().enumerate().skip(i + 1) {
            if a.overlaps(b) {
                return Err(Error::config(format!(
                    "range set {i} ({a}) overlaps with range set {j} ({b})"
                )));
            }
        }
    }

    let lock_timeout = lock_timeout(ipam.lock_timeout)?;
    Ok(IpamConfig {
        store: StoreLocation {
            name: raw.name,
            data_dir: data_dir(ipam.data_dir.as_deref()),
            lock_timeout,
        },
        ranges,
        routes: ipam.routes,
        resolv_conf: ipam
            .resolv_conf
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
    })
}

fn lock_timeout(seconds: Option<f64>) -> Result<Duration> {
    match seconds {
        None => Ok(DEFAULT_LOCK_TIMEOUT),
        Some(t) if (0.0..=86_400.0).contains(&t) => Ok(Duration::from_secs_f64(t)),
        Some(t) => Err(Error::config(format!(
            "ipam.lockTimeout {t} is not a number of seconds between 0 and 86400"
        ))),
    }
}

fn data_dir(dir: Option<&str>) -> PathBuf {
    match dir {
        None | Some("") => PathBuf::from(DEFAULT_DATA_DIR),
        Some(d) => PathBuf::from(d),
    }
}

/// The store of the config, for DEL and GC: only `name`, `ipam.dataDir` and
/// `ipam.lockTimeout` are read, so ranges, requested addresses or `runtimeConfig` values
/// that ADD would refuse (a config edited since, a runtime's malformed capability) never
/// keep an attachment's addresses from being released. An unusable lock timeout falls back
/// to the default, with a warning.
pub fn load_store(conf: &Value) -> StoreLocation {
    use common::gojson::get;
    let ipam = get(conf, "ipam");
    let dir = ipam.and_then(|i| get(i, "dataDir")).and_then(Value::as_str);
    let timeout = ipam
        .and_then(|i| get(i, "lockTimeout"))
        .filter(|t| !t.is_null());
    let lock_timeout = match timeout.map(|t| t.as_f64().ok_or(t)) {
        None => DEFAULT_LOCK_TIMEOUT,
        Some(Ok(t)) => lock_timeout(Some(t)).unwrap_or_else(|e| {
            log::warn!("{e}; waiting {DEFAULT_LOCK_TIMEOUT:?}");
            DEFAULT_LOCK_TIMEOUT
        }),
        Some(Err(t)) => {
            log::warn!("ipam.lockTimeout {t} is not a number; waiting {DEFAULT_LOCK_TIMEOUT:?}");
            DEFAULT_LOCK_TIMEOUT
        }
    };
    StoreLocation {
        name: get(conf, "name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        data_dir: data_dir(dir),
        lock_timeout,
    }
}

/// The addresses this ADD asks for, in order and without repeats: CNI_ARGS `IP=` (one or
/// several, comma-separated), then `args.cni.ips`, then `runtimeConfig.ips` (a prefix there
/// is ignored).
pub fn requested_ips(conf: &Value, cni_args: &str) -> Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    for (k, v) in common::spec::config::load_cni_args(cni_args, &["IP"])? {
        if k == "IP" {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                push(parse_ip("CNI_ARGS IP", part)?);
            }
        }
    }
    let list = |v: Option<&Value>, what: &str| -> Result<Vec<String>> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => common::gojson::from_value(v).map_err(|e| {
                Error::config(format!("{what} must be a list of IP address strings: {e}"))
            }),
        }
    };
    use common::gojson::get;
    let args_ips = get(conf, "args")
        .and_then(|a| get(a, "cni"))
        .and_then(|c| get(c, "ips"));
    for s in list(args_ips, "args.cni.ips")? {
        push(parse_ip("args.cni.ips", &s)?);
    }
    let rt_ips = get(conf, "runtimeConfig").and_then(|r| get(r, "ips"));
    for s in list(rt_ips, "runtimeConfig.ips")? {
        let addr = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
        push(parse_ip("runtimeConfig.ips", addr)?);
    }
    Ok(out)
}

/// Reads a resolv.conf into result DNS: `nameserver`, `domain`, `search` and `options`.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), rest) = (fields.next(), fields.collect::<Vec<&str>>()) else {
            continue;
        };
        let Some(first) = rest.first() else {
            continue;
        };
        match key {
            "nameserver" => dns.nameservers.push((*first).to_string()),
            "domain" => dns.domain = (*first).to_string(),
            "search" => dns.search.extend(rest.iter().map(|s| s.to_string())),
            "options" => dns.options.extend(rest.iter().map(|s| s.to_string())),
            _ => {}
        }
    }
    dns
}

/// Reads the `resolvConf` file of the config (code 7 when it cannot be read).
pub fn load_dns(conf: &IpamConfig) -> Result<Dns> {
    match &conf.resolv_conf {
        None => Ok(Dns::default()),
        Some(path) => std::fs::read_to_string(path)
            .map(|t| parse_resolv_conf(&t))
            .map_err(|e| {
                Error::config(format!(
                    "ipam.resolvConf: cannot read {}: {e}",
                    path.display()
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load_ok(ipam: Value) -> IpamConfig {
        let conf = json!({"cniVersion":"1.0.0","name":"net1","type":"bridge","ipam":ipam});
        load(&conf, Version::V1_0_0).unwrap()
    }

    fn load_err(conf: Value, version: Version) -> String {
        let e = load(&conf, version).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    fn ipam_err(ipam: Value) -> String {
        load_err(
            json!({"cniVersion":"1.0.0","name":"n","ipam":ipam}),
            Version::V1_0_0,
        )
    }

    #[test]
    fn legacy_range_is_prepended_and_defaults_apply() {
        let c = load_ok(json!({"type":"host-local","subnet":"10.1.0.0/16",
            "rangeStart":"10.1.5.0","gateway":"10.1.0.254",
            "ranges":[[{"subnet":"fd00::/64"}]],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fd00::1"}],
            "dataDir":"/tmp/x","resolvConf":"/etc/r"}));
        assert_eq!(c.ranges.len(), 2);
        let r = &c.ranges[0].0[0];
        assert_eq!(r.start.to_string(), "10.1.5.0");
        assert_eq!(r.end.to_string(), "10.1.255.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.254");
        assert_eq!(
            c.ranges[1].0[0].end.to_string(),
            "fd00::ffff:ffff:ffff:ffff"
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.store.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.store.network_dir(), PathBuf::from("/tmp/x/net1"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/r")));
        assert_eq!(c.store.lock_timeout, DEFAULT_LOCK_TIMEOUT);
    }

    #[test]
    fn defaults_for_data_dir_and_lock_timeout() {
        let c = load_ok(json!({"ranges":[[{"subnet":"10.0.0.0/24"}]],"lockTimeout":2.5}));
        assert_eq!(c.store.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.store.lock_timeout, Duration::from_millis(2500));
        assert!(c.resolv_conf.is_none());
    }

    #[test]
    fn runtime_ip_ranges_come_first() {
        let conf = json!({"cniVersion":"0.4.0","name":"n",
            "ipam":{"subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.1.0/24"}]]},
            "runtimeConfig":{"ipRanges":[[{"subnet":"10.0.2.0/24"}]],"portMappings":[]}});
        let c = load(&conf, Version::V0_4_0).unwrap();
        let subnets: Vec<String> = c.ranges.iter().map(|s| s.0[0].subnet.to_string()).collect();
        assert_eq!(subnets, ["10.0.2.0/24", "10.0.0.0/24", "10.0.1.0/24"]);
    }

    #[test]
    fn every_validation_error_is_code_7_and_says_what_is_wrong() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"ranges":[]}), "no IP ranges"),
            (json!({"ranges":[[]]}), "empty range set"),
            (
                json!({"ranges":[[{"subnet":"10.0.0.5/24"}]]}),
                "network address is 10.0.0.0",
            ),
            (json!({"ranges":[[{"subnet":"10.0.0.0/31"}]]}), "too small"),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0"}]]}),
                "missing /prefix",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/33"}]]}),
                "invalid CIDR",
            ),
            (json!({"ranges":[[{"subnet":"bogus/8"}]]}), "invalid CIDR"),
            (json!({"ranges":[[{}]]}), "missing \"subnet\""),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}),
                "not in network",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.x"}]]}),
                "not an IP address",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}]]}),
                "gateway 10.0.1.1 is not in network",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.3"}]]}),
                "before rangeStart",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}),
                "mixed address families",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}]]}),
                "overlap",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.128/25"}]]}),
                "range set 0 (10.0.0.1-10.0.0.254) overlaps with range set 1",
            ),
            (
                json!({"subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.0.0/24"}]]}),
                "overlaps",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24"}]],"lockTimeout":-1}),
                "lockTimeout",
            ),
            (
                json!({"ranges":"10.0.0.0/24"}),
                "invalid host-local configuration",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"10.0.0.0"}]}),
                "invalid host-local configuration",
            ),
        ];
        for (ipam, want) in cases {
            let msg = ipam_err(ipam.clone());
            assert!(msg.contains(want), "{ipam}: {msg:?} lacks {want:?}");
        }
        let msg = load_err(json!({"cniVersion":"1.0.0","name":"n"}), Version::V1_0_0);
        assert!(msg.contains("'ipam'"), "{msg}");
    }

    #[test]
    fn two_sets_of_a_family_need_0_3_0() {
        let conf = json!({"cniVersion":"0.2.0","name":"n",
            "ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.1.0/24"}]]}});
        let msg = load_err(conf.clone(), Version::V0_2_0);
        assert!(msg.contains("more than 1 address per family"), "{msg}");
        assert!(load(&conf, Version::V0_3_0).is_ok());
        let dual = json!({"cniVersion":"0.2.0","name":"n",
            "ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}});
        assert!(
            load(&dual, Version::V0_2_0).is_ok(),
            "one of each family is fine"
        );
    }

    #[test]
    fn requested_ips_from_all_three_places() {
        let conf = json!({"args":{"cni":{"ips":["10.0.0.7","10.0.0.5"]}},
            "runtimeConfig":{"ips":["10.0.0.9/24","fd00::9"]}});
        let got =
            requested_ips(&conf, "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5,fd00::5").unwrap();
        let got: Vec<String> = got.iter().map(IpAddr::to_string).collect();
        assert_eq!(
            got,
            ["10.0.0.5", "fd00::5", "10.0.0.7", "10.0.0.9", "fd00::9"]
        );
        assert!(requested_ips(&json!({}), "").unwrap().is_empty());
        assert_eq!(
            requested_ips(&json!({}), "IP=10.0.0.300")
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(requested_ips(&json!({}), "FOO=1").unwrap_err().code(), 4);
        let bad = json!({"args":{"cni":{"ips":"10.0.0.1"}}});
        assert_eq!(requested_ips(&bad, "").unwrap_err().code(), 7);
        let mapped = requested_ips(&json!({}), "IP=::ffff:10.0.0.3").unwrap();
        assert_eq!(mapped[0].to_string(), "10.0.0.3");
    }

    #[test]
    fn resolv_conf_is_parsed() {
        let dns = parse_resolv_conf(
            "# comment\n; other\nnameserver 10.0.0.53\nnameserver fd00::53\n\
             domain example.com\nsearch a.example b.example\noptions ndots:5 edns0\nsortlist x\nnameserver\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.53", "fd00::53"]);
        assert_eq!(dns.domain, "example.com");
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }

    #[test]
    fn runtime_values_with_go_field_names() {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge",
            "IPAM": {"Type": "host-local", "Ranges": [[{"Subnet": "10.0.0.0/24", "RangeStart": "10.0.0.10"}]]},
            "RuntimeConfig": {"IPRanges": [[{"Subnet": "10.0.9.0/24"}]], "IPs": ["10.0.9.7/24"]},
            "Args": {"CNI": {"IPs": ["10.0.0.20"]}}});
        let c = load(&conf, Version::V1_0_0).unwrap();
        assert_eq!(c.ranges.len(), 2, "runtime ranges are prepended");
        assert_eq!(c.ranges[1].0[0].start.to_string(), "10.0.0.10");
        let ips = requested_ips(&conf, "").unwrap();
        assert_eq!(
            ips,
            vec![
                "10.0.0.20".parse::<IpAddr>().unwrap(),
                "10.0.9.7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn the_store_is_found_whatever_else_the_config_holds() {
        let conf = json!({"name": "n", "ipam": {"type": "host-local", "dataDir": "/tmp/d",
                "ranges": "not a list", "lockTimeout": "soon"},
            "runtimeConfig": {"ipRanges": 7, "ips": [1, 2]}, "args": {"cni": {"ips": "x"}}});
        assert!(load(&conf, Version::V1_0_0).is_err());
        let s = load_store(&conf);
        assert_eq!(s.network_dir(), PathBuf::from("/tmp/d/n"));
        assert_eq!(s.lock_timeout, DEFAULT_LOCK_TIMEOUT);
        let s = load_store(&json!({"name": "m", "ipam": {"LockTimeout": 2.5}}));
        assert_eq!(s.network_dir(), PathBuf::from(DEFAULT_DATA_DIR).join("m"));
        assert_eq!(s.lock_timeout, Duration::from_millis(2500));
    }
}
