//! The fixed ruleset of a [`super::Batch`] (tables, sets, maps, chains, rules) as nf_tables
//! netlink messages, so that a network's first ADD starts no `nft` process either.
//!
//! It encodes the JSON commands the plugins make, the way `nft` 1.0 linearizes them: the
//! protocol dependency before the first IPv4 or IPv6 header field of a rule in an `inet`
//! table (`meta nfproto`), registers allocated per statement (a concatenation in adjacent
//! 32-bit registers, a map's result where its key was), byte-aligned prefixes matched by
//! shortened loads and the others through a mask, and sets carrying nft's user data (the
//! byte order of keys and values, and the marker of a concatenated key), so that `nft list`
//! shows them as if `nft` had written them. Anything else gives `None`, and the batch goes
//! through `nft` as before. A test holds the kernel's view of what this writes (sets,
//! chains, every rule's expressions) to that of nft's own encoding, for every plugin.

use super::Family;
use super::netlink::{
    NF_ACCEPT, NF_DROP, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_GOTO, NFT_JUMP, NFT_MSG_DELSETELEM,
    NFT_MSG_NEWCHAIN, NFT_RETURN, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK,
    NFTA_BITWISE_SREG, NFTA_BITWISE_XOR, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE, NFTA_CMP_DATA,
    NFTA_CMP_OP, NFTA_CMP_SREG, NFTA_CT_DREG, NFTA_CT_KEY, NFTA_DATA_VERDICT, NFTA_EXPR_DATA,
    NFTA_EXPR_NAME, NFTA_IMMEDIATE_DATA, NFTA_IMMEDIATE_DREG, NFTA_LIST_ELEM, NFTA_PAYLOAD_BASE,
    NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_LEN, NFTA_PAYLOAD_OFFSET, NFTA_RULE_CHAIN,
    NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, RawMsg, put_data,
};
use crate::nfnetlink::{NLM_F_CREATE, put_attr, put_nested, put_str};
use serde_json::Value;

// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
/// `NLM_F_APPEND`: a new rule goes to the end of its chain.
const NLM_F_APPEND: u16 = 0x800;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;

const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_CONCAT: u32 = 0x80;

// libnftnl's set user data (`enum udata_set_type`, and the nested typeof record).
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_TYPEOF_EXPR: u8 = 0;
const UDATA_TYPEOF_DATA: u8 = 1;
/// nft's `EXPR_CONCAT`, recorded for a concatenated key.
const EXPR_CONCAT: u32 = 13;
// nft's byte orders.
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG: u32 = 2;

/// The 32-bit registers of nft's numbering; see [`reg`].
type Unit = u32;

/// A data type nft knows by name: its type number, its size in bytes and its byte order.
fn datatype(name: &str) -> Option<(u32, u32, u32)> {
    Some(match name {
        "ipv4_addr" => (7, 4, BYTEORDER_BIG),
        "ipv6_addr" => (8, 16, BYTEORDER_BIG),
        "ether_addr" => (9, 6, BYTEORDER_BIG),
        "inet_proto" => (12, 1, BYTEORDER_BIG),
        "inet_service" => (13, 2, BYTEORDER_BIG),
        "mark" => (19, 4, BYTEORDER_HOST),
        "ifname" => (41, 16, BYTEORDER_HOST),
        _ => return None,
    })
}

fn round4(n: u32) -> u32 {
    n.div_ceil(4) * 4
}

fn be32(buf: &mut Vec<u8>, kind: u16, v: u32) {
    put_attr(buf, kind, &v.to_be_bytes());
}

fn str_field<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key)?.as_str()
}

fn family_of(body: &Value) -> Option<Family> {
    super::family_named(str_field(body, "family")?)
}

/// `body` holds no key but `allowed`: a field this module does not read (a comment, a
/// handle, a timeout...) makes the command one it does not encode.
fn only_keys(body: &Value, allowed: &[&str]) -> Option<()> {
    body.as_object()?
        .keys()
        .all(|k| allowed.contains(&k.as_str()))
        .then_some(())
}

