//! nf_tables spoken over netlink: transactions of per-attachment set elements (and, from
//! `setup`, of whole fixed rulesets), and the rules of one chain read back. No
//! `nft` process.
//!
//! Starting `nft` costs 10–20 ms per call on a busy node (dynamic loading, a ruleset cache
//! fetch) and its memory (4–5 MiB) counts against the plugin's; ADD and DEL only change set
//! elements of fixed rules, which are small to encode here. Listings for CHECK, GC and DEL
//! without a prevResult still go through `nft` (see [`super::apply_to_kernel`]).
//!
//! Element keys are encoded from the same JSON values the `nft` path takes, using the set's
//! declared types: a concatenation pads each field to 4 bytes, an interval set with a
//! concatenated key (nft's "pipapo") takes a start and an end key.

use super::Family;
use crate::error::{Error, Result};
use crate::nfnetlink::{
    self, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLMSG_ERROR, NfSocket,
    find, put_attr, put_nested, put_str,
};
use ipnetwork::IpNetwork;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Mutex;

/// `NFNL_SUBSYS_NFTABLES`.
pub(super) const SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

// enum nf_tables_msg_types
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;

// enum nft_chain_attributes
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
// enum nft_rule_attributes
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
// enum nft_list_attributes / nft_expr_attributes
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
// enum nft_set_elem_list_attributes
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_set_elem_attributes
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
// enum nft_data_attributes
pub const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
// enum nft_verdict_attributes
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
// Verdict codes, as the u32 of NFTA_VERDICT_CODE (the kernel's are signed).
pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;
pub(super) const NFT_JUMP: u32 = -3i32 as u32;
pub(super) const NFT_GOTO: u32 = -4i32 as u32;
pub(super) const NFT_RETURN: u32 = -5i32 as u32;
// Expression attributes (enum nft_{immediate,payload,cmp,ct,bitwise}_attributes) and values.
pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;
pub(super) const NFTA_CT_DREG: u16 = 1;
pub(super) const NFTA_CT_KEY: u16 = 2;
pub(super) const NFT_CT_STATE: u32 = 0;
pub(super) const NFTA_BITWISE_SREG: u16 = 1;
pub(super) const NFTA_BITWISE_DREG: u16 = 2;
pub(super) const NFTA_BITWISE_LEN: u16 = 3;
pub(super) const NFTA_BITWISE_MASK: u16 = 4;
pub(super) const NFTA_BITWISE_XOR: u16 = 5;
/// libnftnl's user-data TLV type for a comment (rules and set elements alike).
const UDATA_COMMENT: u8 = 0;

/// Type names nft gives `ifname` keys: a NUL-padded `IFNAMSIZ` array.
const IFNAMSIZ: usize = 16;

pub(crate) fn nfproto(family: Family) -> u8 {
    match family {
        Family::Inet => 1,
        Family::Ip => 2,
        Family::Arp => 3,
        Family::Netdev => 5,
        Family::Bridge => 7,
        Family::Ip6 => 10,
    }
}

// ---------------------------------------------------------------------------------------
// Element keys

/// A key encoded for the kernel: the start, and for interval sets the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedKey {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

/// One field of a key: `(start, end)` bytes of datatype `ty`, unpadded. `None` when the
/// value or the type is not one this encoder knows (the caller then uses `nft`).
fn encode_field(ty: &str, v: &Value, interval: bool) -> Option<(Vec<u8>, Vec<u8>)> {
    let same = |b: Vec<u8>| Some((b.clone(), b));
    match ty {
        "ipv4_addr" | "ipv6_addr" => {
            let v6 = ty == "ipv6_addr";
            let (addr, len) = match v {
                Value::String(s) => (s.parse::<IpAddr>().ok()?, None),
                Value::Object(_) if interval => {
                    let p = v.get("prefix")?;
                    let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                    (p.get("addr")?.as_str()?.parse::<IpAddr>().ok()?, Some(len))
                }
                _ => return None,
            };
            if addr.is_ipv6() != v6 {
                return None;
            }
            match len {
                None => same(ip_octets(addr)),
                Some(len) => {
                    let net = IpNetwork::new(addr, len).ok()?;
                    Some((ip_octets(net.network()), ip_octets(net.broadcast())))
                }
            }
        }
        "ifname" => {
            let s = v.as_str()?;
            if s.len() >= IFNAMSIZ {
                return None;
            }
            let mut b = s.as_bytes().to_vec();
            b.resize(IFNAMSIZ, 0);
            same(b)
        }
        "ether_addr" => {
            let mac = crate::netlink::parse_mac(v.as_str()?).ok()?;
            same(mac.to_vec())
        }
        "inet_proto" => {
            let n = match v {
                Value::String(s) => match s.as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    "sctp" => 132,
                    "dccp" => 33,
                    "icmp" => 1,
                    "ipv6-icmp" | "icmpv6" => 58,
                    _ => return None,
                },
                _ => u8::try_from(v.as_u64()?).ok()?,
            };
            same(vec![n])
        }
        "inet_service" => same(u16::try_from(v.as_u64()?).ok()?.to_be_bytes().to_vec()),
        "mark" => same(u32::try_from(v.as_u64()?).ok()?.to_ne_bytes().to_vec()),
        _ => None,
    }
}

