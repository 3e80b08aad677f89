//! The bridge plugin's nftables objects: IP masquerade (`ipMasq`) and MAC spoof checking
//! (`macspoofchk`), in tables of this project's own (never the reference plugins' tables,
//! which those flush and rewrite):
//!
//! ```text
//! table inet cnirs_bridge_masq {
//!   set masq4   { type ipv4_addr; }                           # container address
//!   set exempt4 { type ipv4_addr . ipv4_addr; flags interval; } # address . its subnet
//!   set masq6   { type ipv6_addr; }
//!   set exempt6 { type ipv6_addr . ipv6_addr; flags interval; }
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip daddr 224.0.0.0/4 return
//!     ip saddr . ip daddr @exempt4 return
//!     ip saddr @masq4 masquerade
//!     ip6 daddr ff00::/8 return
//!     ip6 saddr . ip6 daddr @exempt6 return
//!     ip6 saddr @masq6 masquerade
//!   }
//! }
//! table bridge cnirs_bridge_spoofchk {
//!   set allowed { type ifname . ether_addr; }   # host veth . container MAC
//!   set guarded { type ifname; }                # host veth
//!   chain prerouting {
//!     type filter hook prerouting priority -300; policy accept;
//!     iifname . ether saddr @allowed return
//!     iifname @guarded drop
//!   }
//! }
//! ```
//!
//! As in the reference, traffic from a container address to anything outside its subnet that
//! is not multicast is masqueraded; frames entering the bridge from an attachment's host veth
//! with another source MAC are dropped. The rules are fixed; an attachment only adds set
//! elements, each commented `<network>/<containerID>/<ifname>`
//! ([`common::nft::attachment_comment`]), so DEL with known keys is one `nft` transaction
//! without listing, and DEL without keys and GC find elements by comment.
//!
//! Limit: an element is keyed by packet fields, so two attachments with the same container
//! address (overlapping subnets in two networks) share one element, and removing one
//! attachment's removes it for the other.

use common::error::{Error, Result};
use common::nft::{
    self, Batch, ChainDef, Family, Hook, Key, SetDef, TableRef, attachment_comment, matches,
    payload, reference, set_ref,
};
use common::spec::config::Attachment;
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

/// `inet cnirs_bridge_masq`: the masquerade table.
pub const MASQ_TABLE: TableRef<'static> = TableRef {
    family: Family::Inet,
    name: "cnirs_bridge_masq",
};

/// `bridge cnirs_bridge_spoofchk`: the MAC spoof check table.
pub const SPOOF_TABLE: TableRef<'static> = TableRef {
    family: Family::Bridge,
    name: "cnirs_bridge_spoofchk",
};

/// `postrouting`: nat, hook postrouting, priority srcnat (100).
pub const MASQ_CHAIN: ChainDef<'static> = ChainDef {
    table: MASQ_TABLE,
    name: "postrouting",
    hook: Some(Hook {
        chain_type: "nat",
        hook: "postrouting",
        prio: 100,
        policy: "accept",
    }),
};

/// `prerouting`: filter, hook prerouting, priority -300.
pub const SPOOF_CHAIN: ChainDef<'static> = ChainDef {
    table: SPOOF_TABLE,
    name: "prerouting",
    hook: Some(Hook {
        chain_type: "filter",
        hook: "prerouting",
        prio: -300,
        policy: "accept",
    }),
};

/// Container IPv4 addresses to masquerade.
pub const MASQ4: SetDef<'static> = SetDef {
    table: MASQ_TABLE,
    name: "masq4",
    key: &["ipv4_addr"],
    map: None,
    interval: false,
};

/// `address . subnet` pairs (IPv4) not to masquerade.
pub const EXEMPT4: SetDef<'static> = SetDef {
    table: MASQ_TABLE,
    name: "exempt4",
    key: &["ipv4_addr", "ipv4_addr"],
    map: None,
    interval: true,
};

/// Container IPv6 addresses to masquerade.
pub const MASQ6: SetDef<'static> = SetDef {
    table: MASQ_TABLE,
    name: "masq6",
    key: &["ipv6_addr"],
    map: None,
    interval: false,
};

/// `address . subnet` pairs (IPv6) not to masquerade.
pub const EXEMPT6: SetDef<'static> = SetDef {
    table: MASQ_TABLE,
    name: "exempt6",
    key: &["ipv6_addr", "ipv6_addr"],
    map: None,
    interval: true,
};