/// The fixed ruleset's commands as messages; `None` when one of them is not of the forms
/// this module encodes.
pub(crate) fn setup_messages<'a>(cmds: impl IntoIterator<Item = &'a Value>) -> Option<Vec<RawMsg>> {
    let mut set_id = 0;
    let mut out = Vec::new();
    for cmd in cmds {
        let (verb, object) = cmd.as_object()?.iter().next()?;
        let (kind, body) = object.as_object()?.iter().next()?;
        let family = family_of(body)?;
        let msg = |kind, flags, attrs, deletes| RawMsg {
            kind,
            flags,
            family,
            attrs,
            deletes,
        };
        out.push(match (verb.as_str(), kind.as_str()) {
            ("add", "table") => {
                only_keys(body, &["family", "name"])?;
                let mut a = Vec::new();
                put_str(&mut a, NFTA_TABLE_NAME, str_field(body, "name")?);
                be32(&mut a, NFTA_TABLE_FLAGS, 0);
                msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, a, false)
            }
            ("add", "chain") => msg(
                NFT_MSG_NEWCHAIN,
                NLM_F_CREATE,
                chain_attrs(body, family)?,
                false,
            ),
            ("flush", "chain") => {
                only_keys(body, &["family", "table", "name"])?;
                let mut a = Vec::new();
                put_str(&mut a, NFTA_RULE_TABLE, str_field(body, "table")?);
                put_str(&mut a, NFTA_RULE_CHAIN, str_field(body, "name")?);
                msg(NFT_MSG_DELRULE, 0, a, true)
            }
            ("add", "set" | "map") => {
                set_id += 1;
                msg(
                    NFT_MSG_NEWSET,
                    NLM_F_CREATE,
                    set_attrs(body, set_id)?,
                    false,
                )
            }
            ("flush", "set" | "map") => {
                only_keys(body, &["family", "table", "name"])?;
                let mut a = Vec::new();
                put_str(&mut a, NFTA_SET_ELEM_LIST_TABLE, str_field(body, "table")?);
                put_str(&mut a, NFTA_SET_ELEM_LIST_SET, str_field(body, "name")?);
                msg(NFT_MSG_DELSETELEM, 0, a, true)
            }
            ("add", "rule") => msg(
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                rule_attrs(body, family)?,
                false,
            ),
            _ => return None,
        });
    }
    Some(out)
}

fn chain_attrs(body: &Value, family: Family) -> Option<Vec<u8>> {
    only_keys(
        body,
        &["family", "table", "name", "type", "hook", "prio", "policy"],
    )?;
    let mut a = Vec::new();
    put_str(&mut a, NFTA_CHAIN_TABLE, str_field(body, "table")?);
    put_str(&mut a, NFTA_CHAIN_NAME, str_field(body, "name")?);
    if let Some(hook) = str_field(body, "hook") {
        // The same numbers for inet, ip, ip6 and bridge (NF_INET_*, NF_BR_*); arp and netdev
        // number theirs otherwise.
        if !matches!(
            family,
            Family::Inet | Family::Ip | Family::Ip6 | Family::Bridge
        ) {
            return None;
        }
        let hooknum: u32 = match hook {
            "prerouting" => 0,
            "input" => 1,
            "forward" => 2,
            "output" => 3,
            "postrouting" => 4,
            _ => return None,
        };
        let prio = i32::try_from(body.get("prio")?.as_i64()?).ok()?;
        put_nested(&mut a, NFTA_CHAIN_HOOK, |a| {
            be32(a, NFTA_HOOK_HOOKNUM, hooknum);
            be32(a, NFTA_HOOK_PRIORITY, prio as u32);
        });
        let policy = match str_field(body, "policy").unwrap_or("accept") {
            "accept" => NF_ACCEPT,
            "drop" => NF_DROP,
            _ => return None,
        };
        be32(&mut a, NFTA_CHAIN_POLICY, policy);
        put_str(&mut a, NFTA_CHAIN_TYPE, str_field(body, "type")?);
    }
    Some(a)
}

