//! The firewall plugin's nftables objects, in tables of this project's own names:
//!
//! ```text
//! table inet cnirs_firewall {
//!   set ctr4 { type ipv4_addr; }                        # container addresses      (per attachment)
//!   set ctr6 { type ipv6_addr; }
//!   set guarded_bridges { type ifname; }                # bridges with a policy    (shared, see below)
//!   set members4 { type ifname . ipv4_addr; }           # bridge . guarded address (per attachment)
//!   set members6 { type ifname . ipv6_addr; }
//!   set same4 { type ifname . ifname . ipv4_addr; }     # bridge . bridge . address of a
//!   set same6 { type ifname . ifname . ipv6_addr; }     #   same-bridge attachment (per attachment)
//!   chain admin { }                                     # the operators'; never flushed
//!   chain isolation {
//!     iifname . oifname . ip daddr @same4 return
//!     iifname . oifname . ip6 daddr @same6 return
//!     iifname @guarded_bridges oifname . ip daddr @members4 drop
//!     iifname @guarded_bridges oifname . ip6 daddr @members6 drop
//!   }
//!   chain forward {
//!     type filter hook forward priority -1; policy accept;
//!     jump isolation
//!     meta mark set meta mark | 0x08000000              # provisional: an admin accept counts
//!     jump admin
//!     ip daddr @ctr4 ct state established,related accept
//!     ip saddr @ctr4 accept
//!     ip6 daddr @ctr6 ct state established,related accept
//!     ip6 saddr @ctr6 accept
//!     meta mark set meta mark & 0xf7ffffff              # not ours after all
//!   }
//! }
//! table bridge cnirs_firewall {                         # only once an isolated attachment exists
//!   set isolated_ports { type ifname; }                 # host veth (per attachment)
//!   chain forward {
//!     type filter hook forward priority -200; policy accept;
//!     iifname @isolated_ports drop
//!     oifname @isolated_ports drop
//!   }
//! }
//! ```
//!
//! An accept in one base chain does not override a drop in another base chain of the same
//! hook, so the packets this table accepts leave it carrying [`FORWARD_MARK`]; a single
//! iptables-compatible rule in iptables-nft's `FORWARD` chains accepts them there (see
//! [`crate::hook`]).
//!
//! The rules are fixed (flushed and rewritten by each ADD, in the same transaction); an
//! attachment only adds set elements, each commented `<network>/<containerID>/<ifname>`
//! ([`attachment_comment`]), so DEL with prevResult is one transaction without listing, and
//! DEL without prevResult and GC find elements by comment.
//!
//! The one shared element is a bridge in `guarded_bridges`: it is counted by the `members`
//! elements of that bridge, and leaves in the transaction that removes the last of them. So
//! the DEL of a guarded attachment (`same-bridge`, `isolated`) lists the tables first, under
//! the plugin's lock (a concurrent ADD on the same bridge waits); the DEL of an open one (the
//! default) is one transaction without listing. GC and DEL without prevResult list anyway.

use common::error::{Error, Result};
use common::nft::{
    self, Batch, ChainDef, Family, Hook, Key, SetDef, TableListing, TableRef, attachment_comment,
    matches, meta, payload, reference, set_ref,
};
use common::spec::CniResult;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::IpAddr;

/// `inet cnirs_firewall`.
pub const TABLE: TableRef<'static> = TableRef {
    family: Family::Inet,
    name: "cnirs_firewall",
};

/// `bridge cnirs_firewall`: the L2 part of `ingressPolicy: isolated`.
pub const BRIDGE_TABLE: TableRef<'static> = TableRef {
    family: Family::Bridge,
    name: "cnirs_firewall",
};

/// The packet mark bit set on forwarded packets this table accepts (bit 27).
pub const FORWARD_MARK: u32 = 0x0800_0000;

/// Runs before iptables' (0) and firewalld's (10) filter chains.
pub const FORWARD_PRIORITY: i32 = -1;

pub const FORWARD: ChainDef<'static> = ChainDef {
    table: TABLE,
    name: "forward",
    hook: Some(Hook {
        chain_type: "filter",
        hook: "forward",
        prio: FORWARD_PRIORITY,
        policy: "accept",
    }),
};