fn ip_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Encodes an element key of a set whose key types are `types`.
pub(crate) fn encode_key(types: &[String], interval: bool, v: &Value) -> Option<EncodedKey> {
    let (mut start, mut end) = (Vec::new(), Vec::new());
    match types {
        [one] => {
            // Intervals of a plain (not concatenated) key are stored as two elements by nft
            // (start, and end + 1 flagged as an interval end): left to nft.
            if interval {
                return None;
            }
            let (s, _) = encode_field(one, v, false)?;
            start = s;
        }
        many => {
            let parts = v.get("concat")?.as_array()?;
            if parts.len() != many.len() {
                return None;
            }
            for (ty, part) in many.iter().zip(parts) {
                let (mut s, mut e) = encode_field(ty, part, interval)?;
                s.resize(nfnetlink::align4(s.len()), 0);
                e.resize(nfnetlink::align4(e.len()), 0);
                start.extend_from_slice(&s);
                end.extend_from_slice(&e);
            }
        }
    }
    Some(EncodedKey {
        end: interval.then_some(end),
        start,
    })
}

/// Encodes a map element's value of type `ty`.
pub(crate) fn encode_data(ty: &str, v: &Value) -> Option<Vec<u8>> {
    encode_field(ty, v, false).map(|(s, _)| s)
}

// ---------------------------------------------------------------------------------------
// Transactions of element changes

/// One element, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub key: EncodedKey,
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
}

/// What one message of a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElementCmd {
    /// Add; an existing element with the same key (and value) is left as it is.
    Add,
    /// Add; fails with EEXIST when the key exists.
    Create,
    Delete,
}

impl ElementMsg {
    /// `cmd` on the element `0 : value` of `table`'s marker map (see [`super::Batch`]).
    pub(crate) fn marker(family: Family, table: &str, cmd: ElementCmd, value: u32) -> ElementMsg {
        ElementMsg {
            family,
            table: table.to_string(),
            set: super::SETUP_MARKER.to_string(),
            cmd,
            elements: vec![Element {
                key: EncodedKey {
                    start: 0u32.to_ne_bytes().to_vec(),
                    end: None,
                },
                data: Some(value.to_ne_bytes().to_vec()),
                comment: None,
            }],
        }
    }
}

/// One message: a command on elements of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElementMsg {
    pub family: Family,
    pub table: String,
    pub set: String,
    pub cmd: ElementCmd,
    pub elements: Vec<Element>,
}

pub(crate) fn put_data(buf: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    put_nested(buf, kind, |b| put_attr(b, NFTA_DATA_VALUE, bytes));
}

/// libnftnl's user data holding one comment: type, length, the string and its NUL.
fn comment_udata(comment: &str) -> Option<Vec<u8>> {
    let len = u8::try_from(comment.len() + 1).ok()?;
    let mut v = vec![UDATA_COMMENT, len];
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    Some(v)
}

fn element_attrs(m: &ElementMsg) -> Vec<u8> {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_SET_ELEM_LIST_TABLE, &m.table);
    put_str(&mut a, NFTA_SET_ELEM_LIST_SET, &m.set);
    put_nested(&mut a, NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
        for e in &m.elements {
            put_nested(a, NFTA_LIST_ELEM, |a| {
                put_data(a, NFTA_SET_ELEM_KEY, &e.key.start);
                if let Some(end) = &e.key.end {
                    put_data(a, NFTA_SET_ELEM_KEY_END, end);
                }
                if m.cmd != ElementCmd::Delete {
                    if let Some(d) = &e.data {
                        put_data(a, NFTA_SET_ELEM_DATA, d);
                    }
                    if let Some(u) = e.comment.as_deref().and_then(comment_udata) {
                        put_attr(a, NFTA_SET_ELEM_USERDATA, &u);
                    }
                }
            });
        }
    });
    a
}

/// One message of a transaction, encoded: an nf_tables message type, its netlink flags (the
/// request and ack flags are added when sent), the family and the attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawMsg {
    pub kind: u16,
    pub flags: u16,
    pub family: Family,
    pub attrs: Vec<u8>,
    /// It removes something (elements, rules): see [`release`].
    pub deletes: bool,
}

impl ElementMsg {
    pub(crate) fn raw(&self) -> RawMsg {
        let (kind, flags) = match self.cmd {
            ElementCmd::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
            ElementCmd::Create => (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL),
            ElementCmd::Delete => (NFT_MSG_DELSETELEM, 0),
        };
        RawMsg {
            kind,
            flags,
            family: self.family,
            attrs: element_attrs(self),
            deletes: self.cmd == ElementCmd::Delete,
        }
    }
}