/// libnftnl user data: one TLV of a u32 in host order.
fn udata_u32(out: &mut Vec<u8>, kind: u8, v: u32) {
    out.extend_from_slice(&[kind, 4]);
    out.extend_from_slice(&v.to_ne_bytes());
}

fn set_attrs(body: &Value, id: u32) -> Option<Vec<u8>> {
    only_keys(body, &["family", "table", "name", "type", "map", "flags"])?;
    let types: Vec<&str> = match body.get("type")? {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().map(Value::as_str).collect::<Option<_>>()?,
        _ => return None,
    };
    let fields: Vec<(u32, u32, u32)> = types.iter().map(|t| datatype(t)).collect::<Option<_>>()?;
    let concat = fields.len() > 1;
    let interval = match body.get("flags") {
        None => false,
        Some(f) if *f == serde_json::json!(["interval"]) => true,
        Some(_) => return None,
    };
    let data = match str_field(body, "map") {
        Some(t) => Some(datatype(t)?),
        None if body.get("map").is_some() => return None,
        None => None,
    };
    // nft numbers a concatenation's type by shifting in each field's (6 bits each).
    let key_type = fields.iter().fold(0u32, |t, f| (t << 6) | f.0);
    // A concatenation pads each field to 4 bytes; a single field keeps its own length.
    let key_len: u32 = if concat {
        fields.iter().map(|f| round4(f.1)).sum()
    } else {
        fields.first()?.1
    };
    let mut flags = 0;
    if interval {
        flags |= NFT_SET_INTERVAL;
        if concat {
            flags |= NFT_SET_CONCAT;
        }
    }
    if data.is_some() {
        flags |= NFT_SET_MAP;
    }
    let mut a = Vec::new();
    put_str(&mut a, NFTA_SET_TABLE, str_field(body, "table")?);
    put_str(&mut a, NFTA_SET_NAME, str_field(body, "name")?);
    be32(&mut a, NFTA_SET_FLAGS, flags);
    be32(&mut a, NFTA_SET_KEY_TYPE, key_type);
    be32(&mut a, NFTA_SET_KEY_LEN, key_len);
    if let Some((ty, len, _)) = data {
        be32(&mut a, NFTA_SET_DATA_TYPE, ty);
        be32(&mut a, NFTA_SET_DATA_LEN, len);
    }
    // The field lengths, for the kernel's concatenated interval sets (nft sends them for
    // those only).
    if concat && interval {
        put_nested(&mut a, NFTA_SET_DESC, |a| {
            put_nested(a, NFTA_SET_DESC_CONCAT, |a| {
                for f in &fields {
                    put_nested(a, NFTA_LIST_ELEM, |a| be32(a, NFTA_SET_FIELD_LEN, f.1));
                }
            });
        });
    }
    be32(&mut a, NFTA_SET_ID, id);
    let mut udata = Vec::new();
    let key_order = if concat {
        BYTEORDER_INVALID
    } else {
        fields.first()?.2
    };
    udata_u32(&mut udata, UDATA_SET_KEYBYTEORDER, key_order);
    if let Some((_, _, order)) = data {
        udata_u32(&mut udata, UDATA_SET_DATABYTEORDER, order);
    }
    if concat {
        // nft records that the key is a concatenation (typeof data left empty).
        udata.extend_from_slice(&[UDATA_SET_KEY_TYPEOF, 8]);
        udata_u32(&mut udata, UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        udata.extend_from_slice(&[UDATA_TYPEOF_DATA, 0]);
    }
    if data.is_some() {
        // Whether a map's values are intervals: never here.
        udata_u32(&mut udata, UDATA_SET_DATA_INTERVAL, 0);
    }
    put_attr(&mut a, NFTA_SET_USERDATA, &udata);
    Some(a)
}

// ---------------------------------------------------------------------------------------
// Rules

/// One expression: its name and attributes.
struct Expr {
    name: &'static str,
    attrs: Vec<u8>,
}

/// nft's register numbering on the wire: a 32-bit register at a multiple of four is sent as
/// the 128-bit register it starts (`NFT_REG_1` ...), any other as `NFT_REG32_xx`.
fn reg(unit: Unit) -> u32 {
    if unit % 4 == 0 {
        1 + unit / 4
    } else {
        8 + unit
    }
}

/// A value loaded into registers: how to load it, its length in bytes.
enum Load {
    /// Base (0 link layer, 1 network, 2 transport), offset, length.
    Payload(u32, u32, u32),
    /// `NFT_META_*` key, length.
    Meta(u32, u32),
    /// `NFT_CT_*` key, length.
    Ct(u32, u32),
    /// `fib daddr type`.
    FibDaddrType,
}

impl Load {
    fn len(&self) -> u32 {
        match self {
            Load::Payload(_, _, len) | Load::Meta(_, len) | Load::Ct(_, len) => *len,
            Load::FibDaddrType => 4,
        }
    }

    fn expr(&self, unit: Unit) -> Expr {
        let mut a = Vec::new();
        let name = match *self {
            Load::Payload(base, offset, len) => {
                be32(&mut a, NFTA_PAYLOAD_DREG, reg(unit));
                be32(&mut a, NFTA_PAYLOAD_BASE, base);
                be32(&mut a, NFTA_PAYLOAD_OFFSET, offset);
                be32(&mut a, NFTA_PAYLOAD_LEN, len);
                "payload"
            }
            Load::Meta(key, _) => {
                be32(&mut a, 1, reg(unit)); // NFTA_META_DREG
                be32(&mut a, 2, key);
                "meta"
            }
            Load::Ct(key, _) => {
                be32(&mut a, NFTA_CT_DREG, reg(unit));
                be32(&mut a, NFTA_CT_KEY, key);
                "ct"
            }
            Load::FibDaddrType => {
                be32(&mut a, 1, reg(unit)); // NFTA_FIB_DREG
                be32(&mut a, 2, 3); // NFT_FIB_RESULT_ADDRTYPE
                be32(&mut a, 3, 2); // NFTA_FIB_F_DADDR
                "fib"
            }
        };
        Expr { name, attrs: a }
    }
}

/// The protocol whose header a payload field is in, when an `inet` rule must check it
/// first: `NFPROTO_IPV4` or `NFPROTO_IPV6`; or [`ETHER`] for the Ethernet header.
type Dependency = Option<u8>;

/// The Ethernet header: there without a check in `bridge` tables only (elsewhere nft adds
/// `meta iiftype ether`, which this module does not encode).
const ETHER: u8 = 0;

/// A field of the JSON, e.g. `{"payload": {"protocol": "ip", "field": "daddr"}}`.
fn load(v: &Value) -> Option<(Load, Dependency)> {
    let (kind, body) = v.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "payload" => {
            let (proto, field) = (str_field(body, "protocol")?, str_field(body, "field")?);
            match (proto, field) {
                ("ip", "saddr") => (Load::Payload(1, 12, 4), Some(2)),
                ("ip", "daddr") => (Load::Payload(1, 16, 4), Some(2)),
                ("ip6", "saddr") => (Load::Payload(1, 8, 16), Some(10)),
                ("ip6", "daddr") => (Load::Payload(1, 24, 16), Some(10)),
                ("ether", "saddr") => (Load::Payload(0, 6, 6), Some(ETHER)),
                ("th", "dport") => (Load::Payload(2, 2, 2), None),
                _ => return None,
            }
        }
        "meta" => match str_field(body, "key")? {
            "mark" => (Load::Meta(3, 4), None),
            "iifname" => (Load::Meta(6, 16), None),
            "oifname" => (Load::Meta(7, 16), None),
            "nfproto" => (Load::Meta(15, 1), None),
            "l4proto" => (Load::Meta(16, 1), None),
            _ => return None,
        },
        "ct" => match str_field(body, "key")? {
            "state" => (Load::Ct(0, 4), None),
            "status" => (Load::Ct(2, 4), None),
            _ => return None,
        },
        "fib" => {
            let daddr = body.get("flags")? == &serde_json::json!(["daddr"]);
            if str_field(body, "result")? != "type" || !daddr {
                return None;
            }
            (Load::FibDaddrType, None)
        }
        _ => return None,
    })
}

