//! The reference plugins' per-attachment objects in nf_tables, found and removed over netlink.
//!
//! A node is migrated by replacing the plugin binaries while its containers run, so containers
//! attached by containernetworking/plugins (the reference) are deleted by these plugins, and
//! after a rollback the other way round. Our bridge (ipMasq), portmap and firewall DEL and GC
//! call in here to remove what the reference made for the attachment, besides our own
//! elements:
//!
//! | plugin | object (iptables backend, both families) | owner recorded in |
//! | --- | --- | --- |
//! | bridge ipMasq | nat chain `CNI-<hash>` and its jumps in `POSTROUTING` (`-s <ip>`, comment `name: "<net>" id: "<cid>"`) | the chain name |
//! | portmap | nat chain `CNI-DN-<hash>` and its jumps in `CNI-HOSTPORT-DNAT` (comment `dnat name: "<net>" id: "<cid>"`); the older `CNI-SN-<hash>` and its jumps in `CNI-HOSTPORT-SNAT` | the chain name |
//! | firewall | filter `CNI-FORWARD`: `-d <ip>/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` and `-s <ip>/32 -j ACCEPT` (`/128` for IPv6) | nothing: the address only |
//!
//! `<hash>` is sha512(network name + container ID) in hex, the name cut to 28 characters.
//!
//! | plugin | object (nftables backend, `ipMasqBackend` / `backend` `"nftables"`) | owner recorded in |
//! | --- | --- | --- |
//! | bridge ipMasq | `inet cni_plugins_masquerade` chain `masq_checks`: rules commented `<h(net)>-<h(ifname:cid)>, net: ...` | the comment's 33-character hash prefix |
//! | portmap | `ip`/`ip6 cni_hostport` chains `hostports`, `hostip_hostports`, `masquerading`: rules commented with the container ID | the comment: the container ID alone |
//!
//! `h(x)` is the first 16 hex digits of sha512(x). Shared objects stay: `CNI-HOSTPORT-*`,
//! `CNI-FORWARD`, `CNI-ADMIN`, the jumps to them, the nft tables and their base chains. Other
//! containers may use them, and without per-attachment rules they change no packet.
//!
//! iptables on current distributions is iptables-nft: its rules are nf_tables rules in the
//! tables `ip nat`, `ip6 nat`, `ip filter` and `ip6 filter`, its chains nf_tables chains of the
//! same names, and a `-m comment` is an xt `comment` match (iptables 1.8.9) or the rule's
//! user-data comment; both are read. Nothing here runs iptables. Rules iptables-legacy made
//! live in x_tables, out of nf_tables' sight: when legacy tables are in use in the namespace,
//! DEL and GC log that such rules, if any, could not be removed.
//!
//! # Ownership
//!
//! Only what is proven the attachment's goes. A chain named after (network, container ID) is
//! proven by its name, and so is every jump to it; GC takes the owner from a jump's comment
//! and deletes only when the jump's target is the chain that owner's name hashes to. The nft
//! masquerade rules carry a hash of (network, ifname, container ID). The nft portmap rules
//! carry only the container ID: DEL removes them, as the reference's own DEL does, and GC
//! leaves them, since a container ID missing from one network's valid attachments may still
//! be attached to another network. The firewall's accepts carry only the address: DEL removes
//! those of the attachment's own prevResult addresses, exactly the two shapes the reference
//! writes, as the reference's DEL does; GC never does (see
//! [`del_firewall_accepts_in_kernel`]).
//!
//! # Cost
//!
//! DEL asks whether each owner-named chain and each scanned chain exists, all in one datagram
//! on one socket (one `GETCHAIN` each, answered from a hash table; a missing table answers
//! ENOENT), and dumps only chains that exist, decoding only the rules that hold the owner's
//! chain name, hash, container ID or address. With no reference object on the node, that is
//! one send and a few small replies; deletions are one transaction. The firewall's
//! `CNI-FORWARD` is shared, so while containers the reference attached still run, each
//! firewall DEL dumps their two rules each.

use super::Family;
use super::netlink::{
    self, KernelRule, NF_ACCEPT, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CT_STATE, NFT_GOTO, NFT_JUMP,
    NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_NEWCHAIN,
    NFT_PAYLOAD_NETWORK_HEADER, NFTA_BITWISE_MASK, NFTA_BITWISE_XOR, NFTA_CHAIN_NAME,
    NFTA_CHAIN_TABLE, NFTA_CMP_DATA, NFTA_CMP_OP, NFTA_CT_KEY, NFTA_DATA_VALUE, NFTA_DATA_VERDICT,
    NFTA_IMMEDIATE_DATA, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_LEN, NFTA_PAYLOAD_OFFSET, NFTA_RULE_CHAIN,
    NFTA_RULE_HANDLE, NFTA_RULE_TABLE, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, Outcome, RawMsg,
    SUBSYS_NFTABLES, expr_attr,
};
use crate::error::{Error, Result};
use crate::naming;
use crate::nfnetlink::{self, NfSocket, find, put_attr, put_str};
use crate::spec::config::Attachment;
use std::collections::HashSet;
use std::net::IpAddr;

/// The length of the reference's per-attachment iptables chain names.
const CHAIN_NAME_LEN: usize = 28;

/// Chain-name prefix of bridge's masquerade chain.
pub const MASQ_CHAIN_PREFIX: &str = "CNI-";
/// Chain-name prefix of portmap's DNAT chain.
pub const DNAT_CHAIN_PREFIX: &str = "CNI-DN-";
/// Chain-name prefix of portmap's SNAT chain (older reference versions; DEL still removes it).
pub const SNAT_CHAIN_PREFIX: &str = "CNI-SN-";

const NAT: &str = "nat";
const FILTER: &str = "filter";
const POSTROUTING: &str = "POSTROUTING";
const HOSTPORT_DNAT: &str = "CNI-HOSTPORT-DNAT";
const HOSTPORT_SNAT: &str = "CNI-HOSTPORT-SNAT";
const FIREWALL_CHAIN: &str = "CNI-FORWARD";
/// The chains holding the jumps to each kind of owner-named chain.
const MASQ_ENTRIES: &[&str] = &[POSTROUTING];
const DNAT_ENTRIES: &[&str] = &[HOSTPORT_DNAT];
const SNAT_ENTRIES: &[&str] = &[HOSTPORT_SNAT];

/// The nftables backend's masquerade table (inet) and per-attachment chain.
pub const NFT_MASQ_TABLE: &str = "cni_plugins_masquerade";
pub const NFT_MASQ_CHAIN: &str = "masq_checks";
/// The nftables backend's portmap table (ip and ip6) and the chains holding per-container rules.
pub const NFT_HOSTPORT_TABLE: &str = "cni_hostport";
pub const NFT_HOSTPORT_CHAINS: [&str; 3] = ["hostports", "hostip_hostports", "masquerading"];

const IP_FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

// ---------------------------------------------------------------------------------------
// Names and comments as the reference makes them

/// `prefix` followed by sha512(network + container ID) in hex, cut to 28 characters: the
/// reference's per-attachment iptables chain (prefix `CNI-`, `CNI-DN-` or `CNI-SN-`).
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    naming::reference_name(prefix, network, container_id, CHAIN_NAME_LEN)
}

/// The first 16 hex digits of sha512(`s`).
fn short_hash(s: &str) -> String {
    naming::sha512_hex(s, 16)
}

/// The start of the nftables backend's masquerade comment for one attachment: a hash of the
/// network, `-`, a hash of `ifname:containerID` (33 characters).
pub fn nft_masq_owner_hash(network: &str, ifname: &str, container_id: &str) -> String {
    format!(
        "{}-{}",
        short_hash(network),
        short_hash(&format!("{ifname}:{container_id}"))
    )
}