/// The operators' chain: created when missing, never flushed.
pub const ADMIN: ChainDef<'static> = ChainDef {
    table: TABLE,
    name: "admin",
    hook: None,
};

pub const ISOLATION: ChainDef<'static> = ChainDef {
    table: TABLE,
    name: "isolation",
    hook: None,
};

pub const BRIDGE_FORWARD: ChainDef<'static> = ChainDef {
    table: BRIDGE_TABLE,
    name: "forward",
    hook: Some(Hook {
        chain_type: "filter",
        hook: "forward",
        prio: -200,
        policy: "accept",
    }),
};

const fn set(
    table: TableRef<'static>,
    name: &'static str,
    key: &'static [&'static str],
) -> SetDef<'static> {
    SetDef {
        table,
        name,
        key,
        map: None,
        interval: false,
    }
}

pub const CTR4: SetDef<'static> = set(TABLE, "ctr4", &["ipv4_addr"]);
pub const CTR6: SetDef<'static> = set(TABLE, "ctr6", &["ipv6_addr"]);
pub const GUARDED_BRIDGES: SetDef<'static> = set(TABLE, "guarded_bridges", &["ifname"]);
pub const MEMBERS4: SetDef<'static> = set(TABLE, "members4", &["ifname", "ipv4_addr"]);
pub const MEMBERS6: SetDef<'static> = set(TABLE, "members6", &["ifname", "ipv6_addr"]);
pub const SAME4: SetDef<'static> = set(TABLE, "same4", &["ifname", "ifname", "ipv4_addr"]);
pub const SAME6: SetDef<'static> = set(TABLE, "same6", &["ifname", "ifname", "ipv6_addr"]);
pub const ISOLATED_PORTS: SetDef<'static> = set(BRIDGE_TABLE, "isolated_ports", &["ifname"]);

const INET_SETS: [&SetDef<'static>; 7] = [
    &CTR4,
    &CTR6,
    &GUARDED_BRIDGES,
    &MEMBERS4,
    &MEMBERS6,
    &SAME4,
    &SAME6,
];

/// `ingressPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No restriction (`"open"` or empty).
    Open,
    /// Containers on other guarded bridges cannot reach this bridge's containers.
    SameBridge,
    /// Not even containers of the same bridge can.
    Isolated,
}

impl Policy {
    pub fn parse(s: &str) -> Result<Policy> {
        match s {
            "" | "open" => Ok(Policy::Open),
            "same-bridge" => Ok(Policy::SameBridge),
            "isolated" => Ok(Policy::Isolated),
            other => Err(Error::config(format!(
                "unknown ingressPolicy {other:?}: expected \"open\", \"same-bridge\" or \"isolated\""
            ))),
        }
    }

    pub fn is_guarded(self) -> bool {
        self != Policy::Open
    }
}

/// Everything one attachment puts into nftables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRules {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The container's addresses.
    pub addrs: Vec<IpAddr>,
    pub policy: Policy,
    /// The bridge (prevResult `interfaces[0]`); needed unless the policy is open.
    pub bridge: String,
    /// The host end of the container's veth; needed for `isolated`.
    pub host_port: Option<String>,
}

/// An interface name of prevResult that nft can hold (`ifname` is 16 bytes with the NUL):
/// Linux's rules, but a config error (code 7), since it comes from prevResult.
fn check_ifname(what: &str, name: &str) -> Result<()> {
    common::spec::config::validate_ifname(name).map_err(|_| {
        Error::config(format!(
            "invalid {what} interface name {name:?} in prevResult"
        ))
    })
}

impl AttachmentRules {
    pub fn comment(&self) -> String {
        attachment_comment(&self.network, &self.container_id, &self.ifname)
    }