/// The loads of a key: one field, or each of a concatenation.
fn key_loads(v: &Value) -> Option<Vec<(Load, Dependency)>> {
    match v.get("concat") {
        Some(parts) => parts.as_array()?.iter().map(load).collect(),
        None => Some(vec![load(v)?]),
    }
}

/// Builds one rule's expressions, tracking the protocol already checked.
struct RuleBuilder {
    family: Family,
    checked: Option<u8>,
    exprs: Vec<Expr>,
}

impl RuleBuilder {
    /// `meta nfproto` checks before a statement whose fields need them (in an `inet` table;
    /// an `ip` or `ip6` table holds only its own protocol, and other families are not
    /// encoded here).
    fn depend(&mut self, deps: impl IntoIterator<Item = Dependency>) -> Option<()> {
        for proto in deps.into_iter().flatten() {
            match (self.family, proto) {
                (Family::Bridge, ETHER) | (Family::Ip, 2) | (Family::Ip6, 10) => continue,
                (_, ETHER) => return None,
                (Family::Inet, _) if self.checked == Some(proto) => continue,
                (Family::Inet, _) => {}
                _ => return None,
            }
            self.exprs.push(Load::Meta(15, 1).expr(0));
            self.cmp(0, NFT_CMP_EQ, &[proto]);
            self.checked = Some(proto);
        }
        Some(())
    }