/// Sockets whose close is left to the process exit; see [`close_at_exit`].
static CLOSE_AT_EXIT: Mutex<Vec<NfSocket>> = Mutex::new(Vec::new());

/// Keeps `nl` open until the process exits. What a transaction deleted is freed by kernel
/// work after an RCU grace period (10–20 ms on a busy node), and closing an nf_tables
/// socket waits for that work to finish. Closed at exit instead, the wait overlaps the
/// rest of the plugin's work (bridge's DEL deletes a veth meanwhile, which takes a grace
/// period of its own) and is over, or nearly, by then.
fn close_at_exit(nl: NfSocket) {
    match CLOSE_AT_EXIT.lock() {
        Ok(mut v) => v.push(nl),
        Err(poisoned) => poisoned.into_inner().push(nl),
    }
}

/// Closes, now, the sockets `close_at_exit` kept (waiting for the kernel's destroy work
/// when a transaction deleted something): for measuring that wait.
pub fn close_kept_sockets() {
    let kept = match CLOSE_AT_EXIT.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    drop(kept);
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Committed,
    /// Refused as a whole (nothing changed): the errno, and which of the messages (by index)
    /// the kernel named, when it named one of them.
    Refused(i32, Option<usize>),
}

/// Done with `nl` after `msgs` ended in `outcome`: closed now, or at exit when a committed
/// transaction deleted something (see [`close_at_exit`]).
pub(crate) fn release(nl: NfSocket, msgs: &[RawMsg], outcome: Outcome) {
    if outcome == Outcome::Committed && msgs.iter().any(|m| m.deletes) {
        close_at_exit(nl);
    }
}

/// Kernel: sends `msgs` as one nf_tables batch (all or nothing) on `nl` and reads every
/// answer.
pub(crate) fn transact(nl: &mut NfSocket, msgs: &[RawMsg]) -> Result<Outcome> {
    let op = "transaction";
    let mut out = Vec::new();
    let begin = nl.next_seq();
    nfnetlink::put_message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        0,
        begin,
        0,
        SUBSYS_NFTABLES,
        &[],
    );
    let mut last = begin;
    for m in msgs {
        last = nl.next_seq();
        nfnetlink::put_message(
            &mut out,
            SUBSYS_NFTABLES << 8 | m.kind,
            m.flags | NLM_F_ACK,
            last,
            nfproto(m.family),
            0,
            &m.attrs,
        );
    }
    let end = nl.next_seq();
    nfnetlink::put_message(
        &mut out,
        NFNL_MSG_BATCH_END,
        0,
        end,
        0,
        SUBSYS_NFTABLES,
        &[],
    );
    nl.send(&out, op)?;
    // The kernel ran the batch inside that send (nfnetlink processes it in the sender's
    // context): every answer, an ack per message or the errors, is queued already. So read
    // without waiting; no answer for the last message means something unexpected, reported
    // as an error (the caller then uses nft), never a wait.
    let mut first_error = None;
    let mut last_answered = false;
    while let Some(n) = nl.try_recv(op)? {
        for r in nfnetlink::replies(nl.buf.get(..n).unwrap_or(&[]))? {
            if r.msg_type != NLMSG_ERROR || !(begin..=end).contains(&r.seq) {
                continue;
            }
            if let Some(errno) = r.errno().filter(|e| *e != 0) {
                first_error.get_or_insert((errno, r.seq));
            }
            last_answered |= r.seq == last;
        }
    }
    if first_error.is_none() && !last_answered {
        return Err(Error::internal(
            "nftables transaction: the kernel did not answer the batch",
        ));
    }
    Ok(match first_error {
        // Messages were numbered begin + 1, begin + 2, ...
        Some((errno, seq)) => Outcome::Refused(
            errno,
            usize::try_from(seq.wrapping_sub(begin))
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|i| *i < msgs.len()),
        ),
        None => Outcome::Committed,
    })
}

// ---------------------------------------------------------------------------------------
// A table as the kernel holds it

const NFT_MSG_GETSET: u16 = 10;
/// Attributes that differ between two writings of the same table: handles, use counts,
/// counters, transaction IDs.
const SET_VOLATILE: &[u16] = &[10, 16]; // NFTA_SET_ID, NFTA_SET_HANDLE
const CHAIN_VOLATILE: &[u16] = &[2, 6, 8, 11]; // HANDLE, USE, COUNTERS, ID