    /// True when the attachment puts nothing into nftables (no address and no port).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && !(self.policy == Policy::Isolated && self.host_port.is_some())
    }

    /// Checks the names the policy needs.
    pub fn validate(&self) -> Result<()> {
        if self.policy.is_guarded() {
            check_ifname("bridge", &self.bridge)?;
        }
        if self.policy == Policy::Isolated {
            match &self.host_port {
                Some(p) => check_ifname("host veth", p)?,
                None => {
                    return Err(Error::config(
                        "ingressPolicy \"isolated\" needs the host end of the container's veth in prevResult (chain firewall after bridge)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The elements this attachment owns, by set.
    pub fn elements(&self) -> Result<Vec<(&'static SetDef<'static>, Key)>> {
        self.validate()?;
        let mut out = Vec::new();
        let bridge = Value::from(self.bridge.as_str());
        for addr in &self.addrs {
            let (ctr, members, same) = if addr.is_ipv4() {
                (&CTR4, &MEMBERS4, &SAME4)
            } else {
                (&CTR6, &MEMBERS6, &SAME6)
            };
            let a = nft::key_addr(*addr);
            out.push((ctr, Key::new(a.clone())));
            if self.policy.is_guarded() {
                out.push((
                    members,
                    Key::new(nft::key_concat(vec![bridge.clone(), a.clone()])),
                ));
            }
            if self.policy == Policy::SameBridge {
                out.push((
                    same,
                    Key::new(nft::key_concat(vec![bridge.clone(), bridge.clone(), a])),
                ));
            }
        }
        if self.policy == Policy::Isolated {
            if let Some(p) = &self.host_port {
                out.push((&ISOLATED_PORTS, Key::new(Value::from(p.as_str()))));
            }
        }
        Ok(out)
    }

    /// The IP families of the addresses (what iptables hand-off rules are needed for).
    pub fn families(&self) -> Vec<Family> {
        let mut f = Vec::new();
        if self.addrs.iter().any(IpAddr::is_ipv4) {
            f.push(Family::Ip);
        }
        if self.addrs.iter().any(IpAddr::is_ipv6) {
            f.push(Family::Ip6);
        }
        f
    }
}

/// The fixed rules of `isolation`, in order.
pub fn isolation_rules() -> Vec<Vec<Value>> {
    let mut rules = Vec::new();
    for (proto, same) in [("ip", &SAME4), ("ip6", &SAME6)] {
        rules.push(vec![
            matches(
                json!({"concat": [meta("iifname"), meta("oifname"), payload(proto, "daddr")]}),
                set_ref(same),
            ),
            json!({"return": null}),
        ]);
    }
    for (proto, members) in [("ip", &MEMBERS4), ("ip6", &MEMBERS6)] {
        rules.push(vec![
            matches(meta("iifname"), set_ref(&GUARDED_BRIDGES)),
            matches(
                json!({"concat": [meta("oifname"), payload(proto, "daddr")]}),
                set_ref(members),
            ),
            json!({"drop": null}),
        ]);
    }
    rules
}

/// The fixed rules of `forward`, in order.
pub fn forward_rules() -> Vec<Vec<Value>> {
    let mark = meta("mark");
    let mut rules = vec![
        vec![json!({"jump": {"target": ISOLATION.name}})],
        vec![json!({"mangle": {"key": mark, "value": {"|": [mark, FORWARD_MARK]}}})],
        vec![json!({"jump": {"target": ADMIN.name}})],
    ];
    for (proto, ctr) in [("ip", &CTR4), ("ip6", &CTR6)] {
        rules.push(vec![
            matches(payload(proto, "daddr"), set_ref(ctr)),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}},
                "right": ["established", "related"]}}),
            json!({"accept": null}),
        ]);
        rules.push(vec![
            matches(payload(proto, "saddr"), set_ref(ctr)),
            json!({"accept": null}),
        ]);
    }
    rules.push(vec![
        json!({"mangle": {"key": mark, "value": {"&": [mark, !FORWARD_MARK]}}}),
    ]);
    rules
}

/// The fixed rules of the bridge table's `forward`, in order.
pub fn bridge_forward_rules() -> Vec<Vec<Value>> {
    ["iifname", "oifname"]
        .into_iter()
        .map(|k| {
            vec![
                matches(meta(k), set_ref(&ISOLATED_PORTS)),
                json!({"drop": null}),
            ]
        })
        .collect()
}