/// `host veth . container MAC` pairs let through.
pub const ALLOWED: SetDef<'static> = SetDef {
    table: SPOOF_TABLE,
    name: "allowed",
    key: &["ifname", "ether_addr"],
    map: None,
    interval: false,
};

/// Host veths whose other frames are dropped.
pub const GUARDED: SetDef<'static> = SetDef {
    table: SPOOF_TABLE,
    name: "guarded",
    key: &["ifname"],
    map: None,
    interval: false,
};

/// The spoof check of one attachment: frames from `host_veth` must come from `mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoofCheck {
    pub host_veth: String,
    /// The container interface's MAC (`aa:bb:cc:dd:ee:ff`, any case).
    pub mac: String,
}

/// Everything one attachment puts into nftables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRules {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// Container addresses to masquerade, each with its subnet's prefix (`10.88.0.5/16`).
    pub masq: Vec<IpNetwork>,
    pub spoof: Option<SpoofCheck>,
}

impl AttachmentRules {
    fn comment(&self) -> String {
        attachment_comment(&self.network, &self.container_id, &self.ifname)
    }

    /// True when there is nothing to put in nftables.
    pub fn is_empty(&self) -> bool {
        self.masq.is_empty() && self.spoof.is_none()
    }

    /// The elements this attachment owns, by set.
    fn elements(&self) -> Result<Vec<(&'static SetDef<'static>, Key)>> {
        let mut out = Vec::new();
        for net in &self.masq {
            let (masq, exempt) = if net.is_ipv4() {
                (&MASQ4, &EXEMPT4)
            } else {
                (&MASQ6, &EXEMPT6)
            };
            let addr = nft::key_addr(net.ip());
            let subnet = nft::key_prefix(net.network(), net.prefix());
            out.push((masq, Key::new(addr.clone())));
            out.push((exempt, Key::new(nft::key_concat(vec![addr, subnet]))));
        }
        if let Some(s) = &self.spoof {
            if s.host_veth.is_empty() || s.host_veth.len() > 15 {
                return Err(Error::config(format!(
                    "macspoofchk: invalid host interface name {:?}",
                    s.host_veth
                )));
            }
            let veth = Value::from(s.host_veth.as_str());
            let mac = Value::from(normalize_mac(&s.mac)?);
            out.push((&ALLOWED, Key::new(nft::key_concat(vec![veth.clone(), mac]))));
            out.push((&GUARDED, Key::new(veth)));
        }
        Ok(out)
    }
}

/// `aa:bb:cc:dd:ee:ff` in lower case (as nft lists it); `-` separators are accepted.
fn normalize_mac(mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(parts.join(":").to_ascii_lowercase())
    } else {
        Err(Error::config(format!("macspoofchk: invalid MAC {mac:?}")))
    }
}

/// The fixed rules of the masquerade chain, in order.
fn masq_rules() -> Vec<Vec<Value>> {
    let ret = json!({"return": null});
    let masquerade = json!({"masquerade": null});
    let mut rules = Vec::new();
    for (proto, mcast, mlen, masq, exempt) in [
        ("ip", "224.0.0.0", 4, &MASQ4, &EXEMPT4),
        ("ip6", "ff00::", 8, &MASQ6, &EXEMPT6),
    ] {
        let daddr = payload(proto, "daddr");
        let saddr = payload(proto, "saddr");
        rules.push(vec![
            matches(
                daddr.clone(),
                json!({"prefix": {"addr": mcast, "len": mlen}}),
            ),
            ret.clone(),
        ]);
        rules.push(vec![
            matches(json!({"concat": [saddr.clone(), daddr]}), set_ref(exempt)),
            ret.clone(),
        ]);
        rules.push(vec![matches(saddr, set_ref(masq)), masquerade.clone()]);
    }
    rules
}

/// The fixed rules of the spoof check chain, in order.
fn spoof_rules() -> Vec<Vec<Value>> {
    let iifname = json!({"meta": {"key": "iifname"}});
    vec![
        vec![
            matches(
                json!({"concat": [iifname.clone(), payload("ether", "saddr")]}),
                set_ref(&ALLOWED),
            ),
            json!({"return": null}),
        ],
        vec![matches(iifname, set_ref(&GUARDED)), json!({"drop": null})],
    ]
}

