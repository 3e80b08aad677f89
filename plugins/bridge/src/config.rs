//! The bridge plugin's configuration (REFERENCE 2.1): keys, defaults and validation.

use common::error::{Error, Result};
use common::netlink::{Mac, parse_mac};
use common::skel::CmdArgs;
use common::spec::{NetConf, config::load_cni_args};
use serde::Deserialize;

/// One element of `vlanTrunk`: a single `id` or a `minID`..=`maxID` range.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrunkEntry {
    #[serde(rename = "minID")]
    pub min_id: Option<i64>,
    #[serde(rename = "maxID")]
    pub max_id: Option<i64>,
    pub id: Option<i64>,
}

/// The config as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    /// The common keys, decoded from the same config by [`CmdArgs::net_conf`].
    #[serde(skip)]
    pub net: NetConf,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    /// Accepted for compatibility; masquerading is always done with nftables here.
    #[serde(default)]
    pub ip_masq_backend: Option<String>,
    #[serde(default)]
    pub mtu: i64,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: i64,
    #[serde(default)]
    pub vlan_trunk: Vec<TrunkEntry>,
    #[serde(default)]
    pub preserve_default_vlan: bool,
    #[serde(default)]
    pub macspoofchk: bool,
    #[serde(default)]
    pub enabledad: bool,
    #[serde(default)]
    pub disable_container_interface: bool,
    #[serde(default)]
    pub port_isolation: bool,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

/// The validated config with everything derived that ADD, DEL and CHECK need.
#[derive(Debug, Clone)]
pub struct Conf {
    pub raw: BridgeConf,
    pub is_gateway: bool,
    pub mtu: u32,
    pub vlan: u16,
    pub trunk: Vec<u16>,
    /// The container MAC: CNI_ARGS `MAC=`, then `args.cni.mac`, then `runtimeConfig.mac`
    /// (the last one given wins).
    pub mac: Option<Mac>,
}

impl Conf {
    pub fn is_layer3(&self) -> bool {
        self.raw
            .net
            .ipam
            .as_ref()
            .is_some_and(|i| !i.plugin_type.is_empty())
    }

    pub fn bridge(&self) -> &str {
        &self.raw.bridge
    }
}

fn vlan_id(v: i64, what: &str) -> Result<u16> {
    if !(1..=4094).contains(&v) {
        return Err(Error::config(format!(
            "invalid {what} {v} (must be between 1 and 4094)"
        )));
    }
    Ok(v as u16)
}