/// The inet table with its sets and fixed chains; `admin` is added, never flushed.
fn ensure_inet_table(b: &mut Batch) {
    b.add_table(TABLE);
    for s in INET_SETS {
        b.add_set(s);
    }
    b.add_chain(&ADMIN);
    b.ensure_chain_rules(&ISOLATION, isolation_rules());
    b.ensure_chain_rules(&FORWARD, forward_rules());
}

fn ensure_bridge_table(b: &mut Batch) {
    b.add_table(BRIDGE_TABLE);
    b.add_set(&ISOLATED_PORTS);
    b.ensure_chain_rules(&BRIDGE_FORWARD, bridge_forward_rules());
}

/// The ADD batch: the tables, sets and chains with their fixed rules, this attachment's
/// elements, its bridge in `guarded_bridges` when the policy is not open, and the commands
/// in `extra` (the iptables hand-off rules still missing). Empty when there is nothing to do.
pub fn add_batch(rules: &AttachmentRules, extra: Vec<Value>) -> Result<Batch> {
    let mut b = Batch::new();
    if rules.is_empty() {
        return Ok(b);
    }
    let elements = rules.elements()?;
    let comment = rules.comment();
    ensure_inet_table(&mut b);
    if rules.policy == Policy::Isolated {
        ensure_bridge_table(&mut b);
    }
    if rules.policy.is_guarded() && !rules.addrs.is_empty() {
        // Shared by the bridge's attachments: added bare, so an existing one is kept as is.
        b.add_shared_elements(&GUARDED_BRIDGES, &[Key::new(json!(rules.bridge))]);
    }
    for (set, key) in &elements {
        b.add_attachment_elements(set, &comment, std::slice::from_ref(key));
    }
    for cmd in extra {
        b.push(cmd);
    }
    Ok(b)
}

/// The DEL batch for known keys: no listing, no failure when anything is missing. It leaves
/// a `guarded_bridges` element alone: guarded attachments are deleted by [`prune_in_kernel`].
pub fn del_known_batch(rules: &AttachmentRules) -> Result<Batch> {
    Ok(Batch::deleting(&rules.elements()?))
}

/// Kernel: DEL of the reference firewall's accepts (`CNI-FORWARD`, filter table) for the
/// addresses of this attachment in its prevResult, made before the binaries were swapped.
/// They name no owner, so only these addresses and only the two shapes the reference writes
/// go, as with the reference's own DEL; without prevResult nothing does, and GC never removes
/// them (see [`common::nft::reference::del_firewall_accepts_in_kernel`]). Never fails:
/// problems are logged.
pub fn del_reference_accepts(
    network: &str,
    container_id: &str,
    ifname: &str,
    prev: Option<&CniResult>,
) {
    let Some(prev) = prev else {
        return;
    };
    let idx = prev.container_interface(ifname).map(|(i, _)| i);
    let mut addrs: Vec<IpAddr> = Vec::new();
    for ip in prev.ips_of(idx) {
        if !addrs.contains(&ip.address.ip()) {
            addrs.push(ip.address.ip());
        }
    }
    let owner = reference::Owner {
        network,
        container_id,
        ifname,
    };
    reference::del_firewall_accepts_in_kernel(owner, &addrs);
}

/// The bridge named by a listed `members` element (`{"concat": [bridge, addr]}`).
fn member_bridge(key: &Value) -> Option<&str> {
    key.get("concat")?.as_array()?.first()?.as_str()
}

