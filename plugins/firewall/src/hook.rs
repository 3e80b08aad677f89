//! The hand-off to iptables-nft's `FORWARD` chains.
//!
//! In nftables every base chain on a hook must accept a packet: an accept in
//! `inet cnirs_firewall` does not undo a `policy drop` in `table ip filter { chain FORWARD }`,
//! which is what `iptables -P FORWARD DROP` makes on an iptables-nft host (Docker sets it;
//! Debian, Ubuntu, RHEL and Fedora ship iptables-nft). So when that chain exists, the first rule
//! of it (and of `ip6 filter FORWARD`) becomes
//!
//! ```text
//! meta mark & 0x08000000 == 0x08000000 counter accept comment "cni-rs firewall: ..."
//! ```
//!
//! which iptables-nft lists as `-m mark --mark 0x8000000/0x8000000 -m comment --comment ...
//! -j ACCEPT`: only native expressions it decodes (no sets, no `ct`), so `iptables -S`,
//! `iptables-save` and the tools that parse them (Docker, kube-proxy) keep working. It
//! accepts what our table marked, and nothing else.
//!
//! The rule is inserted once per chain (ADD reads the chain first over netlink, under the
//! plugin's lock), and never removed by DEL or GC: it is shared, and inert without our table.

use common::error::Result;
use common::nft::Family;
use common::nft::netlink::{KernelRule, NFTA_DATA_VALUE, chains_rules_in_kernel, expr_attr};
use serde_json::{Value, json};

use crate::rules::FORWARD_MARK;

/// The iptables-nft table and chain the hand-off rule goes into.
pub const IPTABLES_TABLE: &str = "filter";
pub const IPTABLES_CHAIN: &str = "FORWARD";

/// The comment that identifies the hand-off rule.
pub fn comment() -> String {
    format!("cni-rs firewall: accept what inet cnirs_firewall marked {FORWARD_MARK:#010x}")
}

/// The hand-off rule's statements, as nft lists them.
pub fn rule_expr() -> Vec<Value> {
    vec![
        json!({"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, FORWARD_MARK]},
            "right": FORWARD_MARK}}),
        json!({"counter": null}),
        json!({"accept": null}),
    ]
}

/// The command inserting the hand-off rule at the top of `family filter FORWARD`.
pub fn insert_cmd(family: Family) -> Value {
    json!({"insert": {"rule": {
        "family": family.as_str(),
        "table": IPTABLES_TABLE,
        "chain": IPTABLES_CHAIN,
        "expr": rule_expr(),
        "comment": comment(),
    }}})
}

/// What a listing says about one family's `FORWARD` chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookState {
    /// No such chain (no iptables-nft here for this family): nothing to do.
    NoChain,
    Present,
    Missing,
}

// Attributes of the expressions the hand-off rule is made of (linux/netfilter/nf_tables.h).
const NFTA_META_KEY: u16 = 2;
const NFT_META_MARK: u32 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_ACCEPT: u32 = 1;

/// True when a rule read from the kernel is the hand-off rule: by its comment, or by its
/// mark match and verdict (after an `iptables-save | iptables-restore` round trip,
/// iptables-nft has turned the comment into an `xt comment` match).
fn is_hand_off(rule: &KernelRule, comment: &str) -> bool {
    if rule.comment.as_deref() == Some(comment) {
        return true;
    }
    let mark = FORWARD_MARK.to_ne_bytes();
    let be32 = |v: Option<&[u8]>| v.and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    match rule.exprs.as_slice() {
        [(m, meta), (b, bitwise), (c, cmp), .., (i, imm)] => {
            m == "meta"
                && be32(expr_attr(meta, &[NFTA_META_KEY])) == Some(NFT_META_MARK)
                && b == "bitwise"
                && expr_attr(bitwise, &[NFTA_BITWISE_MASK, NFTA_DATA_VALUE]) == Some(&mark[..])
                && c == "cmp"
                && expr_attr(cmp, &[NFTA_CMP_DATA, NFTA_DATA_VALUE]) == Some(&mark[..])
                && i == "immediate"
                && be32(expr_attr(
                    imm,
                    &[NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE],
                )) == Some(NF_ACCEPT)
        }
        _ => false,
    }
}