/// A string quoted as Go's `%q` quotes the names CNI allows (letters, digits, `_`, `.`,
/// `-`); `"` and `\` are escaped, as Go does, for names outside that set.
fn go_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// bridge's iptables masquerade comment: `name: "<net>" id: "<cid>"`.
pub fn masq_comment(network: &str, container_id: &str) -> String {
    format!(
        "name: {} id: {}",
        go_quoted(network),
        go_quoted(container_id)
    )
}

/// portmap's iptables DNAT jump comment: `dnat name: "<net>" id: "<cid>"`.
pub fn dnat_comment(network: &str, container_id: &str) -> String {
    format!("dnat name: \"{network}\" id: \"{container_id}\"")
}

/// (network, container ID) from a comment `<head>name: "<net>" id: "<cid>"`. `None` for other
/// comments, for names holding a quote, and for comments the reference cut short.
fn parse_owner_comment<'a>(comment: &'a str, head: &str) -> Option<(&'a str, &'a str)> {
    let rest = comment.strip_prefix(head)?.strip_prefix("name: \"")?;
    let (network, rest) = rest.split_once("\" id: \"")?;
    let container_id = rest.strip_suffix('"')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['"', '\\']);
    (plain(network) && plain(container_id)).then_some((network, container_id))
}

// ---------------------------------------------------------------------------------------
// Rules as the kernel holds them

/// A rule read from the kernel, with the handle that deletes it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub chain: String,
    pub handle: u64,
    pub rule: KernelRule,
}

// enum nft_match_attributes (xt matches inside nf_tables rules, as iptables-nft writes them).
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_REV: u16 = 2;
const NFTA_MATCH_INFO: u16 = 3;

/// Conntrack states ESTABLISHED (bit 1) and RELATED (bit 2), as both `ct state` and
/// xt_conntrack's `state_mask` hold them.
const CT_RELATED_ESTABLISHED: u32 = 0b110;
/// xt_conntrack_mtinfo2/3: offsets of `match_flags`, `invert_flags` and `state_mask` (u16
/// each), after eight 16-byte addresses, two u32 expiry bounds, the protocol and four ports.
const XT_CONNTRACK_MATCH_FLAGS: usize = 146;
const XT_CONNTRACK_INVERT_FLAGS: usize = 148;
const XT_CONNTRACK_STATE_MASK: usize = 150;
/// `XT_CONNTRACK_STATE`: the match tests the state only.
const XT_CONNTRACK_STATE: u16 = 1;

fn be32(v: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_be_bytes(v?.get(0..4)?.try_into().ok()?))
}

fn u16_at(v: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(at..at + 2)?.try_into().ok()?))
}

impl Rule {
    fn parse(attrs: &[u8]) -> Option<Rule> {
        let chain = find(attrs, NFTA_RULE_CHAIN).and_then(nfnetlink::as_str)?;
        let handle = find(attrs, NFTA_RULE_HANDLE)?.get(0..8)?.try_into().ok()?;
        Some(Rule {
            chain: chain.to_string(),
            handle: u64::from_be_bytes(handle),
            rule: KernelRule::parse(attrs),
        })
    }

    /// The rule's comment: its user data (what nft writes), else an xt `comment` match (what
    /// iptables-nft 1.8 writes for `-m comment`).
    pub fn comment(&self) -> Option<&str> {
        if let Some(c) = self.rule.comment.as_deref() {
            return Some(c);
        }
        self.rule.exprs.iter().find_map(|(name, data)| {
            if name != "match"
                || find(data, NFTA_MATCH_NAME).and_then(nfnetlink::as_str) != Some("comment")
            {
                return None;
            }
            find(data, NFTA_MATCH_INFO).and_then(nfnetlink::as_str)
        })
    }

    /// The chain this rule jumps or goes to.
    pub fn jump_target(&self) -> Option<&str> {
        self.rule.exprs.iter().find_map(|(name, data)| {
            if name != "immediate" {
                return None;
            }
            let verdict = expr_attr(data, &[NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT])?;
            let code = be32(find(verdict, NFTA_VERDICT_CODE))?;
            if code != NFT_JUMP && code != NFT_GOTO {
                return None;
            }
            find(verdict, NFTA_VERDICT_CHAIN).and_then(nfnetlink::as_str)
        })
    }

    /// True when this is one of the firewall's accepts for `addr`, exactly as the reference
    /// writes them: `-s ADDR -j ACCEPT`, or `-d ADDR` + conntrack state RELATED,ESTABLISHED +
    /// `-j ACCEPT` (as an xt `conntrack` match, or as nft's native `ct state`); counters aside,
    /// nothing else in the rule.
    pub fn is_firewall_accept_for(&self, addr: IpAddr) -> bool {
        let (bytes, saddr_at, daddr_at) = match addr {
            IpAddr::V4(a) => (a.octets().to_vec(), 12, 16),
            IpAddr::V6(a) => (a.octets().to_vec(), 8, 24),
        };
        let exprs: Vec<(&str, &[u8])> = self
            .rule
            .exprs
            .iter()
            .filter(|(name, _)| name != "counter")
            .map(|(name, data)| (name.as_str(), data.as_slice()))
            .collect();
        let [
            (load, load_data),
            (cmp, cmp_data),
            middle @ ..,
            (imm, imm_data),
        ] = exprs.as_slice()
        else {
            return false;
        };
        let offset = match (*load, *cmp, *imm) {
            ("payload", "cmp", "immediate") => payload_offset(load_data, bytes.len()),
            _ => None,
        };
        let addr_matches = cmp_is(cmp_data, NFT_CMP_EQ, &bytes);
        let accepts = be32(expr_attr(
            imm_data,
            &[NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE],
        )) == Some(NF_ACCEPT);
        if !addr_matches || !accepts {
            return false;
        }
        match offset {
            Some(at) if at == saddr_at => middle.is_empty(),
            Some(at) if at == daddr_at => is_related_established(middle),
            _ => false,
        }
    }
}

/// The network-header offset a `payload` expression loads `len` bytes from.
fn payload_offset(data: &[u8], len: usize) -> Option<u32> {
    let base = be32(find(data, NFTA_PAYLOAD_BASE))?;
    let loaded = be32(find(data, NFTA_PAYLOAD_LEN))?;
    (base == NFT_PAYLOAD_NETWORK_HEADER && usize::try_from(loaded).ok()? == len)
        .then(|| be32(find(data, NFTA_PAYLOAD_OFFSET)))?
}

fn cmp_is(data: &[u8], op: u32, value: &[u8]) -> bool {
    be32(find(data, NFTA_CMP_OP)) == Some(op)
        && expr_attr(data, &[NFTA_CMP_DATA, NFTA_DATA_VALUE]) == Some(value)
}