    fn cmp(&mut self, unit: Unit, op: u32, data: &[u8]) {
        let mut a = Vec::new();
        be32(&mut a, NFTA_CMP_SREG, reg(unit));
        be32(&mut a, NFTA_CMP_OP, op);
        put_data(&mut a, NFTA_CMP_DATA, data);
        self.exprs.push(Expr {
            name: "cmp",
            attrs: a,
        });
    }

    fn bitwise(&mut self, unit: Unit, mask: &[u8], xor: &[u8]) {
        let mut a = Vec::new();
        be32(&mut a, NFTA_BITWISE_SREG, reg(unit));
        be32(&mut a, NFTA_BITWISE_DREG, reg(unit));
        be32(
            &mut a,
            NFTA_BITWISE_LEN,
            u32::try_from(mask.len()).unwrap_or(0),
        );
        put_data(&mut a, NFTA_BITWISE_MASK, mask);
        put_data(&mut a, NFTA_BITWISE_XOR, xor);
        self.exprs.push(Expr {
            name: "bitwise",
            attrs: a,
        });
    }

    /// Loads a key at `unit` (a concatenation in adjacent registers).
    fn load_key(&mut self, loads: &[(Load, Dependency)], unit: Unit) {
        let mut u = unit;
        for (l, _) in loads {
            self.exprs.push(l.expr(u));
            u += l.len().div_ceil(4);
        }
    }

    fn lookup(&mut self, set: &str, sreg: Unit, dreg: Option<Unit>) {
        let mut a = Vec::new();
        put_str(&mut a, 1, set); // NFTA_LOOKUP_SET
        be32(&mut a, 2, reg(sreg));
        if let Some(d) = dreg {
            be32(&mut a, 3, reg(d));
        }
        self.exprs.push(Expr {
            name: "lookup",
            attrs: a,
        });
    }

    fn verdict(&mut self, code: u32, chain: Option<&str>) {
        let mut a = Vec::new();
        be32(&mut a, NFTA_IMMEDIATE_DREG, 0); // the verdict register
        put_nested(&mut a, NFTA_IMMEDIATE_DATA, |a| {
            put_nested(a, NFTA_DATA_VERDICT, |a| {
                be32(a, NFTA_VERDICT_CODE, code);
                if let Some(c) = chain {
                    put_str(a, NFTA_VERDICT_CHAIN, c);
                }
            });
        });
        self.exprs.push(Expr {
            name: "immediate",
            attrs: a,
        });
    }