/// Adds to `b` the deletion of the elements of `inet` and `bridge` whose comment satisfies
/// `pick`, and of the `guarded_bridges` elements no remaining member refers to. Returns how
/// many elements it deletes.
pub fn prune_batch(
    b: &mut Batch,
    inet: Option<&TableListing>,
    bridge: Option<&TableListing>,
    pick: &dyn Fn(&str) -> bool,
) -> usize {
    let mut n = 0;
    if let Some(l) = inet {
        n += b.delete_listed_elements(l, pick);
        let live: HashSet<&str> = [MEMBERS4.name, MEMBERS6.name]
            .iter()
            .filter_map(|name| l.set(name))
            .flat_map(|s| s.elements.iter())
            .filter(|e| !e.comment.as_deref().is_some_and(pick))
            .filter_map(|e| member_bridge(&e.key))
            .collect();
        let orphans: Vec<Value> = l
            .set(GUARDED_BRIDGES.name)
            .map(|s| s.elements.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|e| e.key.as_str().is_some_and(|br| !live.contains(br)))
            .map(|e| e.key.clone())
            .collect();
        if !orphans.is_empty() {
            n += orphans.len();
            let obj = json!({"family": TABLE.family.as_str(), "table": TABLE.name,
                "name": GUARDED_BRIDGES.name, "elem": orphans});
            b.push(json!({"add": {"element": obj.clone()}}));
            b.push(json!({"delete": {"element": obj}}));
        }
    }
    if let Some(l) = bridge {
        n += b.delete_listed_elements(l, pick);
    }
    n
}

/// Kernel: lists both tables and deletes, in ONE transaction, the elements whose comment
/// satisfies `pick` and the bridges left without members. Missing tables are no error.
pub fn prune_in_kernel(pick: &dyn Fn(&str) -> bool) -> Result<usize> {
    let inet = nft::list_table_from_kernel(TABLE)?;
    let bridge = nft::list_table_from_kernel(BRIDGE_TABLE)?;
    let mut b = Batch::new();
    let n = prune_batch(&mut b, inet.as_ref(), bridge.as_ref(), pick);
    nft::apply_to_kernel(&b)?;
    Ok(n)
}

