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
//! The rule is inserted once per chain (ADD lists the chain first, under the plugin's lock),
//! and never removed by DEL or GC: it is shared, and inert without our table.

use common::error::{Error, Result};
use common::nft::{Family, nft_path};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};

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

/// True when a listed rule is the hand-off rule: by its comment, or by its mark match and
/// verdict (after an `iptables-save | iptables-restore` round trip, iptables-nft has turned
/// the comment into an `xt comment` match that nft cannot show).
fn is_hand_off(rule: &Value, comment: &str) -> bool {
    if rule.get("comment").and_then(Value::as_str) == Some(comment) {
        return true;
    }
    let Some(expr) = rule.get("expr").and_then(Value::as_array) else {
        return false;
    };
    let mark_match = rule_expr().swap_remove(0);
    expr.first() == Some(&mark_match) && expr.last() == Some(&json!({"accept": null}))
}

/// Reads an `nft -j list chain` document: is the hand-off rule in it?
pub fn state_of_listing(doc: &Value) -> HookState {
    let want = comment();
    let present = doc
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .any(|r| is_hand_off(r, &want));
    if present {
        HookState::Present
    } else {
        HookState::Missing
    }
}

/// Kernel: starts `nft -j list chain FAMILY filter FORWARD` (stdout and stderr piped).
fn spawn_listing(family: Family) -> Result<Child> {
    let nft = nft_path()?;
    Command::new(&nft)
        .args([
            "-j",
            "list",
            "chain",
            family.as_str(),
            IPTABLES_TABLE,
            IPTABLES_CHAIN,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("running {}: {e}", nft.display())))
}

/// Reads what a listing started by [`spawn_listing`] printed.
fn state_of_child(family: Family, child: Child) -> Result<HookState> {
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(HookState::NoChain);
        }
        return Err(Error::Nft(format!(
            "listing {family} {IPTABLES_TABLE} {IPTABLES_CHAIN}: {}",
            stderr.trim()
        )));
    }
    let doc: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Nft(format!(
            "listing {family} {IPTABLES_TABLE} {IPTABLES_CHAIN}: {e}"
        ))
    })?;
    Ok(state_of_listing(&doc))
}

/// Kernel: `nft -j list chain FAMILY filter FORWARD`.
pub fn state_in_kernel(family: Family) -> Result<HookState> {
    state_of_child(family, spawn_listing(family)?)
}

/// Kernel: the insert commands for the families whose `FORWARD` chain lacks the rule. The
/// listings of the families run side by side (nft 1.0.6 cannot list two chains in one
/// process: the second `list chain` of one input fails with `No such file or directory`).
pub fn missing_inserts(families: &[Family]) -> Result<Vec<Value>> {
    let mut children = Vec::new();
    for f in families {
        children.push((*f, spawn_listing(*f)?));
    }
    let mut cmds = Vec::new();
    for (f, child) in children {
        if state_of_child(f, child)? == HookState::Missing {
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

    #[test]
    fn listing_is_read_by_comment() {
        let other = json!({"rule": {"family": "ip", "table": "filter", "chain": "FORWARD",
            "handle": 4, "expr": [{"accept": null}], "comment": "something else"}});
        let ours = json!({"rule": {"family": "ip", "table": "filter", "chain": "FORWARD",
            "handle": 5, "expr": rule_expr(), "comment": comment()}});
        assert_eq!(
            state_of_listing(&json!({"nftables": [other.clone()]})),
            HookState::Missing
        );
        assert_eq!(
            state_of_listing(&json!({"nftables": [other, ours]})),
            HookState::Present
        );
        // As nft lists it after iptables-nft-save | iptables-nft-restore (iptables 1.8.9).
        let restored = json!({"rule": {"family": "ip", "table": "filter", "chain": "FORWARD",
            "handle": 4, "expr": [
                {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 134217728]},
                    "right": 134217728}},
                {"xt": {"type": "match", "name": "comment"}},
                {"counter": {"packets": 0, "bytes": 0}},
                {"accept": null}]}});
        assert_eq!(
            state_of_listing(&json!({"nftables": [restored]})),
            HookState::Present
        );
        let other_mark = json!({"rule": {"expr": [
            {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 16384}},
            {"accept": null}]}});
        assert_eq!(
            state_of_listing(&json!({"nftables": [other_mark]})),
            HookState::Missing
        );
    }
}