    fn statement(&mut self, stmt: &Value) -> Option<()> {
        let (kind, body) = stmt.as_object()?.iter().next()?;
        match (kind.as_str(), body) {
            ("match", m) => self.relational(m)?,
            ("accept", Value::Null) => self.verdict(NF_ACCEPT, None),
            ("drop", Value::Null) => self.verdict(NF_DROP, None),
            ("return", Value::Null) => self.verdict(NFT_RETURN, None),
            ("jump", t) => self.verdict(NFT_JUMP, Some(str_field(t, "target")?)),
            ("goto", t) => self.verdict(NFT_GOTO, Some(str_field(t, "target")?)),
            ("masquerade", Value::Null) => self.exprs.push(Expr {
                name: "masq",
                attrs: Vec::new(),
            }),
            ("dnat", d) => self.dnat(d)?,
            ("mangle", m) => self.mark_set(m)?,
            _ => return None,
        }
        Some(())
    }

    fn relational(&mut self, m: &Value) -> Option<()> {
        let (op, left, right) = (str_field(m, "op")?, m.get("left")?, m.get("right")?);
        let loads = key_loads(left)?;
        self.depend(loads.iter().map(|l| l.1))?;
        match right {
            Value::String(r) if r.starts_with('@') && op == "==" => {
                self.load_key(&loads, 0);
                self.lookup(&r[1..], 0, None);
            }
            _ => {
                let [(l, _)] = loads.as_slice() else {
                    return None;
                };
                self.compare(l, op, right)?;
                if let (Load::Meta(15, _), Some(p)) = (l, right.as_str()) {
                    // An explicit `meta nfproto` check counts as the dependency.
                    self.checked = Some(if p == "ipv4" { 2 } else { 10 });
                }
            }
        }
        Some(())
    }

    /// A field against a value: equal, a prefix, or flags of a bit mask.
    fn compare(&mut self, l: &Load, op: &str, right: &Value) -> Option<()> {
        match (l, op, right) {
            (Load::Meta(15, _), "==", Value::String(p)) => {
                let proto: u8 = match p.as_str() {
                    "ipv4" => 2,
                    "ipv6" => 10,
                    _ => return None,
                };
                self.exprs.push(l.expr(0));
                self.cmp(0, NFT_CMP_EQ, &[proto]);
            }
            (Load::FibDaddrType, "==", Value::String(t)) if t == "local" => {
                self.exprs.push(l.expr(0));
                self.cmp(0, NFT_CMP_EQ, &2u32.to_ne_bytes()); // RTN_LOCAL
            }
            (Load::Payload(base, offset, len), "==", Value::Object(_)) => {
                let p = right.get("prefix")?;
                let addr: std::net::IpAddr = str_field(p, "addr")?.parse().ok()?;
                let bits = u32::try_from(p.get("len")?.as_u64()?).ok()?;
                if bits == 0 {
                    return None;
                }
                let net = ipnetwork::IpNetwork::new(addr, u8::try_from(bits).ok()?).ok()?;
                let bytes = match net.network() {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                };
                if u32::try_from(bytes.len()).ok()? != *len {
                    return None;
                }
                if bits % 8 == 0 {
                    // A whole number of bytes: load just those.
                    let n = bits / 8;
                    self.exprs.push(Load::Payload(*base, *offset, n).expr(0));
                    self.cmp(0, NFT_CMP_EQ, bytes.get(..n as usize)?);
                } else {
                    let mask: Vec<u8> = match net.mask() {
                        std::net::IpAddr::V4(m) => m.octets().to_vec(),
                        std::net::IpAddr::V6(m) => m.octets().to_vec(),
                    };
                    self.exprs.push(l.expr(0));
                    self.bitwise(0, &mask, &vec![0; mask.len()]);
                    self.cmp(0, NFT_CMP_EQ, &bytes);
                }
            }
            (Load::Ct(key, _), "in", flags) => {
                let names: Vec<&str> = match flags {
                    Value::String(f) => vec![f.as_str()],
                    Value::Array(fs) => fs.iter().map(Value::as_str).collect::<Option<_>>()?,
                    _ => return None,
                };
                let mut bits = 0u32;
                for n in names {
                    bits |= match (*key, n) {
                        (0, "invalid") => 1,
                        (0, "established") => 2,
                        (0, "related") => 4,
                        (0, "new") => 8,
                        (0, "untracked") => 64,
                        (2, "snat") => 0x10,
                        (2, "dnat") => 0x20,
                        _ => return None,
                    };
                }
                self.exprs.push(l.expr(0));
                self.bitwise(0, &bits.to_ne_bytes(), &[0; 4]);
                self.cmp(0, NFT_CMP_NEQ, &[0; 4]);
            }
            _ => return None,
        }
        Some(())
    }