fn collect_trunk(entries: &[TrunkEntry]) -> Result<Vec<u16>> {
    let mut ids = Vec::new();
    for e in entries {
        match (e.min_id, e.max_id, e.id) {
            (Some(min), Some(max), _) => {
                let (min, max) = (
                    vlan_id(min, "vlanTrunk minID")?,
                    vlan_id(max, "vlanTrunk maxID")?,
                );
                if min > max {
                    return Err(Error::config(format!(
                        "invalid vlanTrunk range: minID {min} is greater than maxID {max}"
                    )));
                }
                ids.extend(min..=max);
            }
            (Some(_), None, _) => {
                return Err(Error::config("vlanTrunk: minID given without maxID"));
            }
            (None, Some(_), _) => {
                return Err(Error::config("vlanTrunk: maxID given without minID"));
            }
            (None, None, Some(id)) => ids.push(vlan_id(id, "vlanTrunk id")?),
            (None, None, None) => {
                return Err(Error::config(
                    "vlanTrunk: each entry needs id or minID and maxID",
                ));
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The container MAC from CNI_ARGS `MAC=`, `args.cni.mac`, `runtimeConfig.mac`: last wins.
fn container_mac(args: &CmdArgs, raw: &BridgeConf) -> Result<Option<Mac>> {
    let known = [
        "MAC",
        "IP",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    ];
    let mut mac = None;
    for (k, v) in load_cni_args(&args.args, &known)? {
        if k == "MAC" {
            mac = Some(parse_mac(&v).map_err(|e| e.context("CNI_ARGS MAC"))?);
        }
    }
    if let Some(v) = raw.net.args_cni("mac") {
        mac = Some(mac_from(v, "args.cni.mac")?);
    }
    if let Some(v) = raw.net.runtime("mac") {
        mac = Some(mac_from(v, "runtimeConfig.mac")?);
    }
    Ok(mac)
}

fn mac_from(v: &serde_json::Value, source: &str) -> Result<Mac> {
    let s = v
        .as_str()
        .ok_or_else(|| Error::config(format!("{source}: MAC must be a string")))?;
    parse_mac(s).map_err(|e| e.context(source.to_string()))
}

/// Parses and validates the config of one invocation (code 6 for malformed JSON, 7 for
/// values that cannot work).
pub fn load(args: &CmdArgs) -> Result<Conf> {
    load_with(args, true)
}

/// The config for teardown (DEL, GC): values only ADD uses (the MAC, CNI_ARGS) are not
/// allowed to make the removal of an attachment fail; a bad one is logged and ignored.
pub fn load_for_teardown(args: &CmdArgs) -> Result<Conf> {
    load_with(args, false)
}

fn load_with(args: &CmdArgs, strict: bool) -> Result<Conf> {
    let mut raw: BridgeConf = args.parse_conf()?;
    raw.net = args.net_conf()?;
    if raw.bridge.is_empty() {
        return Err(Error::config("bridge name must not be empty"));
    }
    common::spec::config::validate_ifname(&raw.bridge)
        .map_err(|e| Error::config(format!("invalid bridge name {:?}: {e}", raw.bridge)))?;
    if !(0..=4094).contains(&raw.vlan) {
        return Err(Error::config(format!(
            "invalid VLAN ID {} (must be between 0 and 4094)",
            raw.vlan
        )));
    }
    if raw.hairpin_mode && raw.promisc_mode {
        return Err(Error::config(
            "cannot set hairpin mode and promiscuous mode at the same time",
        ));
    }
    if !(0..=65535).contains(&raw.mtu) {
        return Err(Error::config(format!("invalid mtu {}", raw.mtu)));
    }
    let trunk = collect_trunk(&raw.vlan_trunk)?;
    if let Some(backend) = raw.ip_masq_backend.as_deref() {
        if !matches!(backend, "iptables" | "nftables") {
            return Err(Error::config(format!(
                "unknown ipMasqBackend {backend:?} (expected \"iptables\" or \"nftables\")"
            )));
        }
    }
    let mac = match container_mac(args, &raw) {
        Ok(mac) => mac,
        Err(e) if !strict => {
            log::warn!("ignoring for {}: {e}", args.command.as_str());
            None
        }
        Err(e) => return Err(e),
    };
    let conf = Conf {
        is_gateway: raw.is_gateway || raw.is_default_gateway,
        mtu: raw.mtu as u32,
        vlan: raw.vlan as u16,
        trunk,
        mac,
        raw,
    };
    if conf.raw.disable_container_interface && conf.is_layer3() {
        return Err(Error::config(
            "cannot use IPAM when disableContainerInterface is set",
        ));
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::skel::Command;
    use common::spec::Version;
    use serde_json::{Value, json};

    fn args(conf: Value, cni_args: &str) -> CmdArgs {
        CmdArgs {
            command: Command::Add,
            container_id: "c1".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            args: cni_args.into(),
            path: "/opt/cni/bin".into(),
            stdin: conf.to_string().into_bytes(),
            conf,
            version: Version::V1_0_0,
        }
    }

    fn base() -> Value {
        json!({"cniVersion":"1.0.0","name":"n","type":"bridge"})
    }

    #[test]
    fn defaults() {
        let c = load(&args(base(), "")).unwrap();
        assert_eq!(c.bridge(), "cni0");
        assert!(!c.is_gateway && !c.is_layer3() && c.mac.is_none());
        assert_eq!((c.mtu, c.vlan), (0, 0));
    }

    #[test]
    fn default_gateway_implies_gateway() {
        let mut v = base();
        v["isDefaultGateway"] = json!(true);
        assert!(load(&args(v, "")).unwrap().is_gateway);
    }

    #[test]
    fn invalid_values_are_code_7() {
        for (k, val) in [
            ("vlan", json!(4095)),
            ("vlan", json!(-1)),
            ("mtu", json!(-5)),
            ("bridge", json!("a/b")),
            ("bridge", json!("much-too-long-bridge")),
            ("vlanTrunk", json!([{"minID": 10}])),
            ("vlanTrunk", json!([{"minID": 10, "maxID": 5}])),
            ("vlanTrunk", json!([{"id": 0}])),
            ("vlanTrunk", json!([{"id": 5000}])),
            ("ipMasqBackend", json!("pf")),
        ] {
            let mut v = base();
            v[k] = val.clone();
            assert_eq!(load(&args(v, "")).unwrap_err().code(), 7, "{k}={val}");
        }
        let mut v = base();
        v["hairpinMode"] = json!(true);
        v["promiscMode"] = json!(true);
        assert_eq!(load(&args(v, "")).unwrap_err().code(), 7);
        let mut v = base();
        v["disableContainerInterface"] = json!(true);
        v["ipam"] = json!({"type": "host-local"});
        assert_eq!(load(&args(v, "")).unwrap_err().code(), 7);
        let mut v = base();
        v["bridge"] = json!(1);
        assert_eq!(load(&args(v, "")).unwrap_err().code(), 6);
    }

    #[test]
    fn go_field_names_are_matched_as_go_matches_them() {
        let v = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "Bridge": "br9",
            "IsGateway": true, "HairpinMode": true, "MTU": 1400, "VlanTrunk": [{"MinID": 3, "MaxID": 4}],
            "IPAM": {"Type": "host-local"}, "RuntimeConfig": {"MAC": "02:00:00:00:00:07"}});
        let c = load(&args(v, "")).unwrap();
        assert_eq!((c.bridge(), c.is_gateway, c.mtu), ("br9", true, 1400));
        assert!(c.raw.hairpin_mode && c.is_layer3());
        assert_eq!(c.trunk, vec![3, 4]);
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 7]));
    }

    #[test]
    fn trunk_ranges() {
        let mut v = base();
        v["vlanTrunk"] = json!([{"minID": 10, "maxID": 12}, {"id": 11}, {"id": 100}]);
        assert_eq!(load(&args(v, "")).unwrap().trunk, vec![10, 11, 12, 100]);
    }

    #[test]
    fn mac_precedence_last_wins() {
        let mut v = base();
        assert_eq!(
            load(&args(v.clone(), "MAC=02:00:00:00:00:01")).unwrap().mac,
            Some([2, 0, 0, 0, 0, 1])
        );
        v["args"] = json!({"cni": {"mac": "02:00:00:00:00:02"}});
        assert_eq!(
            load(&args(v.clone(), "MAC=02:00:00:00:00:01")).unwrap().mac,
            Some([2, 0, 0, 0, 0, 2])
        );
        v["runtimeConfig"] = json!({"mac": "02:00:00:00:00:03"});
        assert_eq!(
            load(&args(v.clone(), "MAC=02:00:00:00:00:01")).unwrap().mac,
            Some([2, 0, 0, 0, 0, 3])
        );
        assert_eq!(load(&args(base(), "MAC=nope")).unwrap_err().code(), 7);
        assert_eq!(load(&args(base(), "FOO=1")).unwrap_err().code(), 4);
        assert!(load(&args(base(), "FOO=1;IgnoreUnknown=1")).is_ok());
        // Teardown never fails on what only ADD uses.
        assert_eq!(
            load_for_teardown(&args(base(), "MAC=nope;FOO=1"))
                .unwrap()
                .mac,
            None
        );
    }
}