/// The ADD batch: the tables, sets and chains with their fixed rules (flushed and rewritten,
/// so never duplicated), then this attachment's elements.
pub fn add_batch(rules: &AttachmentRules) -> Result<Batch> {
    let mut b = Batch::new();
    if rules.is_empty() {
        return Ok(b);
    }
    let comment = rules.comment();
    let elements = rules.elements()?;
    if !rules.masq.is_empty() {
        b.add_table(MASQ_TABLE);
        for s in [&MASQ4, &EXEMPT4, &MASQ6, &EXEMPT6] {
            b.add_set(s);
        }
        b.ensure_chain_rules(&MASQ_CHAIN, masq_rules());
    }
    if rules.spoof.is_some() {
        b.add_table(SPOOF_TABLE);
        for s in [&ALLOWED, &GUARDED] {
            b.add_set(s);
        }
        b.ensure_chain_rules(&SPOOF_CHAIN, spoof_rules());
    }
    for (set, key) in &elements {
        b.add_attachment_elements(set, &comment, std::slice::from_ref(key));
    }
    Ok(b)
}

/// The DEL batch for known keys: no listing, and no failure when anything is missing.
pub fn del_known_batch(rules: &AttachmentRules) -> Result<Batch> {
    Ok(Batch::deleting(&rules.elements()?))
}

/// Kernel: installs the attachment's masquerade and spoof check elements (and the fixed
/// tables, chains and rules) in ONE nft transaction. Nothing to do → no nft call.
pub fn add_rules(rules: &AttachmentRules) -> Result<()> {
    nft::apply_to_kernel(&add_batch(rules)?).map_err(|e| {
        e.context(format!(
            "adding nftables rules for {}/{}",
            rules.container_id, rules.ifname
        ))
    })
}

/// Kernel: removes one attachment's elements; idempotent, missing tables are success.
///
/// With `known` (from prevResult and the config), ONE nft transaction without listing; an
/// attachment with neither masquerade nor spoof check costs no nft call. Without it, both
/// tables are listed and the elements commented for this attachment deleted (one more
/// transaction, only if there are any).
pub fn del_rules(
    network: &str,
    container_id: &str,
    ifname: &str,
    known: Option<&AttachmentRules>,
) -> Result<()> {
    let res = match known {
        Some(rules) => del_known_batch(rules).and_then(|b| nft::apply_to_kernel(&b)),
        None => nft::delete_elements_by_comment_in_kernel(
            &[MASQ_TABLE, SPOOF_TABLE],
            &nft::comment_is_attachment(network, container_id, ifname),
        )
        .map(|_| ()),
    };
    res.map_err(|e| {
        e.context(format!(
            "deleting nftables rules for {container_id}/{ifname}"
        ))
    })
}

/// What of `rules` is missing from the listed tables (`None`: table missing).
fn missing_in(
    rules: &AttachmentRules,
    masq: Option<&nft::TableListing>,
    spoof: Option<&nft::TableListing>,
) -> Result<Vec<String>> {
    let comment = rules.comment();
    let mut missing = Vec::new();
    let mut check_chain =
        |listing: Option<&nft::TableListing>, chain: &ChainDef, n: usize| match listing
            .and_then(|l| l.chain(chain.name))
        {
            None => missing.push(format!("chain {} {}", chain.table, chain.name)),
            Some(c) if c.rules.len() != n => missing.push(format!(
                "rules of chain {} {} ({} instead of {n})",
                chain.table,
                chain.name,
                c.rules.len()
            )),
            Some(_) => {}
        };
    if !rules.masq.is_empty() {
        check_chain(masq, &MASQ_CHAIN, masq_rules().len());
    }
    if rules.spoof.is_some() {
        check_chain(spoof, &SPOOF_CHAIN, spoof_rules().len());
    }
    for (set, key) in rules.elements()? {
        let listing = if set.table == MASQ_TABLE { masq } else { spoof };
        if !listing.is_some_and(|l| l.has_element(set.name, &key, &comment)) {
            missing.push(format!(
                "element {} in set {} {}",
                key.key, set.table, set.name
            ));
        }
    }
    Ok(missing)
}

