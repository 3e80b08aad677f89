//! The tuning plugin's configuration (REFERENCE 2.6): keys, where each value may come from,
//! and validation that needs no kernel.

use crate::sysctl::{self, Allowlist, Sysctl};
use common::error::{Error, Result};
use common::netlink::{Mac, format_mac, parse_mac};
use common::skel::CmdArgs;
use common::spec::{NetConf, config::load_cni_args};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// Where backups live unless `dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

/// The config as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TuningConf {
    /// The common keys, decoded from the same config by [`CmdArgs::net_conf`].
    #[serde(skip)]
    pub net: NetConf,
    #[serde(default)]
    pub data_dir: String,
    /// Values are strings, as in the reference (`"net.core.somaxconn": "500"`).
    #[serde(default)]
    pub sysctl: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub promisc: bool,
    /// 0 = leave the MTU alone.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub allmulti: Option<bool>,
    #[serde(default, rename = "txQLen")]
    pub tx_q_len: Option<u32>,
}

impl TuningConf {
    /// The plugin's keys and the common ones, decoded from one config (code 6 on a bad shape).
    pub fn from_json(conf: &Value) -> Result<TuningConf> {
        let mut tuning: TuningConf = decode("network config", conf)?;
        tuning.net = decode("network config", conf)?;
        Ok(tuning)
    }
}

/// What one invocation wants the interface and its namespace to look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub data_dir: String,
    pub mac: Option<Mac>,
    /// true: switch promiscuous mode on. false: leave it alone on ADD, but CHECK wants it off
    /// (as the reference does).
    pub promisc: bool,
    pub mtu: Option<u32>,
    pub allmulti: Option<bool>,
    pub txqlen: Option<u32>,
    /// Sorted by path, one entry per path.
    pub sysctls: Vec<Sysctl>,
}

/// Reads and validates the config for ADD and CHECK: code 6 for values of the wrong type,
/// code 7 for invalid values, duplicate or forbidden sysctl keys.
/// The allow-list is read only when some sysctl is configured.
pub fn load(args: &CmdArgs) -> Result<Settings> {
    reject_duplicate_sysctls(&args.stdin)?;
    let conf = TuningConf::from_json(&args.conf)?;
    resolve(&conf, &args.args, &args.ifname, Allowlist::load)
}

/// The data dir only: what DEL and GC need (lenient: a config ADD accepted parses here).
pub fn data_dir(args: &CmdArgs) -> String {
    match common::gojson::get(&args.conf, "dataDir").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => d.to_string(),
        _ => DEFAULT_DATA_DIR.to_string(),
    }
}