    /// `dnat <family> to <key> map @addr : <key> map @port`: each map's key loaded where its
    /// result goes.
    fn dnat(&mut self, d: &Value) -> Option<()> {
        let nat_family: u32 = match str_field(d, "family")? {
            "ip" => 2,
            "ip6" => 10,
            _ => return None,
        };
        let mut lookups = Vec::new();
        for part in ["addr", "port"] {
            let map = d.get(part)?.get("map")?;
            let loads = key_loads(map.get("key")?)?;
            let set = map.get("data")?.as_str()?.strip_prefix('@')?;
            lookups.push((loads, set));
        }
        self.depend(lookups.iter().flat_map(|(l, _)| l.iter().map(|x| x.1)))?;
        // nft gives the address and the port a 128-bit register each.
        for ((loads, set), unit) in lookups.iter().zip([0, 4]) {
            self.load_key(loads, unit);
            self.lookup(set, unit, Some(unit));
        }
        let mut a = Vec::new();
        be32(&mut a, 1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
        be32(&mut a, 2, nat_family);
        be32(&mut a, 3, reg(0)); // NFTA_NAT_REG_ADDR_MIN
        be32(&mut a, 5, reg(4)); // NFTA_NAT_REG_PROTO_MIN
        be32(&mut a, 7, 0x2); // NFTA_NAT_FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
        self.exprs.push(Expr {
            name: "nat",
            attrs: a,
        });
        Some(())
    }

    /// `meta mark set meta mark | X` (or `& X`).
    fn mark_set(&mut self, m: &Value) -> Option<()> {
        let mark = serde_json::json!({"meta": {"key": "mark"}});
        if m.get("key")? != &mark {
            return None;
        }
        let value = m.get("value")?;
        let (op, args) = value.as_object()?.iter().next()?;
        let [left, Value::Number(n)] = args.as_array()?.as_slice() else {
            return None;
        };
        if left != &mark {
            return None;
        }
        let n = u32::try_from(n.as_u64()?).ok()?;
        let (mask, xor) = match op.as_str() {
            "|" => (!n, n),
            "&" => (n, 0),
            _ => return None,
        };
        self.exprs.push(Load::Meta(3, 4).expr(0));
        self.bitwise(0, &mask.to_ne_bytes(), &xor.to_ne_bytes());
        let mut a = Vec::new();
        be32(&mut a, 2, 3); // NFTA_META_KEY: NFT_META_MARK
        be32(&mut a, 3, reg(0)); // NFTA_META_SREG
        self.exprs.push(Expr {
            name: "meta",
            attrs: a,
        });
        Some(())
    }
}

fn rule_attrs(body: &Value, family: Family) -> Option<Vec<u8>> {
    only_keys(body, &["family", "table", "chain", "expr"])?;
    let mut b = RuleBuilder {
        family,
        checked: None,
        exprs: Vec::new(),
    };
    for stmt in body.get("expr")?.as_array()? {
        b.statement(stmt)?;
    }
    let mut a = Vec::new();
    put_str(&mut a, NFTA_RULE_TABLE, str_field(body, "table")?);
    put_str(&mut a, NFTA_RULE_CHAIN, str_field(body, "chain")?);
    put_nested(&mut a, NFTA_RULE_EXPRESSIONS, |a| {
        for e in &b.exprs {
            put_nested(a, NFTA_LIST_ELEM, |a| {
                put_str(a, NFTA_EXPR_NAME, e.name);
                put_nested(a, NFTA_EXPR_DATA, |a| a.extend_from_slice(&e.attrs));
            });
        }
    });
    Some(a)
}