/// Kernel: CHECK. Lists the tables the attachment uses and fails naming every missing chain,
/// rule count or element (elements must carry this attachment's comment). Nothing to check →
/// no nft call.
pub fn check_rules(rules: &AttachmentRules) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let masq = if rules.masq.is_empty() {
        None
    } else {
        nft::list_table_from_kernel(MASQ_TABLE)?
    };
    let spoof = if rules.spoof.is_some() {
        nft::list_table_from_kernel(SPOOF_TABLE)?
    } else {
        None
    };
    let missing = missing_in(rules, masq.as_ref(), spoof.as_ref())?;
    let what = format!(
        "nftables rules of {}/{}/{} missing",
        rules.network, rules.container_id, rules.ifname
    );
    nft::check_outcome_in_kernel(&[MASQ_TABLE, SPOOF_TABLE], &what, &missing)
}

/// Kernel: GC. Deletes every element of `network` whose attachment is not in `valid` (an
/// empty list means none is valid) from both tables: one listing per table and one
/// transaction. Elements of other networks are left alone.
pub fn gc_rules(network: &str, valid: &[Attachment]) -> Result<()> {
    nft::delete_elements_by_comment_in_kernel(
        &[MASQ_TABLE, SPOOF_TABLE],
        &nft::comment_is_stale(network, valid),
    )
    .map(|_| ())
    .map_err(|e| {
        e.context(format!(
            "garbage-collecting nftables rules of network {network}"
        ))
    })
}

/// Kernel: DEL of what the reference bridge made for this attachment's ipMasq before the
/// binaries were swapped (its `CNI-<hash>` nat chains and their jumps, its nftables backend's
/// rules; see [`common::nft::reference`]). Never fails: problems are logged.
pub fn del_reference_masq(network: &str, container_id: &str, ifname: &str) {
    reference::del_bridge_masq_in_kernel(reference::Owner {
        network,
        container_id,
        ifname,
    });
}