/// True for `ct state related,established` in either form iptables-nft may write.
fn is_related_established(exprs: &[(&str, &[u8])]) -> bool {
    let states = CT_RELATED_ESTABLISHED.to_ne_bytes();
    match exprs {
        [("match", m)] => {
            let name = find(m, NFTA_MATCH_NAME).and_then(nfnetlink::as_str);
            let rev = be32(find(m, NFTA_MATCH_REV));
            let Some(info) = find(m, NFTA_MATCH_INFO) else {
                return false;
            };
            name == Some("conntrack")
                && matches!(rev, Some(2 | 3))
                && u16_at(info, XT_CONNTRACK_MATCH_FLAGS) == Some(XT_CONNTRACK_STATE)
                && u16_at(info, XT_CONNTRACK_INVERT_FLAGS) == Some(0)
                && u16_at(info, XT_CONNTRACK_STATE_MASK) == Some(CT_RELATED_ESTABLISHED as u16)
        }
        [("ct", ct), ("bitwise", bw), ("cmp", cmp)] => {
            be32(find(ct, NFTA_CT_KEY)) == Some(NFT_CT_STATE)
                && expr_attr(bw, &[NFTA_BITWISE_MASK, NFTA_DATA_VALUE]) == Some(&states[..])
                && expr_attr(bw, &[NFTA_BITWISE_XOR, NFTA_DATA_VALUE]) == Some(&[0u8; 4][..])
                && cmp_is(cmp, NFT_CMP_NEQ, &[0; 4])
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Reading and deleting over netlink

/// Kernel: whether each chain exists, all asked in one datagram (one `GETCHAIN` each; a
/// missing table or chain answers ENOENT).
fn chains_exist(nl: &mut NfSocket, chains: &[(Family, &str, &str)]) -> Result<Vec<bool>> {
    if chains.is_empty() {
        return Ok(Vec::new());
    }
    let mut req = Vec::new();
    let mut seqs = Vec::with_capacity(chains.len());
    for (family, table, chain) in chains {
        let mut a = Vec::new();
        put_str(&mut a, NFTA_CHAIN_TABLE, table);
        put_str(&mut a, NFTA_CHAIN_NAME, chain);
        let seq = nl.next_seq();
        seqs.push(seq);
        nfnetlink::put_message(
            &mut req,
            SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN,
            0,
            seq,
            netlink::nfproto(*family),
            0,
            &a,
        );
    }
    nl.send(&req, "get chains")?;
    // The kernel answered every request inside that send: read what is queued, no waiting.
    let mut answers: Vec<Option<bool>> = vec![None; chains.len()];
    while answers.iter().any(Option::is_none) {
        let Some(n) = nl.try_recv("get chains")? else {
            return Err(Error::internal("nftables: a chain lookup was not answered"));
        };
        for r in nfnetlink::replies(nl.buf.get(..n).unwrap_or(&[]))? {
            let Some(i) = seqs.iter().position(|s| *s == r.seq) else {
                continue;
            };
            let answer = match r.errno() {
                None if r.msg_type == SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN => Some(true),
                None | Some(0) => None,
                // No such table or chain; or no such family in this kernel (IPv6 disabled).
                Some(e) if [libc::ENOENT, libc::EAFNOSUPPORT, libc::EOPNOTSUPP].contains(&e) => {
                    Some(false)
                }
                Some(e) => {
                    let (family, table, chain) =
                        chains.get(i).copied().unwrap_or((Family::Ip, "?", "?"));
                    return Err(Error::netlink(
                        format!("looking up chain {family} {table} {chain}"),
                        e,
                    ));
                }
            };
            if let (Some(slot), Some(a)) = (answers.get_mut(i), answer) {
                *slot = Some(a);
            }
        }
    }
    Ok(answers.into_iter().map(|a| a == Some(true)).collect())
}

/// Kernel: the rules of one chain, in order; `None` when the table or chain is missing. With
/// `hints`, only the rules whose attributes hold one of these byte strings are decoded (a
/// chain may hold hundreds of other containers' rules).
fn chain_rules(
    nl: &mut NfSocket,
    family: Family,
    table: &str,
    chain: &str,
    hints: &[Vec<u8>],
) -> Result<Option<Vec<Rule>>> {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_RULE_TABLE, table);
    put_str(&mut a, NFTA_RULE_CHAIN, chain);
    let what = format!("{family} {table} {chain}");
    let objects = netlink::dump_objects(nl, family, NFT_MSG_GETRULE, &a, &what)?;
    let hinted = |attrs: &[u8]| {
        hints.is_empty()
            || hints
                .iter()
                .any(|h| !h.is_empty() && attrs.windows(h.len()).any(|w| w == h.as_slice()))
    };
    Ok(objects.map(|rules| {
        rules
            .iter()
            .filter(|attrs| hinted(attrs))
            .filter_map(|attrs| Rule::parse(attrs))
            .filter(|r| r.chain == chain)
            .collect()
    }))
}

/// `DELRULE` of one rule by handle, or of every rule of the chain (no handle).
fn del_rule_msg(family: Family, table: &str, chain: &str, handle: Option<u64>) -> RawMsg {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_RULE_TABLE, table);
    put_str(&mut a, NFTA_RULE_CHAIN, chain);
    if let Some(h) = handle {
        put_attr(&mut a, NFTA_RULE_HANDLE, &h.to_be_bytes());
    }
    RawMsg {
        kind: NFT_MSG_DELRULE,
        flags: 0,
        family,
        attrs: a,
        deletes: true,
    }
}

fn del_chain_msg(family: Family, table: &str, chain: &str) -> RawMsg {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_CHAIN_TABLE, table);
    put_str(&mut a, NFTA_CHAIN_NAME, chain);
    RawMsg {
        kind: NFT_MSG_DELCHAIN,
        flags: 0,
        family,
        attrs: a,
        deletes: true,
    }
}

/// An iptables chain named after its owner, and the chains holding the jumps to it.
#[derive(Debug, Clone)]
struct OwnedChain {
    family: Family,
    table: &'static str,
    name: String,
    entries: &'static [&'static str],
}

/// A chain some of whose rules belong to the owner, and which: `pick` decides, among the
/// rules holding one of the byte strings `hints` (all rules when empty).
struct Scan<'p> {
    family: Family,
    table: &'static str,
    chain: &'static str,
    hints: Vec<Vec<u8>>,
    pick: Box<dyn Fn(&Rule) -> bool + 'p>,
}

/// What to remove: owner-named chains (with their jumps), and rules picked from chains.
#[derive(Default)]
struct Plan<'p> {
    owned: Vec<OwnedChain>,
    scans: Vec<Scan<'p>>,
}

/// What a removal deleted: rules deleted one by one (jumps, picked rules) and chains deleted
/// with the rules inside them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub rules: usize,
    pub chains: usize,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.rules == 0 && self.chains == 0
    }
}

/// The messages of one removal, and for each the owned chain it deletes, if it deletes one.
#[derive(Default)]
struct Messages {
    msgs: Vec<RawMsg>,
    deletes_chain: Vec<Option<(Family, String)>>,
    removed: Removed,
}

impl Messages {
    fn push(&mut self, msg: RawMsg, chain: Option<(Family, String)>) {
        self.msgs.push(msg);
        self.deletes_chain.push(chain);
    }
}

/// Kernel: the messages deleting what `plan` names, from what the kernel holds now. The owned
/// chains in `keep` are emptied, not deleted.
fn plan_messages(
    nl: &mut NfSocket,
    plan: &Plan<'_>,
    keep: &[(Family, String)],
) -> Result<Messages> {
    let probes: Vec<(Family, &str, &str)> = plan
        .owned
        .iter()
        .map(|o| (o.family, o.table, o.name.as_str()))
        .chain(plan.scans.iter().map(|s| (s.family, s.table, s.chain)))
        .collect();
    let exists = chains_exist(nl, &probes)?;
    let (owned_exist, scans_exist) = exists.split_at(plan.owned.len().min(exists.len()));
    let mut out = Messages::default();
    for (o, _) in plan.owned.iter().zip(owned_exist).filter(|(_, e)| **e) {
        for entry in o.entries {
            let hint = [o.name.as_bytes().to_vec()];
            let rules = chain_rules(nl, o.family, o.table, entry, &hint)?.unwrap_or_default();
            for r in rules.iter().filter(|r| r.jump_target() == Some(&o.name)) {
                out.push(del_rule_msg(o.family, o.table, entry, Some(r.handle)), None);
                out.removed.rules += 1;
            }
        }
        out.push(del_rule_msg(o.family, o.table, &o.name, None), None);
        let chain = (o.family, o.name.clone());
        if !keep.contains(&chain) {
            out.push(del_chain_msg(o.family, o.table, &o.name), Some(chain));
            out.removed.chains += 1;
        }
    }
    for (s, _) in plan.scans.iter().zip(scans_exist).filter(|(_, e)| **e) {
        let rules = chain_rules(nl, s.family, s.table, s.chain, &s.hints)?.unwrap_or_default();
        for r in rules.iter().filter(|r| (s.pick)(r)) {
            out.push(
                del_rule_msg(s.family, s.table, s.chain, Some(r.handle)),
                None,
            );
            out.removed.rules += 1;
        }
    }
    Ok(out)
}