fn decode<T: DeserializeOwned>(what: &str, v: &Value) -> Result<T> {
    common::gojson::from_value(v).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

/// Applies the reference's precedence: the config, then CNI_ARGS `MAC=`, then
/// `runtimeConfig.mac`, then `args.cni.*` (the last one given wins; `args.cni.sysctl` is
/// merged over `sysctl`).
pub fn resolve(
    conf: &TuningConf,
    cni_args: &str,
    ifname: &str,
    allowlist: impl FnOnce() -> Result<Allowlist>,
) -> Result<Settings> {
    let mut mac = conf.mac.clone();
    let mut promisc = conf.promisc;
    let mut mtu = conf.mtu;
    let mut allmulti = conf.allmulti;
    let mut txqlen = conf.tx_q_len;

    for (k, v) in load_cni_args(cni_args, &["MAC"])? {
        if k == "MAC" && !v.is_empty() {
            mac = v;
        }
    }
    if let Some(v) = conf.net.runtime("mac") {
        let m: String = decode("runtimeConfig.mac", v)?;
        if !m.is_empty() {
            mac = m;
        }
    }
    let mut arg_sysctls = None;
    if let Some(v) = conf.net.args_cni("mac") {
        mac = decode("args.cni.mac", v)?;
    }
    if let Some(v) = conf.net.args_cni("promisc") {
        promisc = decode("args.cni.promisc", v)?;
    }
    if let Some(v) = conf.net.args_cni("mtu") {
        mtu = decode("args.cni.mtu", v)?;
    }
    if let Some(v) = conf.net.args_cni("allmulti") {
        allmulti = Some(decode("args.cni.allmulti", v)?);
    }
    if let Some(v) = conf.net.args_cni("txQLen") {
        txqlen = Some(decode("args.cni.txQLen", v)?);
    }
    if let Some(v) = conf.net.args_cni("sysctl") {
        let m: serde_json::Map<String, Value> = decode("args.cni.sysctl", v)?;
        arg_sysctls = Some(m);
    }

    let mac = if mac.is_empty() {
        None
    } else {
        Some(valid_mac(&mac)?)
    };

    // One entry per resolved path: the config's keys first, args.cni's over them.
    let mut sysctls: Vec<Sysctl> = Vec::new();
    let mut allowlist = Some(allowlist);
    let mut loaded = None;
    for (layer, map) in [
        ("sysctl", conf.sysctl.as_ref()),
        ("args.cni.sysctl", arg_sysctls.as_ref()),
    ] {
        let Some(map) = map else { continue };
        let mut seen = BTreeSet::new();
        for (key, value) in map {
            let value: String = decode(&format!("{layer}.{key}"), value)?;
            let list = match (&loaded, allowlist.take()) {
                (Some(l), _) => l,
                (None, Some(load)) => loaded.insert(load()?),
                (None, None) => return Err(Error::internal("allow-list not loaded")),
            };
            let s = sysctl::resolve(key, &value, ifname, list)?;
            if !seen.insert(s.path.clone()) {
                return Err(Error::config(format!(
                    "{layer}: two keys name the same sysctl {}",
                    s.path
                )));
            }
            sysctls.retain(|old| old.path != s.path);
            sysctls.push(s);
        }
    }
    sysctls.sort_by(|a, b| a.path.cmp(&b.path));

    let data_dir = if conf.data_dir.is_empty() {
        DEFAULT_DATA_DIR.to_string()
    } else {
        conf.data_dir.clone()
    };
    Ok(Settings {
        data_dir,
        mac,
        promisc,
        mtu: (mtu != 0).then_some(mtu),
        allmulti,
        txqlen,
        sysctls,
    })
}

/// A MAC an Ethernet interface can take: not all zeros, not multicast (code 7 otherwise).
fn valid_mac(s: &str) -> Result<Mac> {
    let mac = parse_mac(s)?;
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(Error::config(format!(
            "invalid MAC address {s:?}: {} is not a unicast address",
            format_mac(&mac)
        )));
    }
    Ok(mac)
}

/// Refuses a config whose `sysctl` (or `args.cni.sysctl`) names a key twice: the parsed JSON
/// keeps only the last one, so this reads stdin as sent.
fn reject_duplicate_sysctls(stdin: &[u8]) -> Result<()> {
    #[derive(Deserialize)]
    struct Top {
        #[serde(default)]
        sysctl: Option<UniqueKeys>,
        #[serde(default)]
        args: Option<Args>,
    }
    #[derive(Deserialize)]
    struct Args {
        #[serde(default)]
        cni: Option<Cni>,
    }
    #[derive(Deserialize)]
    struct Cni {
        #[serde(default)]
        sysctl: Option<UniqueKeys>,
    }
    // Shapes are checked (with their own message) when the config is parsed for real.
    let Ok(top) = serde_json::from_slice::<Top>(stdin) else {
        return Ok(());
    };
    let from_args = top.args.and_then(|a| a.cni).and_then(|c| c.sysctl);
    for (layer, keys) in [("sysctl", top.sysctl), ("args.cni.sysctl", from_args)] {
        if let Some(UniqueKeys(Some(dup))) = keys {
            return Err(Error::config(format!(
                "{layer}: duplicated sysctl key {dup:?}"
            )));
        }
    }
    Ok(())
}