/// Kernel: GC of the reference bridge's masquerade objects of `network` whose owner is not in
/// `valid`.
pub fn gc_reference_masq(network: &str, valid: &[Attachment]) -> Result<()> {
    reference::gc_bridge_masq_in_kernel(network, valid).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> AttachmentRules {
        AttachmentRules {
            network: "net".into(),
            container_id: "cid".into(),
            ifname: "eth0".into(),
            masq: vec![
                "10.88.0.5/16".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
            spoof: Some(SpoofCheck {
                host_veth: "veth0123abcd".into(),
                mac: "02:42:AA:bb:cc:DD".into(),
            }),
        }
    }

    fn cmds(b: &Batch) -> Vec<Value> {
        b.to_json()["nftables"].as_array().unwrap().clone()
    }

    #[test]
    fn elements_of_an_attachment() {
        let els: Vec<(String, Value)> = att()
            .elements()
            .unwrap()
            .into_iter()
            .map(|(s, k)| (s.name.to_string(), k.key))
            .collect();
        assert_eq!(
            els,
            vec![
                ("masq4".into(), json!("10.88.0.5")),
                (
                    "exempt4".into(),
                    json!({"concat": ["10.88.0.5", {"prefix": {"addr": "10.88.0.0", "len": 16}}]})
                ),
                ("masq6".into(), json!("fd00::5")),
                (
                    "exempt6".into(),
                    json!({"concat": ["fd00::5", {"prefix": {"addr": "fd00::", "len": 64}}]})
                ),
                (
                    "allowed".into(),
                    json!({"concat": ["veth0123abcd", "02:42:aa:bb:cc:dd"]})
                ),
                ("guarded".into(), json!("veth0123abcd")),
            ]
        );
    }

    #[test]
    fn add_batch_orders_sets_before_rules_and_comments_elements() {
        let c = cmds(&add_batch(&att()).unwrap());
        let pos = |pred: &dyn Fn(&Value) -> bool| c.iter().position(pred).unwrap();
        let first_rule = pos(&|v| v["add"]["rule"].is_object());
        let last_set = c
            .iter()
            .rposition(|v| {
                v["add"]["set"].is_object() && v["add"]["set"]["table"] == "cnirs_bridge_masq"
            })
            .unwrap();
        assert!(pos(&|v| v["add"]["set"]["name"] == "exempt6") < first_rule);
        assert!(last_set < first_rule); // each set once, before the rules
        assert!(pos(&|v| v["flush"]["chain"]["name"] == "postrouting") < first_rule);
        let rules = c.iter().filter(|v| v["add"]["rule"].is_object()).count();
        assert_eq!(rules, 6 + 2);
        let elems: Vec<&Value> = c
            .iter()
            .filter(|v| v["add"]["element"]["name"] != common::nft::SETUP_MARKER)
            .filter_map(|v| v["add"]["element"]["elem"].as_array())
            .flatten()
            .collect();
        // Each key is added bare, deleted (dropping another owner's comment), then added
        // with this attachment's comment.
        let owned: Vec<&&Value> = elems
            .iter()
            .filter(|e| e["elem"]["comment"].is_string())
            .collect();
        assert_eq!(owned.len(), 6);
        for e in owned {
            assert_eq!(e["elem"]["comment"], "net/cid/eth0");
        }
        assert_eq!(elems.len(), 12);
        let deleted = c
            .iter()
            .filter_map(|v| v["delete"]["element"]["elem"].as_array())
            .flatten()
            .count();
        assert_eq!(deleted, 6);
        assert_eq!(
            c.iter()
                .find(|v| v["add"]["chain"]["name"] == "prerouting")
                .unwrap()["add"]["chain"],
            json!({"family": "bridge", "table": "cnirs_bridge_spoofchk", "name": "prerouting",
                "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"})
        );
    }

    #[test]
    fn masq_only_leaves_the_bridge_table_alone() {
        let mut a = att();
        a.spoof = None;
        let c = cmds(&add_batch(&a).unwrap());
        assert!(
            c.iter()
                .all(|v| !v.to_string().contains("cnirs_bridge_spoofchk"))
        );
        a.masq.clear();
        assert!(add_batch(&a).unwrap().is_empty());
        assert!(del_known_batch(&a).unwrap().is_empty());
    }

    #[test]
    fn rules_are_what_nft_lists() {
        // The exact JSON `nft -j list` prints for these rules (nft 1.0.6), so CHECK could
        // compare them one day.
        assert_eq!(
            masq_rules()[1],
            vec![
                json!({"match": {"op": "==", "left": {"concat": [
                    {"payload": {"protocol": "ip", "field": "saddr"}},
                    {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@exempt4"}}),
                json!({"return": null}),
            ]
        );
        assert_eq!(
            spoof_rules()[1],
            vec![
                json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@guarded"}}),
                json!({"drop": null}),
            ]
        );
    }

    #[test]
    fn known_delete_adds_then_deletes_each_element() {
        let c = cmds(&del_known_batch(&att()).unwrap());
        let adds = c.iter().filter(|v| v["add"]["element"].is_object()).count();
        let dels = c
            .iter()
            .filter(|v| v["delete"]["element"].is_object())
            .count();
        assert_eq!((adds, dels), (6, 6));
        assert!(c.iter().all(|v| !v.to_string().contains("comment")));
        assert!(c.iter().all(|v| !v.to_string().contains("\"rule\"")));
    }

    #[test]
    fn bad_mac_and_veth_are_config_errors() {
        let mut a = att();
        a.spoof.as_mut().unwrap().mac = "02:42:aa:bb:cc".into();
        assert_eq!(add_batch(&a).unwrap_err().code(), 7);
        let mut a = att();
        a.spoof.as_mut().unwrap().host_veth = "x".repeat(16);
        assert_eq!(add_batch(&a).unwrap_err().code(), 7);
        assert_eq!(
            normalize_mac("02-42-AA-BB-CC-DD").unwrap(),
            "02:42:aa:bb:cc:dd"
        );
    }

    #[test]
    fn host_prefix_is_a_plain_address() {
        let mut a = att();
        a.masq = vec!["10.88.0.5/32".parse().unwrap()];
        a.spoof = None;
        let els = a.elements().unwrap();
        assert_eq!(els[1].1.key, json!({"concat": ["10.88.0.5", "10.88.0.5"]}));
    }

    /// The ruleset written over netlink is the one nft writes: masquerade and spoof check.
    #[test]
    fn netlink_writes_what_nft_writes() {
        if !testkit::have_root() {
            return;
        }
        testkit::assert_netlink_writes_what_nft_writes(
            &add_batch(&att()).unwrap(),
            &[
                (MASQ_TABLE.family, MASQ_TABLE.name),
                (SPOOF_TABLE.family, SPOOF_TABLE.name),
            ],
        );
    }
}