/// Kernel: a dump of nf_tables objects (`get` is the `NFT_MSG_GET*` type, `attrs` its
/// filter): the attributes of each object, in the kernel's order, retried while the kernel
/// says the objects changed during it (`NLM_F_DUMP_INTR`). `None` when the table is missing.
pub(super) fn dump_objects(
    nl: &mut NfSocket,
    family: Family,
    get: u16,
    attrs: &[u8],
    what: &str,
) -> Result<Option<Vec<Vec<u8>>>> {
    // The answer to NFT_MSG_GETx is NFT_MSG_NEWx, one type number below.
    let new = SUBSYS_NFTABLES << 8 | (get - 1);
    for _ in 0..3 {
        let mut req = Vec::new();
        let seq = nl.next_seq();
        nfnetlink::put_message(
            &mut req,
            SUBSYS_NFTABLES << 8 | get,
            NLM_F_DUMP,
            seq,
            nfproto(family),
            0,
            attrs,
        );
        nl.send(&req, "dump")?;
        let mut objects = Vec::new();
        let mut interrupted = false;
        let end = loop {
            let n = nl.recv("dump")?;
            let mut end = None;
            for r in nfnetlink::replies(nl.buf.get(..n).unwrap_or(&[]))? {
                if r.seq != seq {
                    continue;
                }
                interrupted |= r.flags & NLM_F_DUMP_INTR != 0;
                match r.errno() {
                    Some(e) => end = Some(e),
                    None if r.msg_type == new => objects.push(r.attrs().to_vec()),
                    None => {}
                }
            }
            if let Some(e) = end {
                break e;
            }
        };
        match end {
            0 if interrupted => continue,
            0 => return Ok(Some(objects)),
            e if e == libc::ENOENT => return Ok(None),
            e => return Err(Error::netlink(format!("listing {what}"), e)),
        }
    }
    Err(Error::internal(format!(
        "listing {what}: the objects kept changing during the dump"
    )))
}

/// Kernel: the attributes of every set (or chain, by `get`) of `table`.
fn dump_table_objects(
    nl: &mut NfSocket,
    family: Family,
    table: &str,
    get: u16,
) -> Result<Vec<Vec<u8>>> {
    let mut a = Vec::new();
    put_str(&mut a, 1, table); // NFTA_SET_TABLE, NFTA_CHAIN_TABLE
    let objects = dump_objects(nl, family, get, &a, &format!("{family} {table}"))?;
    Ok(objects
        .unwrap_or_default()
        .into_iter()
        .filter(|o| find(o, 1).and_then(nfnetlink::as_str) == Some(table))
        .collect())
}