/// A JSON object's first repeated key, if any (values are not looked at here).
struct UniqueKeys(Option<String>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<UniqueKeys, A::Error> {
                let mut seen = BTreeSet::new();
                let mut dup = None;
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    if !seen.insert(k.clone()) && dup.is_none() {
                        dup = Some(k);
                    }
                }
                Ok(UniqueKeys(dup))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> TuningConf {
        TuningConf::from_json(&v).unwrap()
    }

    fn settings(v: Value, cni_args: &str) -> Result<Settings> {
        resolve(&conf(v), cni_args, "eth0", || Ok(Allowlist::allow_all()))
    }

    #[test]
    fn mac_precedence() {
        let base = json!({"name":"n","type":"tuning","mac":"02:00:00:00:00:01"});
        let mac = |v: Value, a: &str| settings(v, a).unwrap().mac.map(|m| m[5]);
        assert_eq!(mac(base.clone(), ""), Some(1));
        assert_eq!(mac(base.clone(), "MAC=02:00:00:00:00:02"), Some(2));
        let mut rc = base.clone();
        rc["runtimeConfig"] = json!({"mac":"02:00:00:00:00:03"});
        assert_eq!(mac(rc.clone(), "MAC=02:00:00:00:00:02"), Some(3));
        let mut ac = rc.clone();
        ac["args"] = json!({"cni":{"mac":"02:00:00:00:00:04"}});
        assert_eq!(mac(ac, "MAC=02:00:00:00:00:02"), Some(4));
        // Empty values do not override.
        let mut empty = base.clone();
        empty["runtimeConfig"] = json!({"mac":""});
        assert_eq!(mac(empty, "MAC="), Some(1));
        // Unknown CNI_ARGS keys need IgnoreUnknown, as in the reference.
        assert_eq!(settings(base.clone(), "FOO=1").unwrap_err().code(), 4);
        assert_eq!(mac(base, "FOO=1;IgnoreUnknown=1"), Some(1));
    }

    #[test]
    fn go_field_names_are_matched_as_go_matches_them() {
        let v = json!({"Name": "n", "Type": "tuning", "MTU": 1400, "Promisc": true,
            "RuntimeConfig": {"Mac": "02:00:00:00:00:05"}, "Args": {"CNI": {"TxQLen": 30}}});
        let s = settings(v, "").unwrap();
        assert_eq!((s.mtu, s.promisc, s.txqlen), (Some(1400), true, Some(30)));
        assert_eq!(s.mac.map(|m| m[5]), Some(5));
    }

    #[test]
    fn args_cni_override_and_merge() {
        let v = json!({"name":"n","type":"tuning","mtu":1400,"promisc":true,"allmulti":false,
            "txQLen":10,"sysctl":{"net.core.somaxconn":"100","net.ipv4.conf.IFNAME.arp_filter":"1"},
            "args":{"cni":{"mtu":1300,"promisc":false,"allmulti":true,"txQLen":20,
                "sysctl":{"net/core/somaxconn":"200","net.ipv4.ip_forward":"1"}}}});
        let s = settings(v, "").unwrap();
        assert_eq!(s.mtu, Some(1300));
        assert!(!s.promisc);
        assert_eq!(s.allmulti, Some(true));
        assert_eq!(s.txqlen, Some(20));
        let got: Vec<(&str, &str)> = s
            .sysctls
            .iter()
            .map(|x| (x.path.as_str(), x.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/proc/sys/net/core/somaxconn", "200"),
                ("/proc/sys/net/ipv4/conf/eth0/arp_filter", "1"),
                ("/proc/sys/net/ipv4/ip_forward", "1"),
            ]
        );
        assert_eq!(s.data_dir, DEFAULT_DATA_DIR);
    }

    #[test]
    fn invalid_values() {
        for bad in [
            json!({"name":"n","mac":"02:00:00:00:00"}),
            json!({"name":"n","mac":"01:00:5e:00:00:01"}),
            json!({"name":"n","mac":"00:00:00:00:00:00"}),
            json!({"name":"n","sysctl":{"kernel.hostname":"x"}}),
            json!({"name":"n","sysctl":{"net.core.somaxconn":"1","net/core/somaxconn":"2"}}),
            json!({"name":"n","args":{"cni":{"mac":"nope"}}}),
        ] {
            assert_eq!(settings(bad.clone(), "").unwrap_err().code(), 7, "{bad}");
        }
        for bad in [
            json!({"name":"n","args":{"cni":{"mtu":"big"}}}),
            json!({"name":"n","sysctl":{"net.core.somaxconn":5}}),
            json!({"name":"n","runtimeConfig":{"mac":7}}),
        ] {
            assert_eq!(settings(bad.clone(), "").unwrap_err().code(), 6, "{bad}");
        }
    }

    #[test]
    fn duplicate_keys_in_the_raw_json() {
        let dup = br#"{"name":"n","sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}"#;
        let e = reject_duplicate_sysctls(dup).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("net.core.somaxconn"), "{e}");
        let dup_args = br#"{"name":"n","args":{"cni":{"sysctl":{"net.a.b":"1","net.a.b":"1"}}}}"#;
        assert_eq!(reject_duplicate_sysctls(dup_args).unwrap_err().code(), 7);
        let ok =
            br#"{"name":"n","sysctl":{"net.a.b":"1"},"args":{"cni":{"sysctl":{"net.a.b":"2"}}}}"#;
        assert!(reject_duplicate_sysctls(ok).is_ok());
        assert!(reject_duplicate_sysctls(br#"{"sysctl":3}"#).is_ok());
    }
}