/// What of `rules` is missing from the listed tables (`None`: table missing).
pub fn missing_in(
    rules: &AttachmentRules,
    inet: Option<&TableListing>,
    bridge: Option<&TableListing>,
) -> Result<Vec<String>> {
    let comment = rules.comment();
    let mut missing = Vec::new();
    let mut check_chain =
        |listing: Option<&TableListing>, chain: &ChainDef, n: Option<usize>| match listing
            .and_then(|l| l.chain(chain.name))
        {
            None => missing.push(format!("chain {} {}", chain.table, chain.name)),
            Some(c) => {
                if let Some(n) = n.filter(|n| *n != c.rules.len()) {
                    missing.push(format!(
                        "rules of chain {} {} ({} instead of {n})",
                        chain.table,
                        chain.name,
                        c.rules.len()
                    ));
                }
            }
        };
    check_chain(inet, &FORWARD, Some(forward_rules().len()));
    check_chain(inet, &ISOLATION, Some(isolation_rules().len()));
    check_chain(inet, &ADMIN, None);
    if rules.policy == Policy::Isolated {
        check_chain(bridge, &BRIDGE_FORWARD, Some(bridge_forward_rules().len()));
    }
    if rules.policy.is_guarded() && !rules.addrs.is_empty() {
        let has_bridge = inet
            .and_then(|l| l.set(GUARDED_BRIDGES.name))
            .is_some_and(|s| s.elements.iter().any(|e| e.key == json!(rules.bridge)));
        if !has_bridge {
            missing.push(format!(
                "element {} in set {} {}",
                rules.bridge, TABLE, GUARDED_BRIDGES.name
            ));
        }
    }
    for (set, key) in rules.elements()? {
        let listing = if set.table == TABLE { inet } else { bridge };
        if !listing.is_some_and(|l| l.has_element(set.name, &key, &comment)) {
            missing.push(format!(
                "element {} in set {} {}",
                key.key, set.table, set.name
            ));
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(policy: Policy) -> AttachmentRules {
        AttachmentRules {
            network: "net".into(),
            container_id: "cid".into(),
            ifname: "eth0".into(),
            addrs: vec!["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            policy,
            bridge: "cni0".into(),
            host_port: Some("veth0123abcd".into()),
        }
    }

    fn cmds(b: &Batch) -> Vec<Value> {
        b.to_json()["nftables"].as_array().unwrap().clone()
    }

    fn names(a: &AttachmentRules) -> Vec<(String, Value)> {
        a.elements()
            .unwrap()
            .into_iter()
            .map(|(s, k)| (s.name.to_string(), k.key))
            .collect()
    }

    #[test]
    fn elements_by_policy() {
        assert_eq!(
            names(&att(Policy::Open)),
            vec![
                ("ctr4".into(), json!("10.88.0.5")),
                ("ctr6".into(), json!("fd00::5"))
            ]
        );
        assert_eq!(
            names(&att(Policy::SameBridge)),
            vec![
                ("ctr4".into(), json!("10.88.0.5")),
                ("members4".into(), json!({"concat": ["cni0", "10.88.0.5"]})),
                (
                    "same4".into(),
                    json!({"concat": ["cni0", "cni0", "10.88.0.5"]})
                ),
                ("ctr6".into(), json!("fd00::5")),
                ("members6".into(), json!({"concat": ["cni0", "fd00::5"]})),
                (
                    "same6".into(),
                    json!({"concat": ["cni0", "cni0", "fd00::5"]})
                ),
            ]
        );
        assert_eq!(
            names(&att(Policy::Isolated)),
            vec![
                ("ctr4".into(), json!("10.88.0.5")),
                ("members4".into(), json!({"concat": ["cni0", "10.88.0.5"]})),
                ("ctr6".into(), json!("fd00::5")),
                ("members6".into(), json!({"concat": ["cni0", "fd00::5"]})),
                ("isolated_ports".into(), json!("veth0123abcd")),
            ]
        );
    }

    #[test]
    fn policies_parse_and_bad_names_are_config_errors() {
        assert_eq!(Policy::parse("").unwrap(), Policy::Open);
        assert_eq!(Policy::parse("open").unwrap(), Policy::Open);
        assert_eq!(Policy::parse("same-bridge").unwrap(), Policy::SameBridge);
        assert_eq!(Policy::parse("isolated").unwrap(), Policy::Isolated);
        assert_eq!(Policy::parse("closed").unwrap_err().code(), 7);
        for bad in ["", "x".repeat(16).as_str(), "a b", "a/b", "a\"b\n", ".."] {
            let mut a = att(Policy::SameBridge);
            a.bridge = bad.into();
            assert_eq!(a.elements().unwrap_err().code(), 7, "{bad:?}");
        }
        // An open policy does not need a bridge name at all.
        let mut a = att(Policy::Open);
        a.bridge = String::new();
        assert!(a.elements().is_ok());
        let mut a = att(Policy::Isolated);
        a.host_port = None;
        assert_eq!(a.elements().unwrap_err().code(), 7);
    }

    #[test]
    fn add_batch_keeps_admin_and_comments_elements() {
        let c = cmds(&add_batch(&att(Policy::SameBridge), vec![]).unwrap());
        assert!(
            c.iter().all(|v| v["flush"]["chain"]["name"] != "admin"),
            "the admin chain is never flushed"
        );
        assert!(c.iter().any(|v| v["add"]["chain"]["name"] == "admin"));
        let admin = c
            .iter()
            .position(|v| v["add"]["chain"]["name"] == "admin")
            .unwrap();
        let first_jump = c
            .iter()
            .position(|v| v.to_string().contains("\"jump\""))
            .unwrap();
        assert!(admin < first_jump);
        assert!(
            c.iter()
                .any(|v| v["add"]["element"]["name"] == "guarded_bridges"
                    && v["add"]["element"]["elem"] == json!(["cni0"]))
        );
        let owned = c
            .iter()
            .filter_map(|v| v["add"]["element"]["elem"].as_array())
            .flatten()
            .filter(|e| e["elem"]["comment"] == "net/cid/eth0")
            .count();
        assert_eq!(owned, 6);
        assert!(
            c.iter().all(|v| !v.to_string().contains("\"bridge\"")),
            "no bridge table unless isolated"
        );
        let iso = cmds(&add_batch(&att(Policy::Isolated), vec![json!({"x": 1})]).unwrap());
        assert!(
            iso.iter()
                .any(|v| v["add"]["chain"]["family"] == "bridge"
                    && v["add"]["chain"]["prio"] == -200)
        );
        assert!(iso.contains(&json!({"x": 1})));
    }

    #[test]
    fn nothing_to_do_without_addresses() {
        let mut a = att(Policy::SameBridge);
        a.addrs.clear();
        assert!(add_batch(&a, vec![]).unwrap().is_empty());
        assert!(del_known_batch(&a).unwrap().is_empty());
    }

    #[test]
    fn known_delete_leaves_the_shared_bridge() {
        let c = cmds(&del_known_batch(&att(Policy::SameBridge)).unwrap());
        assert!(!c.iter().any(|v| v.to_string().contains("guarded_bridges")));
        assert!(!c.iter().any(|v| v.to_string().contains("\"rule\"")));
        let dels = c
            .iter()
            .filter(|v| v["delete"]["element"].is_object())
            .count();
        assert_eq!(dels, 6);
    }

    #[test]
    fn rules_are_what_nft_lists() {
        // As `nft -j list` prints them (nft 1.0.6).
        let f = forward_rules();
        assert_eq!(
            f[1],
            vec![json!({"mangle": {"key": {"meta": {"key": "mark"}},
                "value": {"|": [{"meta": {"key": "mark"}}, 134217728]}}})]
        );
        assert_eq!(
            f[3],
            vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@ctr4"}}),
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
                json!({"accept": null}),
            ]
        );
        assert_eq!(
            f.last().unwrap(),
            &vec![json!({"mangle": {"key": {"meta": {"key": "mark"}},
                "value": {"&": [{"meta": {"key": "mark"}}, 4160749567u32]}}})]
        );
        assert_eq!(
            isolation_rules()[2],
            vec![
                json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@guarded_bridges"}}),
                json!({"match": {"op": "==", "left": {"concat": [{"meta": {"key": "oifname"}},
                    {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@members4"}}),
                json!({"drop": null}),
            ]
        );
    }

    #[test]
    fn prune_drops_stale_elements_and_orphan_bridges() {
        let doc = json!({"nftables": [
            {"table": {"family": "inet", "name": "cnirs_firewall"}},
            {"set": {"family": "inet", "table": "cnirs_firewall", "name": "guarded_bridges",
                "type": "ifname", "elem": ["br1", "br2"]}},
            {"set": {"family": "inet", "table": "cnirs_firewall", "name": "members4",
                "type": ["ifname", "ipv4_addr"], "elem": [
                    {"elem": {"val": {"concat": ["br1", "10.0.0.2"]}, "comment": "n/a/eth0"}},
                    {"elem": {"val": {"concat": ["br2", "10.0.1.2"]}, "comment": "n/b/eth0"}},
                    {"elem": {"val": {"concat": ["br2", "10.0.1.3"]}, "comment": "m/c/eth0"}}]}},
        ]});
        let l = TableListing::parse(TABLE, &doc).unwrap();
        // Dropping n/a leaves br1 without members; br2 keeps m/c.
        let mut b = Batch::new();
        let n = prune_batch(&mut b, Some(&l), None, &|c| c == "n/a/eth0");
        assert_eq!(n, 2);
        let s = b.to_json().to_string();
        assert!(s.contains("\"elem\":[\"br1\"]") && !s.contains("\"elem\":[\"br2\"]"));
        // Dropping everything of n and m leaves no bridge.
        let mut b = Batch::new();
        let n = prune_batch(&mut b, Some(&l), None, &|c| {
            c.starts_with("n/") || c.starts_with("m/")
        });
        assert_eq!(n, 5);
    }

    /// The ruleset written over netlink is the one nft writes, for each policy.
    #[test]
    fn netlink_writes_what_nft_writes() {
        if !testkit::have_root() {
            return;
        }
        for policy in [Policy::Open, Policy::SameBridge, Policy::Isolated] {
            let isolated = policy == Policy::Isolated;
            let mut tables = vec![(TABLE.family, TABLE.name)];
            if isolated {
                tables.push((BRIDGE_TABLE.family, BRIDGE_TABLE.name));
            }
            testkit::assert_netlink_writes_what_nft_writes(
                &add_batch(&att(policy), Vec::new()).unwrap(),
                &tables,
            );
        }
    }
}