/// `attrs` without the `volatile` ones, as text: `type=hex` each, in order.
fn stable_attrs(attrs: &[u8], volatile: &[u16]) -> String {
    nfnetlink::attrs(attrs)
        .filter(|(k, _)| !volatile.contains(k))
        .map(|(k, v)| {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            format!("{k}={hex}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Kernel: a description of `table` (its sets and maps, its chains, every rule's
/// expressions) that is the same for two writings of the same ruleset, whoever wrote them.
/// For tests holding the `setup` encoder to `nft`.
#[doc(hidden)]
pub fn describe_table_in_kernel(family: Family, table: &str) -> Result<String> {
    let mut nl = NfSocket::open("nftables")?;
    let mut lines = Vec::new();
    let mut sets: Vec<String> = dump_table_objects(&mut nl, family, table, NFT_MSG_GETSET)?
        .iter()
        .map(|a| format!("set {}", stable_attrs(a, SET_VOLATILE)))
        .collect();
    sets.sort();
    lines.extend(sets);
    let mut chains: Vec<String> = dump_table_objects(&mut nl, family, table, NFT_MSG_GETCHAIN)?
        .iter()
        .map(|a| format!("chain {}", stable_attrs(a, CHAIN_VOLATILE)))
        .collect();
    chains.sort();
    lines.extend(chains);
    let rules = dump_rules(&mut nl, family, table, None)?.unwrap_or_default();
    for (chain, rule) in rules {
        let exprs: Vec<String> = rule
            .exprs
            .iter()
            .map(|(name, data)| {
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                format!("{name}[{hex}]")
            })
            .collect();
        lines.push(format!(
            "rule {chain}: {} {:?}",
            exprs.join(" "),
            rule.comment
        ));
    }
    Ok(lines.join("\n"))
}

// ---------------------------------------------------------------------------------------
// Reading one chain's rules

/// A rule as the kernel holds it: its comment and its expressions (name, attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub comment: Option<String>,
    pub exprs: Vec<(String, Vec<u8>)>,
}

impl KernelRule {
    pub(super) fn parse(attrs: &[u8]) -> KernelRule {
        let comment = find(attrs, NFTA_RULE_USERDATA).and_then(|u| {
            let mut rest = u;
            while let [ty, len, tail @ ..] = rest {
                let len = usize::from(*len);
                let value = tail.get(..len)?;
                if *ty == UDATA_COMMENT {
                    return nfnetlink::as_str(value).map(str::to_string);
                }
                rest = tail.get(len..)?;
            }
            None
        });
        let exprs = find(attrs, NFTA_RULE_EXPRESSIONS)
            .map(|list| {
                nfnetlink::attrs(list)
                    .filter(|(k, _)| *k == NFTA_LIST_ELEM)
                    .map(|(_, e)| {
                        let name = find(e, NFTA_EXPR_NAME)
                            .and_then(nfnetlink::as_str)
                            .unwrap_or("")
                            .to_string();
                        let data = find(e, NFTA_EXPR_DATA).unwrap_or(&[]).to_vec();
                        (name, data)
                    })
                    .collect()
            })
            .unwrap_or_default();
        KernelRule { comment, exprs }
    }
}

/// The nested attribute `path` inside an expression's data, e.g. a bitwise's mask value.
pub fn expr_attr<'a>(data: &'a [u8], path: &[u16]) -> Option<&'a [u8]> {
    path.iter().try_fold(data, |d, k| find(d, *k))
}

/// Kernel: the rules of chain `table`/`chain` of `family`, in order; `None` when the table
/// or the chain does not exist.
pub fn chain_rules_in_kernel(
    family: Family,
    table: &str,
    chain: &str,
) -> Result<Option<Vec<KernelRule>>> {
    chain_rules(&mut NfSocket::open("nftables")?, family, table, chain)
}

/// Kernel: [`chain_rules_in_kernel`] for the chain of that name in each of `families`, over
/// one socket.
pub fn chains_rules_in_kernel(
    families: &[Family],
    table: &str,
    chain: &str,
) -> Result<Vec<Option<Vec<KernelRule>>>> {
    let mut nl = NfSocket::open("nftables")?;
    families
        .iter()
        .map(|f| chain_rules(&mut nl, *f, table, chain))
        .collect()
}

fn chain_rules(
    nl: &mut NfSocket,
    family: Family,
    table: &str,
    chain: &str,
) -> Result<Option<Vec<KernelRule>>> {
    let what = format!("{family} {table} {chain}");
    let mut req = Vec::new();
    let mut a = Vec::new();
    put_str(&mut a, NFTA_CHAIN_TABLE, table);
    put_str(&mut a, NFTA_CHAIN_NAME, chain);
    let seq = nl.next_seq();
    nfnetlink::put_message(
        &mut req,
        SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN,
        NLM_F_ACK,
        seq,
        nfproto(family),
        0,
        &a,
    );
    nl.send(&req, "get chain")?;
    let mut exists = None;
    while exists.is_none() {
        let n = nl.recv("get chain")?;
        for r in nfnetlink::replies(nl.buf.get(..n).unwrap_or(&[]))? {
            if r.seq != seq {
                continue;
            }
            match r.errno() {
                Some(0) => exists = exists.or(Some(true)),
                Some(e) if e == libc::ENOENT => exists = Some(false),
                Some(e) => return Err(Error::netlink(format!("reading chain {what}"), e)),
                None if r.msg_type == SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN => {
                    exists = Some(true)
                }
                None => {}
            }
        }
    }
    // The ack may follow the chain; drain it so the dump's answers come alone.
    while nl.try_recv("get chain")?.is_some() {}
    if exists != Some(true) {
        return Ok(None);
    }

    Ok(dump_rules(nl, family, table, Some(chain))?
        .map(|rules| rules.into_iter().map(|(_, r)| r).collect()))
}

/// Kernel: how many rules each chain of `family`/`table` holds (chains without rules are
/// absent). A missing table has none (or is `None`, when the kernel answers ENOENT).
pub fn rule_counts_in_kernel(
    family: Family,
    table: &str,
) -> Result<Option<std::collections::BTreeMap<String, usize>>> {
    rule_counts(&mut NfSocket::open("nftables")?, family, table)
}

/// [`rule_counts_in_kernel`] on `nl`.
pub(crate) fn rule_counts(
    nl: &mut NfSocket,
    family: Family,
    table: &str,
) -> Result<Option<std::collections::BTreeMap<String, usize>>> {
    Ok(dump_rules(nl, family, table, None)?.map(|rules| {
        let mut counts = std::collections::BTreeMap::new();
        for (chain, _) in rules {
            *counts.entry(chain).or_insert(0) += 1;
        }
        counts
    }))
}

/// Dumps the rules of a table (or of one of its chains), each with its chain's name; `None`
/// when they do not exist. A dump the kernel marks as interrupted (the rules changed while
/// it ran) is started again, a few times at most.
fn dump_rules(
    nl: &mut NfSocket,
    family: Family,
    table: &str,
    chain: Option<&str>,
) -> Result<Option<Vec<(String, KernelRule)>>> {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_RULE_TABLE, table);
    if let Some(c) = chain {
        put_str(&mut a, NFTA_RULE_CHAIN, c);
    }
    let what = format!("{family} {table} {}", chain.unwrap_or(""));
    Ok(
        dump_objects(nl, family, NFT_MSG_GETRULE, &a, &what)?.map(|rules| {
            rules
                .iter()
                .map(|attrs| {
                    let chain_name = find(attrs, NFTA_RULE_CHAIN)
                        .and_then(nfnetlink::as_str)
                        .unwrap_or("")
                        .to_string();
                    (chain_name, KernelRule::parse(attrs))
                })
                .collect()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel: sends `msgs` as one nf_tables batch (all or nothing) on its own socket, and reads
    /// every answer.
    fn transact_in_kernel(msgs: &[ElementMsg]) -> Result<Outcome> {
        let msgs: Vec<RawMsg> = msgs.iter().map(ElementMsg::raw).collect();
        let mut nl = NfSocket::open("nftables")?;
        let outcome = transact(&mut nl, &msgs)?;
        release(nl, &msgs, outcome);
        Ok(outcome)
    }
    use serde_json::json;

    fn types(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_keys_are_their_type_length() {
        let k = encode_key(&types(&["ipv4_addr"]), false, &json!("10.0.0.5")).unwrap();
        assert_eq!(k.start, vec![10, 0, 0, 5]);
        assert_eq!(k.end, None);
        let k = encode_key(&types(&["ether_addr"]), false, &json!("02:00:00:00:00:01")).unwrap();
        assert_eq!(k.start, vec![2, 0, 0, 0, 0, 1]);
        let k = encode_key(&types(&["ifname"]), false, &json!("br0")).unwrap();
        assert_eq!(k.start.len(), 16);
        assert_eq!(&k.start[..4], b"br0\0");
        assert!(encode_key(&types(&["ifname"]), false, &json!("x".repeat(16))).is_none());
    }

    #[test]
    fn concatenations_pad_each_field_to_four_bytes() {
        let k = encode_key(
            &types(&["inet_proto", "inet_service"]),
            false,
            &json!({"concat": ["tcp", 8080]}),
        )
        .unwrap();
        assert_eq!(k.start, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let k = encode_key(
            &types(&["ifname", "ether_addr"]),
            false,
            &json!({"concat": ["veth1", "02:00:00:00:00:01"]}),
        )
        .unwrap();
        assert_eq!(k.start.len(), 16 + 8);
        assert!(
            encode_key(
                &types(&["ipv4_addr", "ipv4_addr"]),
                false,
                &json!({"concat": ["10.0.0.1"]})
            )
            .is_none()
        );
    }

    #[test]
    fn interval_concatenations_have_an_end() {
        let k = encode_key(
            &types(&["ipv4_addr", "ipv4_addr"]),
            true,
            &json!({"concat": ["10.0.0.5", {"prefix": {"addr": "10.0.0.0", "len": 16}}]}),
        )
        .unwrap();
        assert_eq!(k.start, vec![10, 0, 0, 5, 10, 0, 0, 0]);
        assert_eq!(k.end, Some(vec![10, 0, 0, 5, 10, 0, 255, 255]));
        let k = encode_key(
            &types(&["ipv6_addr", "ipv6_addr"]),
            true,
            &json!({"concat": ["fd00::5", {"prefix": {"addr": "fd00::", "len": 64}}]}),
        )
        .unwrap();
        let end = k.end.unwrap();
        assert_eq!(&end[16..24], &[0xfd, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&end[24..32], &[0xff; 8]);
        // A plain interval key is nft's business.
        assert!(encode_key(&types(&["ipv4_addr"]), true, &json!("10.0.0.5")).is_none());
    }

    #[test]
    fn map_values_and_unknown_types() {
        assert_eq!(encode_data("inet_service", &json!(80)), Some(vec![0, 80]));
        assert_eq!(
            encode_data("ipv4_addr", &json!("10.0.0.9")),
            Some(vec![10, 0, 0, 9])
        );
        assert_eq!(encode_data("verdict", &json!({"accept": null})), None);
    }

    #[test]
    fn comment_user_data_is_libnftnl_shaped() {
        assert_eq!(comment_udata("ab"), Some(vec![0, 3, b'a', b'b', 0]));
        assert_eq!(comment_udata(&"x".repeat(300)), None);
    }

    // -----------------------------------------------------------------------------------
    // Against the kernel (root), in a throwaway namespace: what goes over netlink is what
    // nft lists back.

    use crate::netlink::tests::{TestNs, have_root};
    use crate::nft::{
        self, Batch, ChainDef, Key, SETUP_MARKER, SetDef, TableRef, apply_to_kernel,
        list_table_from_kernel,
    };

    const T: TableRef<'static> = TableRef {
        family: Family::Inet,
        name: "cnirs_nltest",
    };
    const CHAIN: ChainDef<'static> = ChainDef {
        table: T,
        name: "c",
        hook: None,
    };
    const fn set(
        name: &'static str,
        key: &'static [&'static str],
        map: Option<&'static str>,
        interval: bool,
    ) -> SetDef<'static> {
        SetDef {
            table: T,
            name,
            key,
            map,
            interval,
        }
    }
    const ADDR4: SetDef<'static> = set("addr4", &["ipv4_addr"], None, false);
    const EXEMPT4: SetDef<'static> = set("exempt4", &["ipv4_addr", "ipv4_addr"], None, true);
    const EXEMPT6: SetDef<'static> = set("exempt6", &["ipv6_addr", "ipv6_addr"], None, true);
    const ALLOWED: SetDef<'static> = set("allowed", &["ifname", "ether_addr"], None, false);
    const SAME6: SetDef<'static> = set("same6", &["ifname", "ifname", "ipv6_addr"], None, false);
    const PORT4: SetDef<'static> = set(
        "port4",
        &["inet_proto", "inet_service"],
        Some("inet_service"),
        false,
    );
    const ADDR6: SetDef<'static> = set(
        "addr6",
        &["ipv6_addr", "inet_proto", "inet_service"],
        Some("ipv6_addr"),
        false,
    );
    const ALL: [&SetDef<'static>; 7] =
        [&ADDR4, &EXEMPT4, &EXEMPT6, &ALLOWED, &SAME6, &PORT4, &ADDR6];

    /// One key per set, numbered by `n` so that two attachments differ.
    fn keys(n: u8) -> Vec<(&'static SetDef<'static>, Key)> {
        vec![
            (&ADDR4, Key::new(json!(format!("10.1.0.{n}")))),
            (
                &EXEMPT4,
                Key::new(json!({"concat": [format!("10.1.0.{n}"),
                    {"prefix": {"addr": "10.1.0.0", "len": 16}}]})),
            ),
            (
                &EXEMPT6,
                Key::new(json!({"concat": [format!("fd00::{n}"),
                    {"prefix": {"addr": "fd00::", "len": 64}}]})),
            ),
            (
                &ALLOWED,
                Key::new(
                    json!({"concat": [format!("veth{n}"), format!("02:00:00:00:00:{n:02x}")]}),
                ),
            ),
            (
                &SAME6,
                Key::new(json!({"concat": ["br0", format!("veth{n}"), format!("fd00::{n}")]})),
            ),
            (
                &PORT4,
                Key::mapping(json!({"concat": ["tcp", 8000 + u16::from(n)]}), json!(80)),
            ),
            (
                &ADDR6,
                Key::mapping(
                    json!({"concat": ["fd00::1", "udp", 5300 + u16::from(n)]}),
                    json!(format!("fd00::{n}")),
                ),
            ),
        ]
    }

    fn batch(rule: serde_json::Value, n: u8, comment: &str) -> Batch {
        let mut b = Batch::new();
        b.add_table(T);
        for s in ALL {
            b.add_set(s);
        }
        b.ensure_chain_rules(&CHAIN, vec![vec![rule]]);
        for (s, k) in keys(n) {
            b.add_attachment_elements(s, comment, &[k]);
        }
        b
    }

    fn delete_batch(n: u8) -> Batch {
        let mut b = Batch::new();
        for (s, k) in keys(n) {
            b.delete_known_elements(s, &[k]);
        }
        b
    }

    fn listed(ns: &TestNs) -> nft::TableListing {
        ns.run(|| list_table_from_kernel(T)).unwrap().unwrap()
    }

    #[test]
    fn elements_over_netlink_are_what_nft_lists() {
        if !have_root() {
            return;
        }
        let ns = TestNs::new();
        let accept = json!({"accept": null});
        // The first batch has no marker to lean on: nft writes everything.
        let first = batch(accept.clone(), 1, "n/c1/eth0");
        let msgs = first.messages_for_test(false).unwrap();
        assert_eq!(
            ns.run(|| transact_in_kernel(&msgs)).unwrap(),
            Outcome::Refused(libc::ENOENT, Some(0)),
            "no table yet: refused, nothing changed"
        );
        ns.run(|| apply_to_kernel(&first)).unwrap();
        let l = listed(&ns);
        for (s, k) in keys(1) {
            assert!(l.has_element(s.name, &k, "n/c1/eth0"), "{} {k:?}", s.name);
        }
        assert!(
            l.set(SETUP_MARKER).is_none(),
            "the marker is not a set of the ruleset"
        );

        // The second attachment: its elements alone, over netlink.
        let second = batch(accept.clone(), 2, "n/c2/eth0");
        let msgs = second.messages_for_test(false).unwrap();
        assert_eq!(
            ns.run(|| transact_in_kernel(&msgs)).unwrap(),
            Outcome::Committed
        );
        let l = listed(&ns);
        for (s, k) in keys(2) {
            assert!(l.has_element(s.name, &k, "n/c2/eth0"), "{} {k:?}", s.name);
        }
        for (s, k) in keys(1) {
            assert!(l.has_element(s.name, &k, "n/c1/eth0"), "{} {k:?}", s.name);
        }
        // Again: the elements exist, so the first form is refused on one of them (not on
        // the marker); the replacing form takes them over with its comment.
        let again = batch(accept.clone(), 2, "n/c3/eth0");
        let refused = ns
            .run(|| transact_in_kernel(&again.messages_for_test(false).unwrap()))
            .unwrap();
        assert!(
            matches!(refused, Outcome::Refused(e, Some(i)) if e == libc::EEXIST && i > 0),
            "{refused:?}"
        );
        ns.run(|| apply_to_kernel(&again)).unwrap();
        let l = listed(&ns);
        for (s, k) in keys(2) {
            assert!(l.has_element(s.name, &k, "n/c3/eth0"), "{} {k:?}", s.name);
        }

        // Other rules: the marker refuses the element transaction (EEXIST; EBUSY on older
        // kernels), nft rewrites the rules.
        let changed = batch(json!({"drop": null}), 4, "n/c4/eth0");
        let refused = ns
            .run(|| transact_in_kernel(&changed.messages_for_test(false).unwrap()))
            .unwrap();
        assert!(
            matches!(refused, Outcome::Refused(e, Some(0)) if e == libc::EEXIST || e == libc::EBUSY),
            "{refused:?}"
        );
        ns.run(|| apply_to_kernel(&changed)).unwrap();
        assert_eq!(
            listed(&ns).chain("c").unwrap().rules,
            vec![vec![json!({"drop": null})]]
        );

        // DEL over netlink, twice (the second finds nothing, and succeeds).
        for _ in 0..2 {
            let msgs = delete_batch(2).messages_for_test(false).unwrap();
            assert_eq!(
                ns.run(|| transact_in_kernel(&msgs)).unwrap(),
                Outcome::Committed
            );
        }
        let l = listed(&ns);
        for (s, k) in keys(2) {
            assert!(!l.has_element(s.name, &k, "n/c3/eth0"), "{} {k:?}", s.name);
        }
        for (s, k) in keys(1) {
            assert!(l.has_element(s.name, &k, "n/c1/eth0"), "{} {k:?}", s.name);
        }

        // Rules removed behind our back: ADD counts them (a dump, no nft) and rewrites them.
        let nft_cmd = |args: &[&str]| {
            let out = ns.run(|| {
                std::process::Command::new("nft")
                    .args(args)
                    .output()
                    .unwrap()
            });
            assert!(out.status.success(), "nft {args:?}: {out:?}");
        };
        assert_eq!(
            ns.run(|| rule_counts_in_kernel(Family::Inet, T.name))
                .unwrap()
                .unwrap()
                .get("c"),
            Some(&1)
        );
        for damage in [
            vec!["flush", "chain", "inet", T.name, "c"],
            vec!["flush", "table", "inet", T.name],
            vec!["add", "rule", "inet", T.name, "c", "counter"],
        ] {
            nft_cmd(&damage);
            ns.run(|| apply_to_kernel(&changed)).unwrap();
            assert_eq!(
                listed(&ns).chain("c").unwrap().rules,
                vec![vec![json!({"drop": null})]],
                "after {damage:?}"
            );
        }
        // A missing table: no rules (the kernel may also say ENOENT).
        assert!(
            ns.run(|| rule_counts_in_kernel(Family::Inet, "nosuchtable"))
                .unwrap()
                .is_none_or(|c| c.is_empty())
        );

        // CHECK's repair hook: after forgetting (even from an emptied marker map), the next
        // ADD writes the rules again.
        nft_cmd(&["flush", "map", "inet", T.name, SETUP_MARKER]);
        ns.run(|| nft::forget_setup_in_kernel(&[T]));
        let marker = ns.run(|| {
            std::process::Command::new("nft")
                .args(["list", "map", "inet", T.name, SETUP_MARKER])
                .output()
                .unwrap()
        });
        assert!(
            String::from_utf8_lossy(&marker.stdout).contains("0x00000000 : 0x00000000"),
            "{marker:?}"
        );
        ns.run(|| apply_to_kernel(&changed)).unwrap();
        assert!(
            !String::from_utf8_lossy(
                &ns.run(|| {
                    std::process::Command::new("nft")
                        .args(["list", "map", "inet", T.name, SETUP_MARKER])
                        .output()
                        .unwrap()
                })
                .stdout
            )
            .contains("0x00000000 : 0x00000000"),
            "the marker holds the rules' hash again"
        );
    }

    #[test]
    fn chain_rules_are_read_with_their_comments() {
        if !have_root() {
            return;
        }
        let ns = TestNs::new();
        assert_eq!(
            ns.run(|| chain_rules_in_kernel(Family::Ip, "filter", "FORWARD"))
                .unwrap(),
            None
        );
        let script = "add table ip filter\n\
            add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }\n\
            add rule ip filter FORWARD ip saddr 10.0.0.1 counter accept\n\
            add rule ip filter FORWARD meta mark & 0x10 == 0x10 accept comment \"hello there\"\n";
        ns.run(|| crate::nft::apply_text_to_kernel(script))
            .unwrap()
            .unwrap();
        let rules = ns
            .run(|| chain_rules_in_kernel(Family::Ip, "filter", "FORWARD"))
            .unwrap()
            .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].comment, None);
        assert_eq!(rules[1].comment.as_deref(), Some("hello there"));
        let names: Vec<&str> = rules[1].exprs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta", "bitwise", "cmp", "immediate"]);
        // Another family's chain of that name does not exist.
        assert_eq!(
            ns.run(|| chain_rules_in_kernel(Family::Ip6, "filter", "FORWARD"))
                .unwrap(),
            None
        );
    }
}