/// What one family's `FORWARD` chain holds, from its rules (`None`: no such chain).
pub fn state_of_rules(rules: Option<&[KernelRule]>) -> HookState {
    let want = comment();
    match rules {
        None => HookState::NoChain,
        Some(r) if r.iter().any(|r| is_hand_off(r, &want)) => HookState::Present,
        Some(_) => HookState::Missing,
    }
}

/// Kernel: reads `FAMILY filter FORWARD` over netlink (no `nft` process).
/// Kernel: the state of each family's `FORWARD` chain, read over one netlink socket.
pub fn states_in_kernel(families: &[Family]) -> Result<Vec<(Family, HookState)>> {
    let rules = chains_rules_in_kernel(families, IPTABLES_TABLE, IPTABLES_CHAIN)?;
    Ok(families
        .iter()
        .zip(rules)
        .map(|(f, r)| (*f, state_of_rules(r.as_deref())))
        .collect())
}

/// Kernel: the insert commands for the families whose `FORWARD` chain lacks the rule.
pub fn missing_inserts(families: &[Family]) -> Result<Vec<Value>> {
    let mut cmds = Vec::new();
    for (f, state) in states_in_kernel(families)? {
        if state == HookState::Missing {
            log::debug!("inserting the hand-off rule into {f} {IPTABLES_TABLE} {IPTABLES_CHAIN}");
            cmds.push(insert_cmd(f));
        }
    }
    Ok(cmds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_command_shape() {
        let c = insert_cmd(Family::Ip6);
        assert_eq!(c["insert"]["rule"]["family"], "ip6");
        assert_eq!(c["insert"]["rule"]["chain"], "FORWARD");
        assert_eq!(
            c["insert"]["rule"]["comment"],
            "cni-rs firewall: accept what inet cnirs_firewall marked 0x08000000"
        );
        assert!(comment().len() <= common::nft::COMMENT_MAX);
    }

    fn nested(kind: u16, inner: Vec<u8>) -> Vec<u8> {
        let mut v = ((inner.len() + 4) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&(kind | 0x8000).to_ne_bytes());
        v.extend_from_slice(&inner);
        v
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((value.len() + 4) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    /// The expressions of `meta mark & M == M [extra] accept`, as the kernel dumps them.
    fn mark_rule(m: u32, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
        let value = |b: &[u8]| attr(NFTA_DATA_VALUE, b);
        let mut exprs = vec![
            (
                "meta".to_string(),
                attr(NFTA_META_KEY, &NFT_META_MARK.to_be_bytes()),
            ),
            (
                "bitwise".to_string(),
                nested(NFTA_BITWISE_MASK, value(&m.to_ne_bytes())),
            ),
            (
                "cmp".to_string(),
                nested(NFTA_CMP_DATA, value(&m.to_ne_bytes())),
            ),
        ];
        for e in extra {
            exprs.push((e.to_string(), Vec::new()));
        }
        let verdict = nested(
            NFTA_DATA_VERDICT,
            attr(NFTA_VERDICT_CODE, &NF_ACCEPT.to_be_bytes()),
        );
        exprs.push((
            "immediate".to_string(),
            nested(NFTA_IMMEDIATE_DATA, verdict),
        ));
        exprs
    }

    #[test]
    fn rules_are_recognised_by_comment_or_shape() {
        let other = KernelRule {
            comment: Some("something else".into()),
            exprs: vec![("immediate".into(), Vec::new())],
        };
        assert_eq!(state_of_rules(None), HookState::NoChain);
        assert_eq!(
            state_of_rules(Some(std::slice::from_ref(&other))),
            HookState::Missing
        );
        let by_comment = KernelRule {
            comment: Some(comment()),
            exprs: Vec::new(),
        };
        assert_eq!(
            state_of_rules(Some(&[other.clone(), by_comment])),
            HookState::Present
        );
        // After iptables-nft-save | iptables-nft-restore: an xt comment match, no user data.
        let restored = KernelRule {
            comment: None,
            exprs: mark_rule(FORWARD_MARK, &["match", "counter"]),
        };
        assert_eq!(state_of_rules(Some(&[restored])), HookState::Present);
        let other_mark = KernelRule {
            comment: None,
            exprs: mark_rule(0x4000, &["counter"]),
        };
        assert_eq!(state_of_rules(Some(&[other_mark])), HookState::Missing);
    }
}
