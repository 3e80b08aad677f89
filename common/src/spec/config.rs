//! Network configuration as a plugin receives it on stdin, and the CNI_ARGS convention.

use crate::error::{Error, Result};
use crate::gojson;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The keys every plugin config has (spec "Network configuration"). A plugin decodes its own
/// keys into a type of its own from the same config ([`crate::skel::CmdArgs::parse_conf`]):
/// embedding this with `#[serde(flatten)]` would lose Go's key matching.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// `args.cni.<key>` (the conventions' place for per-attachment arguments), keys matched
    /// as Go matches them.
    pub fn args_cni(&self, key: &str) -> Option<&Value> {
        gojson::get(gojson::get(self.args.as_ref()?, "cni")?, key)
    }

    /// `runtimeConfig.<key>` (capability arguments the runtime injected), keys matched as Go
    /// matches them. `null` counts as absent.
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        gojson::get(self.runtime_config.as_ref()?, key).filter(|v| !v.is_null())
    }
}

/// The `ipam` section: its `type` names the IPAM binary; the rest belongs to that plugin.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl<'de> Deserialize<'de> for IpamConf {
    /// Every member is kept in `rest`; `type` is found as Go finds it (`"Type"` too).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let rest = serde_json::Map::<String, Value>::deserialize(d)?;
        let object = Value::Object(rest);
        let plugin_type = match gojson::get(&object, "type") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(t)) => t.clone(),
            Some(other) => {
                return Err(serde::de::Error::custom(format!(
                    "ipam.type must be a string, got {other}"
                )));
            }
        };
        let Value::Object(mut rest) = object else {
            return Err(serde::de::Error::custom("ipam must be an object"));
        };
        rest.retain(|k, _| !k.eq_ignore_ascii_case("type"));
        Ok(IpamConf { plugin_type, rest })
    }
}

/// DNS settings, in the shape shared by configs and results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The valid attachments of a GC request. libcni sends both `cni.dev/valid-attachments` and
/// the older `cni.dev/attachments` (cni#1101); either is accepted. Missing means "none valid".
pub fn valid_attachments(conf: &Value) -> Result<Vec<Attachment>> {
    let list = gojson::get(conf, "cni.dev/valid-attachments")
        .or_else(|| gojson::get(conf, "cni.dev/attachments"));
    match list {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => gojson::from_value(v)
            .map_err(|e| Error::Decode(format!("cni.dev/valid-attachments: {e}"))),
    }
}

/// Parses CNI_ARGS (`K=V;K2=V2`). An element without `=` is an error (code 4).
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::env(
                format!("CNI_ARGS: invalid pair {pair:?}"),
                "expected K=V pairs separated by ';'",
            )),
        })
        .collect()
}

/// CNI_ARGS as the reference `types.LoadArgs` reads it: only `known` keys (plus the ones
/// every runtime may send) are accepted, unless `IgnoreUnknown` is true.
pub fn load_cni_args(s: &str, known: &[&str]) -> Result<Vec<(String, String)>> {
    let pairs = parse_cni_args(s)?;
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    if !ignore_unknown {
        let unknown: Vec<&str> = pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "IgnoreUnknown" && !known.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::env(
                format!("CNI_ARGS: unknown args {unknown:?}"),
                format!("known: {known:?}; add IgnoreUnknown=1 to pass others"),
            ));
        }
    }
    Ok(pairs)
}

/// True when `s` is a valid container ID or network name (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
pub fn is_valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Validates a network name (code 7 when missing or malformed).
pub fn validate_network_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config("missing network name"));
    }
    if !is_valid_id(name) {
        return Err(Error::config(format!(
            "invalid characters found in network name {name:?}: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
        )));
    }
    Ok(())
}

/// Validates a container ID (code 4 when malformed, 3 when missing: as Go's skel does).
pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::UnknownContainer("missing containerID".into()));
    }
    if !is_valid_id(id) {
        return Err(Error::env(
            "invalid characters in containerID",
            format!("{id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
        ));
    }
    Ok(())
}

/// Validates an interface name as Linux does (code 4).
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::env(
            format!("interface name {why}"),
            name.to_string(),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 15 {
        return bad("is too long: at most 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains / or : or whitespace or a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn netconf_keeps_plugin_keys_out() {
        let v = json!({"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br0",
            "ipam":{"type":"host-local","subnet":"10.0.0.0/24"},
            "args":{"cni":{"ips":["10.0.0.9"]}},"runtimeConfig":{"mac":"aa:bb:cc:dd:ee:ff"}});
        let c: NetConf = serde_json::from_value(v).unwrap();
        assert_eq!(c.plugin_type, "bridge");
        let ipam = c.ipam.clone().unwrap();
        assert_eq!(ipam.plugin_type, "host-local");
        assert_eq!(ipam.rest["subnet"], "10.0.0.0/24");
        assert_eq!(c.args_cni("ips").unwrap()[0], "10.0.0.9");
        assert_eq!(c.runtime("mac").unwrap(), "aa:bb:cc:dd:ee:ff");
    }

    #[test]
    fn cni_args() {
        assert_eq!(
            parse_cni_args("IP=10.0.0.2;MAC=aa").unwrap(),
            vec![
                ("IP".into(), "10.0.0.2".into()),
                ("MAC".into(), "aa".into())
            ]
        );
        assert_eq!(parse_cni_args("noequals").unwrap_err().code(), 4);
        assert_eq!(load_cni_args("FOO=1", &["IP"]).unwrap_err().code(), 4);
        assert!(load_cni_args("FOO=1;IgnoreUnknown=1;IP=1.2.3.4", &["IP"]).is_ok());
        assert!(load_cni_args("", &["IP"]).unwrap().is_empty());
    }

    #[test]
    fn names() {
        assert!(validate_network_name("my-net_1.0").is_ok());
        assert_eq!(validate_network_name("").unwrap_err().code(), 7);
        assert_eq!(validate_network_name("../etc").unwrap_err().code(), 7);
        assert_eq!(validate_network_name("a/b").unwrap_err().code(), 7);
        assert_eq!(validate_container_id("a/../b").unwrap_err().code(), 4);
        assert_eq!(validate_container_id("..").unwrap_err().code(), 4);
        assert_eq!(validate_container_id("").unwrap_err().code(), 3);
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcde").is_ok());
        for bad in ["", "0123456789abcdef", ".", "..", "a/b", "a:b", "a b"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code(), 4, "{bad:?}");
        }
    }

    #[test]
    fn gc_attachments_both_keys() {
        let a = json!({"cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]});
        assert_eq!(valid_attachments(&a).unwrap().len(), 1);
        let b = json!({"cni.dev/valid-attachments":[]});
        assert!(valid_attachments(&b).unwrap().is_empty());
        assert!(valid_attachments(&json!({})).unwrap().is_empty());
    }
}