/// Kernel: deletes what `plan` names in ONE transaction on `nl`. A transaction refused
/// because the rules changed meanwhile (ENOENT) is read and tried again; one refused because
/// an owned chain is still jumped to from a chain the reference does not use (EBUSY) is tried
/// again emptying that chain instead of deleting it (an empty chain returns at once).
fn remove_in_kernel(mut nl: NfSocket, plan: &Plan<'_>) -> Result<Removed> {
    let mut keep: Vec<(Family, String)> = Vec::new();
    let mut changed = 0;
    loop {
        let m = plan_messages(&mut nl, plan, &keep)?;
        if m.msgs.is_empty() {
            return Ok(m.removed);
        }
        match netlink::transact(&mut nl, &m.msgs)? {
            Outcome::Committed => {
                netlink::release(nl, &m.msgs, Outcome::Committed);
                return Ok(m.removed);
            }
            Outcome::Refused(e, Some(i)) if e == libc::EBUSY => {
                match m.deletes_chain.get(i).cloned().flatten() {
                    Some((family, chain)) if !keep.contains(&(family, chain.clone())) => {
                        log::info!(
                            "chain {family} nat {chain} is still jumped to from elsewhere: emptying it instead"
                        );
                        keep.push((family, chain));
                    }
                    _ => return Err(Error::netlink("deleting the reference plugins' rules", e)),
                }
            }
            Outcome::Refused(e, _) if e == libc::ENOENT && changed < 2 => {
                log::debug!("the rules changed while being read: reading them again");
                changed += 1;
            }
            Outcome::Refused(e, _) => {
                return Err(Error::netlink("deleting the reference plugins' rules", e));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// iptables-legacy

/// The x_tables tables in use in the calling thread's network namespace, by family
/// (`/proc/thread-self/net/ip_tables_names` and `ip6_tables_names`): where iptables-legacy
/// keeps rules, out of nf_tables' sight. Reading them changes nothing (asking x_tables for a
/// table would create it).
pub fn legacy_tables_in_use() -> Vec<(Family, String)> {
    let mut out = Vec::new();
    for (family, file) in [
        (Family::Ip, "ip_tables_names"),
        (Family::Ip6, "ip6_tables_names"),
    ] {
        let path = format!("/proc/thread-self/net/{file}");
        if let Ok(names) = std::fs::read_to_string(path) {
            out.extend(names.split_whitespace().map(|t| (family, t.to_string())));
        }
    }
    out
}

/// Logs, when iptables-legacy has `table` in this namespace, that the reference's rules
/// named in `what` could not be removed if the reference made them there.
fn warn_if_legacy(table: &str, what: &dyn Fn() -> String) {
    let families: Vec<&'static str> = legacy_tables_in_use()
        .into_iter()
        .filter(|(_, t)| t == table)
        .map(|(f, _)| {
            if f == Family::Ip {
                "iptables-legacy"
            } else {
                "ip6tables-legacy"
            }
        })
        .collect();
    if !families.is_empty() {
        log::warn!(
            "{} has a {table} table in this network namespace: {}, if the reference plugins made them there, \
             could not be removed (only nf_tables is read); check with `{} -t {table} -S`",
            families.join(" and "),
            what(),
            families.join("` and `"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// What the plugins call

/// An attachment, whose objects the reference names after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// Kernel: DEL's removal, never failing: what went is logged at info, a failure at warn.
fn del_logged(what: &str, owner: Owner<'_>, plan: &Plan<'_>) -> Removed {
    let res = NfSocket::open("nftables").and_then(|nl| remove_in_kernel(nl, plan));
    match res {
        Ok(r) if r.is_empty() => r,
        Ok(r) => {
            log::info!(
                "removed the reference plugins' {what} of {owner}: {} rule(s), {} chain(s)",
                r.rules,
                r.chains
            );
            r
        }
        Err(e) => {
            log::warn!("could not remove the reference plugins' {what} of {owner}: {e}");
            Removed::default()
        }
    }
}

/// Kernel: DEL of the reference bridge's ipMasq objects of `owner`: the nat chain
/// `CNI-<hash>` with its `POSTROUTING` jumps (IPv4 and IPv6), and the nftables backend's
/// `masq_checks` rules of this (network, ifname, container ID). Never fails; a missing table
/// or chain is nothing to do.
pub fn del_bridge_masq_in_kernel(owner: Owner<'_>) -> Removed {
    let chain = chain_name(MASQ_CHAIN_PREFIX, owner.network, owner.container_id);
    let hash = nft_masq_owner_hash(owner.network, owner.ifname, owner.container_id);
    let plan = Plan {
        owned: IP_FAMILIES
            .iter()
            .map(|f| OwnedChain {
                family: *f,
                table: NAT,
                name: chain.clone(),
                entries: MASQ_ENTRIES,
            })
            .collect(),
        scans: vec![Scan {
            family: Family::Inet,
            table: NFT_MASQ_TABLE,
            chain: NFT_MASQ_CHAIN,
            hints: vec![hash.as_bytes().to_vec()],
            pick: Box::new(move |r: &Rule| r.comment().is_some_and(|c| c.starts_with(&hash))),
        }],
    };
    let removed = del_logged("masquerade rules", owner, &plan);
    warn_if_legacy(NAT, &|| {
        format!("the masquerade chain {chain} of {owner} and its POSTROUTING jumps")
    });
    removed
}

/// Kernel: DEL of the reference portmap's objects of `owner`: the nat chains `CNI-DN-<hash>`
/// (and the older `CNI-SN-<hash>`) with their jumps (IPv4 and IPv6), and the nftables
/// backend's rules commented with the container ID in `ip`/`ip6 cni_hostport`. Never fails.
pub fn del_portmap_in_kernel(owner: Owner<'_>) -> Removed {
    let dnat = chain_name(DNAT_CHAIN_PREFIX, owner.network, owner.container_id);
    let snat = chain_name(SNAT_CHAIN_PREFIX, owner.network, owner.container_id);
    let mut plan = Plan::default();
    for family in IP_FAMILIES {
        for (name, entries) in [(&dnat, DNAT_ENTRIES), (&snat, SNAT_ENTRIES)] {
            plan.owned.push(OwnedChain {
                family,
                table: NAT,
                name: name.clone(),
                entries,
            });
        }
        for chain in NFT_HOSTPORT_CHAINS {
            let cid = owner.container_id.to_string();
            plan.scans.push(Scan {
                family,
                table: NFT_HOSTPORT_TABLE,
                chain,
                hints: vec![cid.as_bytes().to_vec()],
                pick: Box::new(move |r: &Rule| r.comment() == Some(cid.as_str())),
            });
        }
    }
    let removed = del_logged("port mappings", owner, &plan);
    warn_if_legacy(NAT, &|| {
        format!("the DNAT chain {dnat} of {owner} and its {HOSTPORT_DNAT} jumps")
    });
    removed
}

/// Kernel: DEL of the reference firewall's accepts for `addrs` in `CNI-FORWARD` (filter table
/// of each address's family). Never fails.
///
/// These rules name no owner, only the address, so they are removed on DEL only, for the
/// addresses of the attachment's own prevResult, and only in the two exact shapes the
/// reference writes: what the reference's own DEL removes. The risk is the reference's too: a
/// live attachment holding the same address (another network with an overlapping subnet, or
/// the address handed out again before a late DEL) whose accepts the reference made loses
/// them (one rule per address exists, whoever asked for it). GC never touches them: it cannot
/// tell a stale address from a live one.
pub fn del_firewall_accepts_in_kernel(owner: Owner<'_>, addrs: &[IpAddr]) -> Removed {
    let mut plan = Plan::default();
    for family in IP_FAMILIES {
        let mine: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == (family == Family::Ip))
            .collect();
        if mine.is_empty() {
            continue;
        }
        plan.scans.push(Scan {
            family,
            table: FILTER,
            chain: FIREWALL_CHAIN,
            hints: mine
                .iter()
                .map(|a| match a {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                })
                .collect(),
            pick: Box::new(move |r: &Rule| mine.iter().any(|a| r.is_firewall_accept_for(*a))),
        });
    }
    if plan.scans.is_empty() {
        return Removed::default();
    }
    let removed = del_logged("forwarding accepts", owner, &plan);
    warn_if_legacy(FILTER, &|| {
        let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        format!("the {FIREWALL_CHAIN} accepts of {}", list.join(", "))
    });
    removed
}

/// Kernel: the owner-named chains of `network` whose owner is not valid, from the owners
/// recorded in the comments of the jumps in the first of `entries` (both families). A jump counts only when
/// its target is the chain its comment's owner names.
fn stale_owned_chains(
    nl: &mut NfSocket,
    entries: &'static [&'static str],
    comment_head: &str,
    prefix: &str,
    network: &str,
    valid: &[Attachment],
) -> Result<Vec<OwnedChain>> {
    let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let mut stale: Vec<OwnedChain> = Vec::new();
    let Some(entry) = entries.first().copied() else {
        return Ok(stale);
    };
    let exists = chains_exist(nl, &[(Family::Ip, NAT, entry), (Family::Ip6, NAT, entry)])?;
    for (family, _) in IP_FAMILIES.iter().zip(exists).filter(|(_, e)| *e) {
        let hint = [format!("name: \"{network}\" id: \"").into_bytes()];
        for r in chain_rules(nl, *family, NAT, entry, &hint)?.unwrap_or_default() {
            let (Some(target), Some(comment)) = (r.jump_target(), r.comment()) else {
                continue;
            };
            let Some((net, cid)) = parse_owner_comment(comment, comment_head) else {
                continue;
            };
            let owned = net == network
                && !valid_ids.contains(cid)
                && target == chain_name(prefix, net, cid);
            if owned
                && !stale
                    .iter()
                    .any(|o| o.family == *family && o.name == target)
            {
                stale.push(OwnedChain {
                    family: *family,
                    table: NAT,
                    name: target.to_string(),
                    entries,
                });
            }
        }
    }
    Ok(stale)
}

/// Kernel: GC of the reference bridge's ipMasq objects of `network` whose owner is not in
/// `valid` (an empty list: none is valid): masquerade chains found through their commented
/// `POSTROUTING` jumps, and the nftables backend's `masq_checks` rules of this network.
/// Objects of other networks are left alone.
pub fn gc_bridge_masq_in_kernel(network: &str, valid: &[Attachment]) -> Result<Removed> {
    let mut nl = NfSocket::open("nftables")?;
    let owned = stale_owned_chains(&mut nl, MASQ_ENTRIES, "", MASQ_CHAIN_PREFIX, network, valid)?;
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| nft_masq_owner_hash(network, &a.ifname, &a.container_id))
        .collect();
    let of_network = format!("{}-", short_hash(network));
    let plan = Plan {
        owned,
        scans: vec![Scan {
            family: Family::Inet,
            table: NFT_MASQ_TABLE,
            chain: NFT_MASQ_CHAIN,
            hints: vec![of_network.as_bytes().to_vec()],
            pick: Box::new(move |r: &Rule| {
                r.comment().is_some_and(|c| {
                    c.starts_with(&of_network)
                        && c.get(..of_network.len() + 16)
                            .is_some_and(|owner| !keep.contains(owner))
                })
            }),
        }],
    };
    let removed = remove_in_kernel(nl, &plan)
        .map_err(|e| e.context("garbage-collecting the reference plugins' masquerade rules"))?;
    warn_if_legacy(NAT, &|| {
        format!("the masquerade chains of stale attachments of network {network}")
    });
    Ok(removed)
}

/// Kernel: GC of the reference portmap's `CNI-DN-<hash>` chains of `network` whose owner is not
/// in `valid`, found through their commented `CNI-HOSTPORT-DNAT` jumps. The nftables
/// backend's rules are left to DEL: their comment names no network.
pub fn gc_portmap_in_kernel(network: &str, valid: &[Attachment]) -> Result<Removed> {
    let mut nl = NfSocket::open("nftables")?;
    let owned = stale_owned_chains(
        &mut nl,
        DNAT_ENTRIES,
        "dnat ",
        DNAT_CHAIN_PREFIX,
        network,
        valid,
    )?;
    let plan = Plan {
        owned,
        scans: Vec::new(),
    };
    let removed = remove_in_kernel(nl, &plan)
        .map_err(|e| e.context("garbage-collecting the reference plugins' port mappings"))?;
    warn_if_legacy(NAT, &|| {
        format!("the DNAT chains of stale attachments of network {network}")
    });
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::tests::{TestNs, have_root};
    use std::process::Command;

    #[test]
    fn names_and_comments_are_the_reference_ones() {
        // Read back from what the reference plugins 1.1.1 made for this network and container.
        let (net, cid) = ("swapx", "cnitool-90bc79f3ee2e6cd6d503");
        assert_eq!(
            chain_name(MASQ_CHAIN_PREFIX, net, cid),
            "CNI-9d0b3c56fd57bd1bedf9d679"
        );
        assert_eq!(
            chain_name(DNAT_CHAIN_PREFIX, net, cid),
            "CNI-DN-9d0b3c56fd57bd1bedf9d"
        );
        assert_eq!(
            chain_name(SNAT_CHAIN_PREFIX, net, cid),
            "CNI-SN-9d0b3c56fd57bd1bedf9d"
        );
        assert_eq!(
            masq_comment(net, cid),
            r#"name: "swapx" id: "cnitool-90bc79f3ee2e6cd6d503""#
        );
        assert_eq!(
            dnat_comment(net, cid),
            r#"dnat name: "swapx" id: "cnitool-90bc79f3ee2e6cd6d503""#
        );
        // `printf mynet | sha512sum`, `printf eth0:cid1 | sha512sum`.
        assert_eq!(
            nft_masq_owner_hash("mynet", "eth0", "cid1"),
            "d23676b4f2d9fe04-0b65a318f52e521b"
        );
        assert_eq!(go_quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn owner_comments_parse() {
        let c = masq_comment("net-1", "abc");
        assert_eq!(parse_owner_comment(&c, ""), Some(("net-1", "abc")));
        assert_eq!(parse_owner_comment(&c, "dnat "), None);
        let d = dnat_comment("net-1", "abc");
        assert_eq!(parse_owner_comment(&d, "dnat "), Some(("net-1", "abc")));
        assert_eq!(parse_owner_comment(&d, ""), None);
        // Cut short by the reference (255 characters): no owner.
        assert_eq!(
            parse_owner_comment(r#"dnat name: "n" id: "abc..."#, "dnat "),
            None
        );
        assert_eq!(parse_owner_comment("CNI portfwd masquerade mark", ""), None);
        assert_eq!(parse_owner_comment(r#"name: "" id: "x""#, ""), None);
    }

    // -----------------------------------------------------------------------------------
    // Against the kernel (root), in throwaway namespaces, with the reference's objects made
    // by iptables-nft and nft as the reference makes them.

    fn tool(ns: &TestNs, program: &str, args: &[&str]) -> String {
        let out = ns.run(|| Command::new(program).args(args).output());
        let out = out.unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-nft` (or `ip6tables-nft`) with the words of `line`, where the word `%C` stands
    /// for `comment` (which may hold spaces and quotes).
    fn ipt(ns: &TestNs, v6: bool, line: &str, comment: &str) {
        let args: Vec<&str> = line
            .split_whitespace()
            .map(|w| if w == "%C" { comment } else { w })
            .collect();
        tool(ns, if v6 { "ip6tables-nft" } else { "iptables-nft" }, &args);
    }

    /// Both families' `iptables-nft-save`.
    fn saved(ns: &TestNs) -> String {
        tool(ns, "iptables-nft-save", &[]) + &tool(ns, "ip6tables-nft-save", &[])
    }

    /// One attachment as the reference (iptables backend) sets it up.
    struct RefAttachment {
        net: &'static str,
        cid: &'static str,
        v4: &'static str,
        v6: &'static str,
        port: u16,
    }

    impl RefAttachment {
        /// The shared chains, once per namespace (with an administrator's rule in CNI-ADMIN).
        fn shared(ns: &TestNs) {
            for v6 in [false, true] {
                for line in [
                    "-t nat -N CNI-HOSTPORT-DNAT",
                    "-t nat -N CNI-HOSTPORT-SETMARK",
                    "-t nat -A CNI-HOSTPORT-SETMARK -m comment --comment %C -j MARK --set-xmark 0x2000/0x2000",
                    "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                    "-t nat -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                    "-N CNI-FORWARD",
                    "-N CNI-ADMIN",
                    "-A CNI-ADMIN -p tcp --dport 22 -j ACCEPT",
                ] {
                    ipt(ns, v6, line, "CNI portfwd masquerade mark");
                }
                ipt(
                    ns,
                    v6,
                    "-I FORWARD 1 -m comment --comment %C -j CNI-FORWARD",
                    "CNI firewall plugin rules",
                );
                ipt(
                    ns,
                    v6,
                    "-I CNI-FORWARD 1 -m comment --comment %C -j CNI-ADMIN",
                    "CNI firewall plugin admin overrides",
                );
            }
        }

        /// The attachment's chains, jumps and accepts, in the order the reference adds them.
        fn make(&self, ns: &TestNs) {
            let masq = chain_name(MASQ_CHAIN_PREFIX, self.net, self.cid);
            let dnat = chain_name(DNAT_CHAIN_PREFIX, self.net, self.cid);
            let port = self.port;
            for v6 in [false, true] {
                let (ip, subnet, mcast, to, host) = if v6 {
                    let ip = self.v6;
                    (
                        ip,
                        "fd00:5::/64",
                        "ff00::/8",
                        format!("[{ip}]:80"),
                        format!("{ip}/128"),
                    )
                } else {
                    let ip = self.v4;
                    (
                        ip,
                        "10.5.0.0/24",
                        "224.0.0.0/4",
                        format!("{ip}:80"),
                        format!("{ip}/32"),
                    )
                };
                let c = masq_comment(self.net, self.cid);
                ipt(ns, v6, &format!("-t nat -N {masq}"), "");
                ipt(
                    ns,
                    v6,
                    &format!("-t nat -A {masq} -d {subnet} -j ACCEPT -m comment --comment %C"),
                    &c,
                );
                ipt(
                    ns,
                    v6,
                    &format!("-t nat -A {masq} ! -d {mcast} -j MASQUERADE -m comment --comment %C"),
                    &c,
                );
                ipt(
                    ns,
                    v6,
                    &format!("-t nat -A POSTROUTING -s {ip} -j {masq} -m comment --comment %C"),
                    &c,
                );
                let c = dnat_comment(self.net, self.cid);
                ipt(ns, v6, &format!("-t nat -N {dnat}"), "");
                ipt(
                    ns,
                    v6,
                    &format!(
                        "-t nat -A {dnat} -p tcp --dport {port} -s {subnet} -j CNI-HOSTPORT-SETMARK"
                    ),
                    "",
                );
                ipt(
                    ns,
                    v6,
                    &format!(
                        "-t nat -A {dnat} -p tcp --dport {port} -j DNAT --to-destination {to}"
                    ),
                    "",
                );
                ipt(
                    ns,
                    v6,
                    &format!(
                        "-t nat -A CNI-HOSTPORT-DNAT -m comment --comment %C -m multiport -p tcp --destination-ports {port} -j {dnat}"
                    ),
                    &c,
                );
                ipt(
                    ns,
                    v6,
                    &format!(
                        "-A CNI-FORWARD -d {host} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                    ),
                    "",
                );
                ipt(ns, v6, &format!("-A CNI-FORWARD -s {host} -j ACCEPT"), "");
            }
        }

        fn owner(&self) -> Owner<'static> {
            Owner {
                network: self.net,
                container_id: self.cid,
                ifname: "eth0",
            }
        }

        /// How many lines of `saved` name this attachment's chains or addresses.
        fn lines_in(&self, saved: &str) -> usize {
            let masq = chain_name(MASQ_CHAIN_PREFIX, self.net, self.cid);
            let dnat = chain_name(DNAT_CHAIN_PREFIX, self.net, self.cid);
            saved
                .lines()
                .filter(|l| {
                    l.contains(&masq)
                        || l.contains(&dnat)
                        || l.contains(&format!(" {}/", self.v4))
                        || l.contains(&format!(" {}/", self.v6))
                        || l.contains(&format!("{}:80", self.v4))
                        || l.contains(&format!("[{}]:80", self.v6))
                })
                .count()
        }
    }

    /// Per family: the masquerade chain (declaration, 2 rules, 1 jump), the DNAT chain
    /// (declaration, 2 rules, 1 jump) and 2 firewall accepts.
    const LINES_PER_ATTACHMENT: usize = 2 * (4 + 4 + 2);

    const A: RefAttachment = RefAttachment {
        net: "refnet",
        cid: "ctr-a",
        v4: "10.5.0.2",
        v6: "fd00:5::2",
        port: 8080,
    };
    const B: RefAttachment = RefAttachment {
        net: "refnet",
        cid: "ctr-b",
        v4: "10.5.0.3",
        v6: "fd00:5::3",
        port: 8081,
    };
    /// Container A, also attached to another network (same container ID).
    const A_ELSEWHERE: RefAttachment = RefAttachment {
        net: "othernet",
        cid: "ctr-a",
        v4: "10.5.0.9",
        v6: "fd00:5::9",
        port: 8089,
    };

    fn ns_with_reference_rules(attachments: &[&RefAttachment]) -> Option<TestNs> {
        if !have_root() {
            return None;
        }
        let ns = TestNs::new();
        RefAttachment::shared(&ns);
        for a in attachments {
            a.make(&ns);
        }
        let s = saved(&ns);
        for a in attachments {
            assert_eq!(a.lines_in(&s), LINES_PER_ATTACHMENT, "{s}");
        }
        Some(ns)
    }

    fn addrs(a: &RefAttachment) -> Vec<IpAddr> {
        vec![a.v4.parse().unwrap(), a.v6.parse().unwrap()]
    }

    #[test]
    fn del_removes_one_attachments_iptables_objects() {
        let Some(ns) = ns_with_reference_rules(&[&A, &B]) else {
            return;
        };
        let before = saved(&ns);
        let masq = ns.run(|| del_bridge_masq_in_kernel(A.owner()));
        assert_eq!(
            masq,
            Removed {
                rules: 2,
                chains: 2
            }
        );
        let portmap = ns.run(|| del_portmap_in_kernel(A.owner()));
        assert_eq!(
            portmap,
            Removed {
                rules: 2,
                chains: 2
            }
        );
        let firewall = ns.run(|| del_firewall_accepts_in_kernel(A.owner(), &addrs(&A)));
        assert_eq!(
            firewall,
            Removed {
                rules: 4,
                chains: 0
            }
        );
        let after = saved(&ns);
        assert_eq!(A.lines_in(&after), 0, "{after}");
        assert_eq!(B.lines_in(&after), LINES_PER_ATTACHMENT, "{after}");
        // Everything else is as it was: the shared chains, their jumps, the admin's rule.
        let others = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with(':') || l.contains("HOSTPORT"))
                .filter(|l| A.lines_in(l) == 0)
                .map(|l| l.split(" [").next().unwrap_or(l).to_string())
                .collect()
        };
        assert_eq!(others(&before), others(&after));
        // Again: nothing left to do.
        assert!(ns.run(|| del_bridge_masq_in_kernel(A.owner())).is_empty());
        assert!(ns.run(|| del_portmap_in_kernel(A.owner())).is_empty());
        assert!(
            ns.run(|| del_firewall_accepts_in_kernel(A.owner(), &addrs(&A)))
                .is_empty()
        );
        assert_eq!(saved(&ns), after);
    }

    #[test]
    fn del_on_a_host_without_reference_tables_finds_nothing() {
        if !have_root() {
            return;
        }
        let ns = TestNs::new();
        assert!(ns.run(|| del_bridge_masq_in_kernel(A.owner())).is_empty());
        assert!(ns.run(|| del_portmap_in_kernel(A.owner())).is_empty());
        assert!(
            ns.run(|| del_firewall_accepts_in_kernel(A.owner(), &addrs(&A)))
                .is_empty()
        );
        let gc = ns.run(|| gc_bridge_masq_in_kernel("refnet", &[])).unwrap();
        assert!(gc.is_empty());
        assert!(
            ns.run(|| gc_portmap_in_kernel("refnet", &[]))
                .unwrap()
                .is_empty()
        );
        // Nothing was created either.
        let ruleset = tool(&ns, "nft", &["list", "ruleset"]);
        assert!(ruleset.trim().is_empty(), "{ruleset}");
    }

    #[test]
    fn firewall_accepts_of_other_shapes_stay() {
        let Some(ns) = ns_with_reference_rules(&[&A]) else {
            return;
        };
        // Same address, other rules: another state, another match, a prefix, another verdict.
        for (v6, ip) in [(false, A.v4), (true, A.v6)] {
            let (host, wide) = if v6 {
                (format!("{ip}/128"), format!("{ip}/64"))
            } else {
                (format!("{ip}/32"), format!("{ip}/24"))
            };
            for line in [
                format!("-A CNI-FORWARD -d {host} -m conntrack --ctstate NEW -j ACCEPT"),
                format!("-A CNI-FORWARD -s {host} -p tcp -j ACCEPT"),
                format!("-A CNI-FORWARD -s {wide} -j ACCEPT"),
                format!("-A CNI-FORWARD -s {host} -j DROP"),
            ] {
                ipt(&ns, v6, &line, "");
            }
        }
        // The native form nft writes for the same accept is the reference's too.
        tool(
            &ns,
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "filter",
                FIREWALL_CHAIN,
                "ip",
                "daddr",
                A.v4,
                "ct",
                "state",
                "related,established",
                "counter",
                "accept",
            ],
        );
        let removed = ns.run(|| del_firewall_accepts_in_kernel(A.owner(), &addrs(&A)));
        assert_eq!(removed.rules, 5);
        let after = saved(&ns);
        let fw: Vec<&str> = after
            .lines()
            .filter(|l| l.starts_with(&format!("-A {FIREWALL_CHAIN}")))
            .collect();
        assert_eq!(fw.len(), 2 * 5, "{after}");
    }

    #[test]
    fn a_chain_jumped_to_from_elsewhere_is_emptied_not_deleted() {
        let Some(ns) = ns_with_reference_rules(&[&A]) else {
            return;
        };
        let masq = chain_name(MASQ_CHAIN_PREFIX, A.net, A.cid);
        // An administrator's chain (unhooked: MASQUERADE only runs in postrouting).
        ipt(&ns, false, "-t nat -N ADMIN-NAT", "");
        ipt(&ns, false, &format!("-t nat -A ADMIN-NAT -j {masq}"), "");
        let removed = ns.run(|| del_bridge_masq_in_kernel(A.owner()));
        assert_eq!(
            removed,
            Removed {
                rules: 2,
                chains: 1
            }
        );
        let after = saved(&ns);
        let left: Vec<&str> = after.lines().filter(|l| l.contains(&masq)).collect();
        assert_eq!(
            left,
            [
                format!(":{masq} - [0:0]"),
                format!("-A ADMIN-NAT -j {masq}")
            ],
            "{after}"
        );
    }

    #[test]
    fn gc_removes_only_stale_owners_of_its_network() {
        let Some(ns) = ns_with_reference_rules(&[&A, &B, &A_ELSEWHERE]) else {
            return;
        };
        let valid = [Attachment {
            container_id: B.cid.into(),
            ifname: "eth0".into(),
        }];
        let masq = ns
            .run(|| gc_bridge_masq_in_kernel("refnet", &valid))
            .unwrap();
        assert_eq!(
            masq,
            Removed {
                rules: 2,
                chains: 2
            }
        );
        let portmap = ns.run(|| gc_portmap_in_kernel("refnet", &valid)).unwrap();
        assert_eq!(
            portmap,
            Removed {
                rules: 2,
                chains: 2
            }
        );
        let after = saved(&ns);
        // A's chains in refnet are gone; its firewall accepts stay (GC never takes those).
        assert_eq!(A.lines_in(&after), 4, "{after}");
        assert_eq!(B.lines_in(&after), LINES_PER_ATTACHMENT, "{after}");
        assert_eq!(
            A_ELSEWHERE.lines_in(&after),
            LINES_PER_ATTACHMENT,
            "{after}"
        );
        // An empty list: nothing of refnet is valid any more; othernet is untouched.
        ns.run(|| gc_bridge_masq_in_kernel("refnet", &[])).unwrap();
        ns.run(|| gc_portmap_in_kernel("refnet", &[])).unwrap();
        let after = saved(&ns);
        assert_eq!(B.lines_in(&after), 4, "{after}");
        assert_eq!(
            A_ELSEWHERE.lines_in(&after),
            LINES_PER_ATTACHMENT,
            "{after}"
        );
    }

    /// The nftables backend's objects for `(cid, v4, v6, port)` of network `net`, as the
    /// reference writes them (comments included).
    fn nft_backend_script(net: &str, owners: &[(&str, &str, &str, u16)]) -> String {
        let mut masq = String::new();
        let mut hostports = [String::new(), String::new()];
        let mut masquerading = [String::new(), String::new()];
        for (cid, v4, v6, port) in owners {
            let comment = format!(
                "{}, net: {net}, if: eth0, id: {cid}",
                nft_masq_owner_hash(net, "eth0", cid)
            );
            masq += &format!(
                "add rule inet {NFT_MASQ_TABLE} {NFT_MASQ_CHAIN} ip saddr {v4} ip daddr != 10.5.0.0/24 masquerade comment \"{comment}\"\n\
                 add rule inet {NFT_MASQ_TABLE} {NFT_MASQ_CHAIN} ip6 saddr {v6} ip6 daddr != fd00:5::/64 masquerade comment \"{comment}\"\n"
            );
            for (i, (fam, addr, to)) in [
                ("ip", v4, format!("{v4}:80")),
                ("ip6", v6, format!("[{v6}]:80")),
            ]
            .into_iter()
            .enumerate()
            {
                hostports[i] += &format!(
                    "add rule {fam} {NFT_HOSTPORT_TABLE} hostports tcp dport {port} dnat to {to} comment \"{cid}\"\n"
                );
                masquerading[i] += &format!(
                    "add rule {fam} {NFT_HOSTPORT_TABLE} masquerading {fam} saddr {addr} {fam} daddr {addr} masquerade comment \"{cid}\"\n"
                );
                if fam == "ip" {
                    masquerading[i] += &format!(
                        "add rule ip {NFT_HOSTPORT_TABLE} masquerading ip saddr 127.0.0.1 ip daddr {addr} masquerade comment \"{cid}\"\n"
                    );
                }
            }
        }
        let mut s = format!(
            "add table inet {NFT_MASQ_TABLE}\n\
             add chain inet {NFT_MASQ_TABLE} {NFT_MASQ_CHAIN}\n\
             add chain inet {NFT_MASQ_TABLE} postrouting {{ type nat hook postrouting priority srcnat; }}\n\
             add rule inet {NFT_MASQ_TABLE} postrouting ip daddr 224.0.0.0/4 return\n\
             add rule inet {NFT_MASQ_TABLE} postrouting ip6 daddr ff00::/8 return\n\
             add rule inet {NFT_MASQ_TABLE} postrouting goto {NFT_MASQ_CHAIN}\n"
        );
        s += &masq;
        for (i, fam) in ["ip", "ip6"].into_iter().enumerate() {
            s += &format!(
                "add table {fam} {NFT_HOSTPORT_TABLE}\n\
                 add chain {fam} {NFT_HOSTPORT_TABLE} hostports\n\
                 add chain {fam} {NFT_HOSTPORT_TABLE} hostip_hostports\n\
                 add chain {fam} {NFT_HOSTPORT_TABLE} hostports_all\n\
                 add rule {fam} {NFT_HOSTPORT_TABLE} hostports_all jump hostip_hostports\n\
                 add rule {fam} {NFT_HOSTPORT_TABLE} hostports_all jump hostports\n\
                 add chain {fam} {NFT_HOSTPORT_TABLE} prerouting {{ type nat hook prerouting priority dstnat; }}\n\
                 add rule {fam} {NFT_HOSTPORT_TABLE} prerouting fib daddr type local jump hostports_all\n\
                 add chain {fam} {NFT_HOSTPORT_TABLE} output {{ type nat hook output priority -100; }}\n\
                 add rule {fam} {NFT_HOSTPORT_TABLE} output fib daddr type local jump hostports_all\n\
                 add chain {fam} {NFT_HOSTPORT_TABLE} masquerading {{ type nat hook postrouting priority srcnat; }}\n"
            );
            s += &hostports[i];
            s += &masquerading[i];
        }
        s
    }

    /// The comments of the rules of `family table chain`.
    fn comments(ns: &TestNs, family: Family, table: &str, chain: &str) -> Vec<String> {
        ns.run(|| {
            let mut nl = NfSocket::open("nftables").unwrap();
            chain_rules(&mut nl, family, table, chain, &[]).unwrap()
        })
        .unwrap_or_default()
        .iter()
        .map(|r| r.comment().unwrap_or("").to_string())
        .collect()
    }

    #[test]
    fn nft_backend_objects_go_by_owner() {
        if !have_root() {
            return;
        }
        let ns = TestNs::new();
        let script =
            nft_backend_script(
                "refnet",
                &[
                    ("ctr-a", "10.5.0.2", "fd00:5::2", 8080),
                    ("ctr-b", "10.5.0.3", "fd00:5::3", 8081),
                ],
            ) + &nft_backend_script("othernet", &[("ctr-c", "10.5.0.4", "fd00:5::4", 8082)])
                .lines()
                .filter(|l| l.contains("comment"))
                .map(|l| format!("{l}\n"))
                .collect::<String>();
        let out = ns
            .run(|| crate::nft::apply_text_to_kernel(&script))
            .unwrap();
        assert_eq!(out, Ok(()));
        let masq = |ns: &TestNs| comments(ns, Family::Inet, NFT_MASQ_TABLE, NFT_MASQ_CHAIN);
        let hostports = |ns: &TestNs, f| {
            NFT_HOSTPORT_CHAINS
                .iter()
                .flat_map(|c| comments(ns, f, NFT_HOSTPORT_TABLE, c))
                .collect::<Vec<_>>()
        };
        assert_eq!(masq(&ns).len(), 6);
        assert_eq!(hostports(&ns, Family::Ip).len(), 9);
        assert_eq!(hostports(&ns, Family::Ip6).len(), 6);

        // DEL of ctr-a: its rules only. An ifname it does not have matches nothing.
        let other_if = Owner {
            ifname: "eth1",
            ..A.owner()
        };
        assert!(ns.run(|| del_bridge_masq_in_kernel(other_if)).is_empty());
        assert_eq!(ns.run(|| del_bridge_masq_in_kernel(A.owner())).rules, 2);
        assert_eq!(ns.run(|| del_portmap_in_kernel(A.owner())).rules, 5);
        let left = masq(&ns);
        assert_eq!(left.len(), 4);
        assert!(left.iter().all(|c| !c.ends_with("id: ctr-a")), "{left:?}");
        for f in IP_FAMILIES {
            assert!(hostports(&ns, f).iter().all(|c| c != "ctr-a"));
        }
        assert_eq!(hostports(&ns, Family::Ip).len(), 6);

        // GC of refnet with ctr-b valid on another ifname: ctr-b's masquerade goes (its owner
        // is (network, ifname, container)); the hostport rules stay (they name no network);
        // othernet's rules stay.
        let valid = [Attachment {
            container_id: "ctr-b".into(),
            ifname: "eth1".into(),
        }];
        let gc = ns
            .run(|| gc_bridge_masq_in_kernel("refnet", &valid))
            .unwrap();
        assert_eq!(
            gc,
            Removed {
                rules: 2,
                chains: 0
            }
        );
        assert!(
            ns.run(|| gc_portmap_in_kernel("refnet", &[]))
                .unwrap()
                .is_empty()
        );
        let left = masq(&ns);
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|c| c.ends_with("id: ctr-c")), "{left:?}");
        assert_eq!(hostports(&ns, Family::Ip).len(), 6);
        // The base chains and their rules are shared: they stay.
        let postrouting = comments(&ns, Family::Inet, NFT_MASQ_TABLE, "postrouting");
        assert_eq!(postrouting.len(), 3);
    }

    #[test]
    fn legacy_tables_are_seen() {
        if !have_root() {
            return;
        }
        let ns = TestNs::new();
        assert!(ns.run(legacy_tables_in_use).is_empty());
        tool(&ns, "iptables-legacy", &["-t", "nat", "-N", "CNI-legacy"]);
        let tables = ns.run(legacy_tables_in_use);
        assert!(
            tables.contains(&(Family::Ip, "nat".to_string())),
            "{tables:?}"
        );
        // Another namespace has none.
        assert!(TestNs::new().run(legacy_tables_in_use).is_empty());
    }
}
