//! nftables batches in `nft`'s JSON form, applied as one transaction each.
//!
//! The functions that touch the kernel say so in their names: [`apply_to_kernel`] (one
//! nf_tables transaction over netlink when everything in the batch can be encoded here, see
//! [`netlink`] and `setup`; else one `nft -j -f -` process; atomic either way) and
//! [`list_table_from_kernel`] (`nft -j list table`). [`delete_elements_by_comment_in_kernel`]
//! combines them. Everything else builds or reads JSON and is pure.
//!
//! # Per-attachment set elements
//!
//! The plugins keep their rules fixed: a few base chains whose rules match named sets and
//! maps. What an attachment (network, container ID, ifname) contributes is only *set
//! elements*, each carrying a `comment` made by [`attachment_comment`]. So:
//!
//! - ADD is one batch: `add table`, `add chain`, `flush chain` + the fixed rules (so rules
//!   are never duplicated and always the current version), `add set`, `add element` (see
//!   [`Batch::add_attachment_elements`]).
//! - DEL of an attachment whose keys are known is one batch with no listing: `add table`,
//!   `add set`, `add element X`, `delete element X` ([`Batch::delete_known_elements`]). The
//!   add makes the delete always succeed (nft 1.0.6 has no `destroy`), so DEL is atomic and
//!   idempotent, and a missing table is no error.
//! - When the keys are unknown (DEL without prevResult), or for GC, the tables are listed and
//!   the elements are picked by their comment ([`delete_elements_by_comment_in_kernel`] with
//!   [`comment_is_attachment`] or [`comment_is_stale`]).
//!
//! Comments are at most [`COMMENT_MAX`] bytes; see [`attachment_comment`] for the format.
//!
//! A known limit of keying elements by packet fields: two attachments with the same key (the
//! same container address in two networks with overlapping subnets) share one element, so
//! removing one removes it for both.

use crate::error::{Error, Result};
use crate::naming::{cut, fnv1a64};
use crate::nfnetlink::NfSocket;
use crate::spec::config::Attachment;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod netlink;
pub mod reference;
mod setup;

/// The longest comment nft stores (bytes).
pub const COMMENT_MAX: usize = 128;

/// The longest network tag at the start of a comment; longer names are shortened and hashed.
const NET_TAG_MAX: usize = 40;

/// An nftables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
    Arp,
    Bridge,
    Netdev,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
            Family::Arp => "arp",
            Family::Bridge => "bridge",
            Family::Netdev => "netdev",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table, by family and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableRef<'a> {
    pub family: Family,
    pub name: &'a str,
}

impl TableRef<'_> {
    fn json(&self) -> Value {
        json!({"family": self.family.as_str(), "name": self.name})
    }
}

impl std::fmt::Display for TableRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook<'a> {
    /// `filter`, `nat` or `route`.
    pub chain_type: &'a str,
    /// `prerouting`, `postrouting`, `input`, ...
    pub hook: &'a str,
    pub prio: i32,
    /// `accept` or `drop`.
    pub policy: &'a str,
}

/// A chain definition; `hook: None` makes a regular chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDef<'a> {
    pub table: TableRef<'a>,
    pub name: &'a str,
    pub hook: Option<Hook<'a>>,
}

impl ChainDef<'_> {
    fn json(&self) -> Value {
        let mut c = json!({
            "family": self.table.family.as_str(),
            "table": self.table.name,
            "name": self.name,
        });
        if let (Some(h), Some(obj)) = (self.hook, c.as_object_mut()) {
            obj.insert("type".into(), h.chain_type.into());
            obj.insert("hook".into(), h.hook.into());
            obj.insert("prio".into(), h.prio.into());
            obj.insert("policy".into(), h.policy.into());
        }
        c
    }
}

/// A named set (or map, when `map` is set) definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetDef<'a> {
    pub table: TableRef<'a>,
    pub name: &'a str,
    /// Key data types, e.g. `["ipv4_addr"]`, or several for a concatenation.
    pub key: &'a [&'a str],
    /// Data type of a map's values (`"verdict"`, `"ipv4_addr"`...); `None` for a set.
    pub map: Option<&'a str>,
    /// `flags interval` (prefixes and ranges as keys).
    pub interval: bool,
}

impl SetDef<'_> {
    fn type_json(&self) -> Value {
        match self.key {
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        }
    }

    fn json(&self) -> Value {
        let mut s = json!({
            "family": self.table.family.as_str(),
            "table": self.table.name,
            "name": self.name,
            "type": self.type_json(),
        });
        if let Some(obj) = s.as_object_mut() {
            if let Some(m) = self.map {
                obj.insert("map".into(), m.into());
            }
            if self.interval {
                obj.insert("flags".into(), json!(["interval"]));
            }
        }
        s
    }

    fn kind(&self) -> &'static str {
        if self.map.is_some() { "map" } else { "set" }
    }
}

/// The key of a set element (or the key and value of a map element), as nft JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub key: Value,
    /// The value, for map elements.
    pub data: Option<Value>,
}

impl Key {
    pub fn new(key: Value) -> Key {
        Key { key, data: None }
    }

    /// A map element: `key : data`.
    pub fn mapping(key: Value, data: Value) -> Key {
        Key {
            key,
            data: Some(data),
        }
    }

    /// The element as `add element` takes it, with a comment when given.
    fn element(&self, comment: Option<&str>) -> Value {
        let key = match comment {
            Some(c) => json!({"elem": {"val": self.key, "comment": c}}),
            None => self.key.clone(),
        };
        match &self.data {
            Some(d) => json!([key, d]),
            None => key,
        }
    }
}

/// An address as an element key.
pub fn key_addr(addr: IpAddr) -> Value {
    Value::from(addr.to_string())
}

/// A prefix as an element key of an interval set; a full-length prefix is the plain address
/// (that is how nft lists it back).
pub fn key_prefix(addr: IpAddr, len: u8) -> Value {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if len >= full {
        key_addr(addr)
    } else {
        json!({"prefix": {"addr": addr.to_string(), "len": len}})
    }
}

/// A concatenation (`a . b`) as an element key.
pub fn key_concat(parts: Vec<Value>) -> Value {
    json!({"concat": parts})
}

// Rule expressions, in the JSON form `nft -j list` prints them (so CHECK can compare).

/// `left == right`.
pub fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

/// A packet field, e.g. `payload("ip", "saddr")`.
pub fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

/// A meta key, e.g. `meta("iifname")`.
pub fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

/// A reference to a named set or map (`@name`).
pub fn set_ref(set: &SetDef<'_>) -> Value {
    Value::from(format!("@{}", set.name))
}

/// What an element change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The attachment's own element: added with its comment, replacing an existing one.
    Own,
    /// Shared by attachments: added bare, an existing one kept as is.
    Share,
    /// Deleted; a missing one is no error.
    Remove,
}

/// Per-attachment elements of one set, kept typed so they can go to the kernel over netlink.
#[derive(Debug, Clone, PartialEq)]
struct ElementChange {
    family: Family,
    table: String,
    set: String,
    key_types: Vec<String>,
    map: Option<String>,
    interval: bool,
    keys: Vec<Key>,
    comment: Option<String>,
    change: Change,
}

impl ElementChange {
    fn element_json(&self, elems: Vec<Value>) -> Value {
        json!({"element": {
            "family": self.family.as_str(),
            "table": self.table,
            "name": self.set,
            "elem": elems,
        }})
    }

    /// The nft commands doing this change.
    fn json(&self, out: &mut Vec<Value>) {
        let bare: Vec<Value> = self.keys.iter().map(|k| k.element(None)).collect();
        out.push(json!({"add": self.element_json(bare.clone())}));
        match self.change {
            Change::Share => {}
            Change::Remove => out.push(json!({"delete": self.element_json(bare)})),
            Change::Own => {
                // Re-adding an existing element keeps its old comment, so an element left by
                // another attachment (say, an address released and handed out again) would
                // stay attributed to it, and its DEL or GC would strip ours: delete it
                // first, then add ours.
                out.push(json!({"delete": self.element_json(bare)}));
                let comment = self.comment.as_deref();
                let elems = self.keys.iter().map(|k| k.element(comment)).collect();
                out.push(json!({"add": self.element_json(elems)}));
            }
        }
    }

    /// The netlink messages doing this change; `replace`: an `Own` element may exist and is
    /// replaced (else it must not exist, and the transaction fails with EEXIST if it does).
    /// `None` when a key is of a kind only nft encodes.
    fn messages(&self, replace: bool) -> Option<Vec<netlink::ElementMsg>> {
        // A netlink attribute holds at most 64 KiB: a set of more keys than that fits goes
        // through nft, which splits it.
        if self.keys.len() > MAX_NETLINK_KEYS {
            return None;
        }
        let mut bare = Vec::new();
        let mut owned = Vec::new();
        for k in &self.keys {
            let key = netlink::encode_key(&self.key_types, self.interval, &k.key)?;
            let data = match (&self.map, &k.data) {
                (Some(ty), Some(d)) => Some(netlink::encode_data(ty, d)?),
                (None, None) => None,
                _ => return None,
            };
            bare.push(netlink::Element {
                key: key.clone(),
                data: data.clone(),
                comment: None,
            });
            owned.push(netlink::Element {
                key,
                data,
                comment: self.comment.clone(),
            });
        }
        let msg = |cmd, elements| netlink::ElementMsg {
            family: self.family,
            table: self.table.clone(),
            set: self.set.clone(),
            cmd,
            elements,
        };
        use netlink::ElementCmd::{Add, Create, Delete};
        Some(match (self.change, replace) {
            (Change::Share, _) => vec![msg(Add, bare)],
            (Change::Remove, _) => vec![msg(Add, bare.clone()), msg(Delete, bare)],
            (Change::Own, false) => vec![msg(Create, owned)],
            (Change::Own, true) => vec![
                msg(Add, bare.clone()),
                msg(Delete, bare),
                msg(Create, owned),
            ],
        })
    }
}

/// The family of this name.
pub(super) fn family_named(name: &str) -> Option<Family> {
    [
        Family::Inet,
        Family::Ip,
        Family::Ip6,
        Family::Bridge,
        Family::Arp,
        Family::Netdev,
    ]
    .into_iter()
    .find(|f| f.as_str() == name)
}

/// What a command of the fixed ruleset does, as far as the marker and the rule-count check
/// need to know.
#[derive(Debug, Clone, PartialEq)]
enum SetupKind {
    /// `add table`, `add set`, `add map`: no chain or rule.
    Other,
    /// `add chain`.
    Chain,
    /// `flush chain` of this chain.
    Flush(String),
    /// `add rule` to this chain.
    Rule(String),
}

/// A command of the fixed ruleset, kept as its JSON text: a parsed command is a tree of
/// maps that costs some KiB per rule, and a batch is built on every ADD and DEL while
/// usually only its element changes are sent.
#[derive(Debug, Clone, PartialEq)]
struct SetupCmd {
    text: String,
    family: String,
    table: String,
    kind: SetupKind,
}

impl SetupCmd {
    /// `{"<verb>": {"<object>": {...}}}` as the helpers of [`Batch`] make it.
    fn new(cmd: &Value) -> SetupCmd {
        let verb_obj = cmd.as_object().and_then(|o| o.iter().next());
        let (verb, object) = match verb_obj {
            Some((verb, obj)) => (verb.as_str(), obj.as_object().and_then(|o| o.iter().next())),
            None => ("", None),
        };
        let (object, body) = object.map_or(("", &Value::Null), |(k, v)| (k.as_str(), v));
        let field = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let kind = match (verb, object) {
            ("flush", "chain") => SetupKind::Flush(field("name")),
            (_, "chain") => SetupKind::Chain,
            (_, "rule") => SetupKind::Rule(field("chain")),
            _ => SetupKind::Other,
        };
        SetupCmd {
            text: cmd.to_string(),
            family: field("family"),
            table: field(if object == "table" { "name" } else { "table" }),
            kind,
        }
    }

    /// Chains and rules: what the marker vouches for. (Sets are created by every batch that
    /// uses them, so they need no marker.)
    fn writes_rules(&self) -> bool {
        self.kind != SetupKind::Other
    }
}

/// A table whose chains and rules a batch writes, and the hash of those (see [`Batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    family: Family,
    table: String,
    hash: u32,
}

impl Marker {
    /// `add map` and `flush map` of this table's marker map (its element is added after).
    fn map_commands(&self) -> [Value; 2] {
        let map =
            json!({"family": self.family.as_str(), "table": self.table, "name": SETUP_MARKER});
        let mut def = map.clone();
        if let Some(o) = def.as_object_mut() {
            o.insert("type".into(), "mark".into());
            o.insert("map".into(), "mark".into());
        }
        [json!({"add": {"map": def}}), json!({"flush": {"map": map}})]
    }
}

/// One transaction: the fixed ruleset (tables, sets, chains, rules), then per-attachment
/// element changes, applied all or nothing by [`apply_to_kernel`].
///
/// A table whose chains and rules the batch writes gets a marker: the map
/// [`SETUP_MARKER`] holding one element, `0 : <hash of those chains and rules>`. While the
/// marker holds this batch's hash, the ruleset is current and [`apply_to_kernel`] sends only
/// the element changes, over netlink (adding `0 : hash` fails when another hash is there,
/// or when the map is missing). Otherwise (first ADD, another version of the rules, a
/// flushed ruleset) the whole batch goes through `nft`, and sets the marker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Idempotent commands building the fixed ruleset.
    setup: Vec<SetupCmd>,
    /// Commands only `nft` runs (listed-element deletes, inserts into foreign chains...).
    other: Vec<Value>,
    elements: Vec<ElementChange>,
}

/// The most keys one element change sends over netlink (see [`ElementChange::messages`]).
const MAX_NETLINK_KEYS: usize = 128;

/// The name of the marker map; see [`Batch`].
pub const SETUP_MARKER: &str = "cnirs_setup";

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.setup.is_empty() && self.other.is_empty() && self.elements.is_empty()
    }

    /// Appends a raw command object such as `{"add": {"rule": {...}}}`, for what the helpers
    /// do not cover. A batch holding one always goes through `nft`.
    pub fn push(&mut self, cmd: Value) {
        self.other.push(cmd);
    }

    fn push_setup(&mut self, cmd: Value) {
        let cmd = SetupCmd::new(&cmd);
        if !self.setup.iter().any(|c| c.text == cmd.text) {
            self.setup.push(cmd);
        }
    }

    /// `add table` (idempotent).
    pub fn add_table(&mut self, table: TableRef<'_>) {
        self.push_setup(json!({"add": {"table": table.json()}}));
    }

    /// `add chain` (idempotent while its definition stays the same).
    pub fn add_chain(&mut self, chain: &ChainDef<'_>) {
        self.push_setup(json!({"add": {"chain": chain.json()}}));
    }

    /// `flush chain`: removes its rules (the chain must exist, e.g. added before in the batch).
    pub fn flush_chain(&mut self, chain: &ChainDef<'_>) {
        self.setup.push(SetupCmd::new(&json!({"flush": {"chain": {
            "family": chain.table.family.as_str(),
            "table": chain.table.name,
            "name": chain.name,
        }}})));
    }

    /// `add rule` to the end of `chain`, with the rule's statements (`expr`) as nft JSON.
    pub fn add_rule(&mut self, chain: &ChainDef<'_>, expr: Vec<Value>) {
        let mut rule = serde_json::Map::new();
        rule.insert("family".into(), chain.table.family.as_str().into());
        rule.insert("table".into(), chain.table.name.into());
        rule.insert("chain".into(), chain.name.into());
        rule.insert("expr".into(), Value::Array(expr));
        self.setup.push(SetupCmd::new(
            &json!({"add": {"rule": Value::Object(rule)}}),
        ));
    }

    /// Makes `chain` exist holding exactly `rules`, idempotently and without listing:
    /// `add table`, `add chain`, `flush chain`, then the rules.
    pub fn ensure_chain_rules(&mut self, chain: &ChainDef<'_>, rules: Vec<Vec<Value>>) {
        self.add_table(chain.table);
        self.add_chain(chain);
        self.flush_chain(chain);
        for r in rules {
            self.add_rule(chain, r);
        }
    }

    /// `add set` / `add map` (idempotent while its definition stays the same).
    pub fn add_set(&mut self, set: &SetDef<'_>) {
        self.push_setup(json!({"add": {set.kind(): set.json()}}));
    }

    fn change(&mut self, set: &SetDef<'_>, keys: &[Key], comment: Option<&str>, change: Change) {
        if keys.is_empty() {
            return;
        }
        self.add_table(set.table);
        self.add_set(set);
        self.elements.push(ElementChange {
            family: set.table.family,
            table: set.table.name.to_string(),
            set: set.name.to_string(),
            key_types: set.key.iter().map(|t| t.to_string()).collect(),
            map: set.map.map(str::to_string),
            interval: set.interval,
            keys: keys.to_vec(),
            comment: comment.map(str::to_string),
            change,
        });
    }

    /// `add element` for one attachment: every element carries `comment` (see
    /// [`attachment_comment`]) and replaces an element of the same key. Ensures the table
    /// and the set first. Nothing for no keys.
    pub fn add_attachment_elements(&mut self, set: &SetDef<'_>, comment: &str, keys: &[Key]) {
        self.change(set, keys, Some(comment), Change::Own);
    }

    /// `add element` without a comment, keeping an existing element as it is: for elements
    /// several attachments share.
    pub fn add_shared_elements(&mut self, set: &SetDef<'_>, keys: &[Key]) {
        self.change(set, keys, None, Change::Share);
    }

    /// Deletes elements by key without listing and without failing when they (or the table,
    /// or the set) are missing: `add table`, `add set`, `add element`, `delete element`.
    pub fn delete_known_elements(&mut self, set: &SetDef<'_>, keys: &[Key]) {
        self.change(set, keys, None, Change::Remove);
    }

    /// A batch deleting these elements by key ([`Batch::delete_known_elements`] each).
    pub fn deleting(elements: &[(&SetDef<'_>, Key)]) -> Batch {
        let mut b = Batch::new();
        for (set, key) in elements {
            b.delete_known_elements(set, std::slice::from_ref(key));
        }
        b
    }

    /// Deletes the listed elements of `listing` whose comment satisfies `pick`. Each is added
    /// back first (by its listed key), so the batch does not fail if one vanished meanwhile.
    /// Returns how many elements it deletes.
    pub fn delete_listed_elements(
        &mut self,
        listing: &TableListing,
        pick: &dyn Fn(&str) -> bool,
    ) -> usize {
        let mut n = 0;
        for set in &listing.sets {
            let elems: Vec<Value> = set
                .elements
                .iter()
                .filter(|e| e.comment.as_deref().is_some_and(pick))
                .map(ListedElement::key_json)
                .collect();
            if elems.is_empty() {
                continue;
            }
            n += elems.len();
            let obj = json!({
                "family": listing.family.as_str(),
                "table": listing.name,
                "name": set.name,
                "elem": elems,
            });
            self.push(json!({"add": {"element": obj.clone()}}));
            self.push(json!({"delete": {"element": obj}}));
        }
        n
    }

    /// The tables whose chains or rules this batch writes, each with the hash of those.
    fn markers(&self) -> Vec<Marker> {
        let mut tables: Vec<(&str, &str)> = Vec::new();
        for cmd in self.setup.iter().filter(|c| c.writes_rules()) {
            let t = (cmd.family.as_str(), cmd.table.as_str());
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        tables
            .into_iter()
            .filter_map(|(family, table)| {
                let refs: Vec<&str> = self
                    .setup
                    .iter()
                    .filter(|c| c.writes_rules() && c.family == family && c.table == table)
                    .map(|c| c.text.as_str())
                    .collect();
                let h = fnv1a64(&refs);
                Some(Marker {
                    family: family_named(family)?,
                    table: table.to_string(),
                    // 0 is what forget_setup_in_kernel writes.
                    hash: ((h ^ (h >> 32)) as u32).max(1),
                })
            })
            .collect()
    }

    /// The rules each chain this batch rewrites (flushes, then fills) must hold in `table`.
    fn expected_rule_counts(&self, family: &str, table: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for cmd in self.setup.iter() {
            if cmd.family != family || cmd.table != table {
                continue;
            }
            match &cmd.kind {
                SetupKind::Flush(chain) => {
                    counts.entry(chain.clone()).or_insert(0);
                }
                SetupKind::Rule(chain) => *counts.entry(chain.clone()).or_insert(0) += 1,
                SetupKind::Chain | SetupKind::Other => {}
            }
        }
        counts
    }

    /// Kernel: true when every chain this batch rewrites holds as many rules as the batch
    /// gives it (a dump of each marked table's rules on `nl`, no `nft`). Catches what the
    /// marker cannot: chains flushed or deleted, rules deleted or added, by hand or by a tool.
    fn rules_in_place_in_kernel(&self, nl: &mut NfSocket, markers: &[Marker]) -> Result<bool> {
        for m in markers {
            let (family, table) = (m.family.as_str(), m.table.as_str());
            let Some(counts) = netlink::rule_counts(nl, m.family, table)? else {
                return Ok(false);
            };
            for (chain, want) in self.expected_rule_counts(family, table) {
                let have = counts.get(&chain).copied().unwrap_or(0);
                if have != want {
                    log::debug!(
                        "{family} {table} {chain}: {have} rules, {want} expected: rewriting"
                    );
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The element changes as netlink messages, behind the marker of every table whose
    /// ruleset the batch writes (a missing marker fails the transaction with ENOENT).
    /// `None` when the batch holds something only `nft` does.
    fn netlink_messages(
        &self,
        markers: &[Marker],
        replace: bool,
    ) -> Option<Vec<netlink::ElementMsg>> {
        if !self.other.is_empty() || self.elements.is_empty() {
            return None;
        }
        let mut msgs: Vec<netlink::ElementMsg> = markers
            .iter()
            .map(|m| {
                netlink::ElementMsg::marker(m.family, &m.table, netlink::ElementCmd::Add, m.hash)
            })
            .collect();
        for e in &self.elements {
            msgs.extend(e.messages(replace)?);
        }
        Some(msgs)
    }

    /// The whole batch as netlink messages, as `nft` would run [`Batch::to_json`]: the fixed
    /// ruleset, each marker map emptied and given this batch's hash, then the element
    /// changes with own elements replaced. `None` when something in it is not of the forms
    /// [`setup`] encodes, or only `nft` does it.
    fn setup_netlink_messages(&self, markers: &[Marker]) -> Option<Vec<netlink::RawMsg>> {
        if !self.other.is_empty() {
            return None;
        }
        let mut cmds: Vec<Value> = self
            .setup
            .iter()
            .map(|c| serde_json::from_str(&c.text).ok())
            .collect::<Option<_>>()?;
        for m in markers {
            cmds.extend(m.map_commands());
        }
        let mut msgs = setup::setup_messages(&cmds)?;
        for m in markers {
            let add = netlink::ElementCmd::Add;
            msgs.push(netlink::ElementMsg::marker(m.family, &m.table, add, m.hash).raw());
        }
        for e in &self.elements {
            msgs.extend(e.messages(true)?.iter().map(netlink::ElementMsg::raw));
        }
        Some(msgs)
    }

    /// [`Batch::netlink_messages`] with this batch's own markers.
    #[cfg(test)]
    fn messages_for_test(&self, replace: bool) -> Option<Vec<netlink::ElementMsg>> {
        self.netlink_messages(&self.markers(), replace)
    }

    /// The whole batch as nft takes it on stdin (with the marker sets).
    pub fn to_json(&self) -> Value {
        // The commands were made by serde_json, so their text parses back.
        let mut cmds: Vec<Value> = self
            .setup
            .iter()
            .filter_map(|c| serde_json::from_str(&c.text).ok())
            .collect();
        for m in self.markers() {
            cmds.extend(m.map_commands());
            cmds.push(json!({"add": {"element": {
                "family": m.family.as_str(),
                "table": m.table,
                "name": SETUP_MARKER,
                "elem": [[0, m.hash]],
            }}}));
        }
        cmds.extend(self.other.iter().cloned());
        for e in &self.elements {
            e.json(&mut cmds);
        }
        json!({"nftables": cmds})
    }
}

/// An element as `nft -j list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedElement {
    /// The key (`val`), as listed.
    pub key: Value,
    /// A map element's value.
    pub data: Option<Value>,
    pub comment: Option<String>,
}

impl ListedElement {
    fn parse(v: &Value) -> ListedElement {
        // A map element is `[key, data]`; a key with a comment is `{"elem": {"val", "comment"}}`.
        let (k, data) = match v.as_array().map(Vec::as_slice) {
            Some([k, d]) => (k, Some(d.clone())),
            _ => (v, None),
        };
        match k.get("elem") {
            Some(e) => ListedElement {
                key: e.get("val").cloned().unwrap_or(Value::Null),
                data,
                comment: e.get("comment").and_then(Value::as_str).map(str::to_string),
            },
            None => ListedElement {
                key: k.clone(),
                data,
                comment: None,
            },
        }
    }

    /// The element as a `delete element` command takes it (key only; for maps, with data).
    fn key_json(&self) -> Value {
        match &self.data {
            Some(d) => json!([self.key, d]),
            None => self.key.clone(),
        }
    }
}

/// A set or map as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedSet {
    pub name: String,
    pub elements: Vec<ListedElement>,
}

/// A chain as listed, with the statements of each rule in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedChain {
    pub name: String,
    pub rules: Vec<Vec<Value>>,
}

/// One table as `nft -j list table` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableListing {
    pub family: Family,
    pub name: String,
    pub sets: Vec<ListedSet>,
    pub chains: Vec<ListedChain>,
}

impl TableListing {
    /// Reads `nft -j list table` output (objects of other tables are ignored).
    pub fn parse(table: TableRef<'_>, doc: &Value) -> Result<TableListing> {
        let objects = doc
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Nft(format!("listing {table}: no \"nftables\" array")))?;
        let mut listing = TableListing {
            family: table.family,
            name: table.name.to_string(),
            sets: Vec::new(),
            chains: Vec::new(),
        };
        let mine = |o: &Value| {
            o.get("family").and_then(Value::as_str) == Some(table.family.as_str())
                && o.get("table").and_then(Value::as_str) == Some(table.name)
        };
        for obj in objects {
            if let Some(s) = obj.get("set").or_else(|| obj.get("map")) {
                // The marker map is bookkeeping, not a set of the ruleset.
                if !mine(s) || s.get("name").and_then(Value::as_str) == Some(SETUP_MARKER) {
                    continue;
                }
                let elements = s
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(ListedElement::parse).collect())
                    .unwrap_or_default();
                listing.sets.push(ListedSet {
                    name: s.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    elements,
                });
            } else if let Some(c) = obj.get("chain") {
                if mine(c) {
                    listing.chains.push(ListedChain {
                        name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                        rules: Vec::new(),
                    });
                }
            } else if let Some(r) = obj.get("rule") {
                if !mine(r) {
                    continue;
                }
                let chain = r.get("chain").and_then(Value::as_str).unwrap_or("");
                let expr = r
                    .get("expr")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if let Some(c) = listing.chains.iter_mut().find(|c| c.name == chain) {
                    c.rules.push(expr);
                }
            }
        }
        Ok(listing)
    }

    pub fn set(&self, name: &str) -> Option<&ListedSet> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn chain(&self, name: &str) -> Option<&ListedChain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// True when `set` holds an element with this key, carrying this comment.
    pub fn has_element(&self, set: &str, key: &Key, comment: &str) -> bool {
        self.set(set).is_some_and(|s| {
            s.elements.iter().any(|e| {
                e.key == key.key && e.data == key.data && e.comment.as_deref() == Some(comment)
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// Comments that name an attachment

/// The network part of a comment: the name itself when it has at most 40 bytes, else its
/// first 23 bytes, `~` and 16 hex digits of its hash (network names never contain `~`).
fn network_tag(network: &str) -> String {
    if network.len() <= NET_TAG_MAX {
        network.to_string()
    } else {
        format!("{}~{:016x}", cut(network, 23), fnv1a64(&[network]))
    }
}

/// The comment every element of one attachment carries: `<network>/<containerID>/<ifname>`.
///
/// It is at most [`COMMENT_MAX`] bytes. A network name longer than 40 bytes is shortened to
/// 23 bytes + `~` + a 16-hex-digit hash; when `<containerID>/<ifname>` still does not fit, it
/// becomes a cut container ID + `~` + a hash of both. Names valid in CNI contain neither `/`
/// nor `~`, so comments of different attachments never collide (up to the 64-bit hash), and
/// the network stays matchable: see [`comment_is_in_network`].
pub fn attachment_comment(network: &str, container_id: &str, ifname: &str) -> String {
    let net = network_tag(network);
    let room = COMMENT_MAX - net.len() - 1;
    let att = if container_id.len() + 1 + ifname.len() <= room {
        format!("{container_id}/{ifname}")
    } else {
        let hash = format!("~{:016x}", fnv1a64(&[container_id, ifname]));
        format!("{}{hash}", cut(container_id, room - hash.len()))
    };
    format!("{net}/{att}")
}

/// True when `comment` was made by [`attachment_comment`] for this network.
pub fn comment_is_in_network(comment: &str, network: &str) -> bool {
    comment
        .strip_prefix(network_tag(network).as_str())
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A picker for [`delete_elements_by_comment_in_kernel`]: exactly this attachment's elements.
pub fn comment_is_attachment(
    network: &str,
    container_id: &str,
    ifname: &str,
) -> impl Fn(&str) -> bool + use<> {
    let want = attachment_comment(network, container_id, ifname);
    move |c: &str| c == want
}

/// A picker for GC: elements of `network` whose attachment is not in `valid`.
pub fn comment_is_stale(network: &str, valid: &[Attachment]) -> impl Fn(&str) -> bool + use<> {
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| attachment_comment(network, &a.container_id, &a.ifname))
        .collect();
    let network = network.to_string();
    move |c: &str| comment_is_in_network(c, &network) && !keep.contains(c)
}

// ---------------------------------------------------------------------------------------
// Running nft

/// The `nft` binary: the first `nft` in PATH, else /usr/sbin/nft or /sbin/nft.
pub fn nft_path() -> Result<PathBuf> {
    let from_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nft")).collect())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nft"), PathBuf::from("/sbin/nft")])
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::Nft("nft binary not found in PATH, /usr/sbin or /sbin".into()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs nft with `args`, feeding `stdin`; returns stdout, or stderr as the error.
fn run_nft(args: &[&str], stdin: Option<&[u8]>) -> Result<std::result::Result<Vec<u8>, String>> {
    let nft = nft_path()?;
    let mut child = Command::new(&nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("running {}: {e}", nft.display())))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads all of its input before it writes anything, so this cannot deadlock.
        pipe.write_all(input)
            .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(Ok(out.stdout))
    } else {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = format!("nft exited with {}", out.status);
        }
        Ok(Err(msg))
    }
}

/// Kernel: applies `batch` as ONE transaction, all or nothing, over nf_tables netlink and
/// with no process: only its element changes when its ruleset is current (its markers exist,
/// see [`Batch`]), else the whole batch, ruleset included (see `setup`). A batch holding
/// what this crate does not encode (raw commands, rule forms `setup` does not know) goes
/// through one `nft -j -f -` instead. An empty batch does nothing.
pub fn apply_to_kernel(batch: &Batch) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    match apply_over_netlink(batch) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => log::debug!("nf_tables over netlink: {e}; the whole batch through nft"),
    }
    apply_with_nft(batch)
}

/// Kernel: the batch's element changes as one nf_tables transaction over one socket, when
/// its rules are in place, else the whole batch (see [`apply_setup_over_netlink`]); `false`
/// when the batch must go through `nft` (nothing changed).
fn apply_over_netlink(batch: &Batch) -> Result<bool> {
    let markers = batch.markers();
    let mut nl = NfSocket::open("nftables")?;
    // First try: own elements must be new (the usual case), so nothing is deleted; a
    // deleting transaction costs an RCU grace period when the socket closes.
    let Some(msgs) = batch.netlink_messages(&markers, false) else {
        return apply_setup_over_netlink(batch, nl, &markers);
    };
    if !batch.rules_in_place_in_kernel(&mut nl, &markers)? {
        return apply_setup_over_netlink(batch, nl, &markers);
    }
    let msgs: Vec<netlink::RawMsg> = msgs.iter().map(netlink::ElementMsg::raw).collect();
    let mut outcome = netlink::transact(&mut nl, &msgs)?;
    let mut sent = msgs;
    // One of our own elements exists already (not a marker): replace it.
    if matches!(outcome, netlink::Outcome::Refused(e, Some(i)) if e == libc::EEXIST && i >= markers.len())
    {
        log::debug!("an element exists already: replacing it");
        let Some(msgs) = batch.netlink_messages(&markers, true) else {
            return Ok(false);
        };
        let msgs: Vec<netlink::RawMsg> = msgs.iter().map(netlink::ElementMsg::raw).collect();
        outcome = netlink::transact(&mut nl, &msgs)?;
        sent = msgs;
    }
    match outcome {
        netlink::Outcome::Committed => {
            netlink::release(nl, &sent, outcome);
            Ok(true)
        }
        netlink::Outcome::Refused(errno, _) => {
            log::debug!(
                "nf_tables refused the element transaction ({}): writing the ruleset too",
                std::io::Error::from_raw_os_error(errno)
            );
            apply_setup_over_netlink(batch, nl, &markers)
        }
    }
}

/// How [`apply_to_kernel_via`] writes a batch.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Nft,
    Netlink,
}

/// Kernel: the whole batch through `nft`, or over netlink ruleset included (false when it
/// cannot be encoded, or the kernel refused it). For tests holding one to the other.
#[doc(hidden)]
pub fn apply_to_kernel_via(batch: &Batch, via: Via) -> Result<bool> {
    match via {
        Via::Nft => apply_with_nft(batch).map(|()| true),
        Via::Netlink => {
            let nl = NfSocket::open("nftables")?;
            apply_setup_over_netlink(batch, nl, &batch.markers())
        }
    }
}

/// Kernel: the whole batch, ruleset included, as one transaction on `nl` (see
/// [`Batch::setup_netlink_messages`]): a network's first ADD, new rules, a damaged or
/// flushed ruleset. False when the batch holds what only `nft` does, or the kernel refused
/// it (nothing changed): the caller then runs `nft`.
fn apply_setup_over_netlink(batch: &Batch, mut nl: NfSocket, markers: &[Marker]) -> Result<bool> {
    let Some(msgs) = batch.setup_netlink_messages(markers) else {
        return Ok(false);
    };
    let outcome = netlink::transact(&mut nl, &msgs)?;
    netlink::release(nl, &msgs, outcome);
    match outcome {
        netlink::Outcome::Committed => Ok(true),
        netlink::Outcome::Refused(errno, at) => {
            // EINVAL or EOPNOTSUPP point at an encoding the kernel does not take (an older
            // kernel, or a gap of `setup`): worth seeing, as it costs an nft run each time.
            let level = if matches!(errno, libc::EINVAL | libc::EOPNOTSUPP) {
                log::Level::Warn
            } else {
                log::Level::Debug
            };
            log::log!(
                level,
                "nf_tables refused the ruleset transaction ({}, message {at:?}): through nft",
                std::io::Error::from_raw_os_error(errno)
            );
            Ok(false)
        }
    }
}

/// Kernel: how CHECK ends for rules in `tables`: Ok when nothing is `missing`; otherwise an
/// error `"{what}: {missing, joined}"` (999), after forgetting the tables' rule version so
/// that the next ADD repairs them ([`forget_setup_in_kernel`]).
pub fn check_outcome_in_kernel(
    tables: &[TableRef<'_>],
    what: &str,
    missing: &[String],
) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    forget_setup_in_kernel(tables);
    Err(Error::Internal(format!("{what}: {}", missing.join("; "))))
}

/// Kernel: forgets the version of these tables' rules that [`Batch`] recorded, so the next
/// ADD writes their chains and rules again: for CHECK, when it finds them damaged. Missing
/// tables or markers are fine; a failure is only logged (CHECK reports the damage anyway).
pub fn forget_setup_in_kernel(tables: &[TableRef<'_>]) {
    for t in tables {
        // `0 : 0`, which no batch's hash matches (an absent element would be added back by
        // the next ADD and trusted).
        let msg = |cmd| netlink::ElementMsg::marker(t.family, t.name, cmd, 0);
        let msgs = [
            msg(netlink::ElementCmd::Delete).raw(),
            msg(netlink::ElementCmd::Add).raw(),
        ];
        let res = NfSocket::open("nftables").and_then(|mut nl| {
            let mut sent = &msgs[..];
            let mut res = netlink::transact(&mut nl, sent)?;
            if matches!(res, netlink::Outcome::Refused(e, Some(0)) if e == libc::ENOENT) {
                // No element to replace (an emptied map): add it.
                sent = &msgs[1..];
                res = netlink::transact(&mut nl, sent)?;
            }
            netlink::release(nl, sent, res);
            Ok(res)
        });
        match res {
            Ok(netlink::Outcome::Committed) => {
                log::info!("table {t}: the next ADD writes its chains and rules again");
            }
            Ok(netlink::Outcome::Refused(errno, _)) if errno == libc::ENOENT => {}
            Ok(netlink::Outcome::Refused(errno, _)) => log::warn!(
                "table {t}: could not forget the rules' version: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            Err(e) => log::warn!("table {t}: could not forget the rules' version: {e}"),
        }
    }
}

/// Kernel: runs an nft script in text syntax (`nft -f -`) as one transaction. `Ok(Err)`
/// carries nft's message when it refused the script (nothing changed).
pub fn apply_text_to_kernel(script: &str) -> Result<std::result::Result<(), String>> {
    log::debug!("nft -f -: {script}");
    Ok(run_nft(&["-f", "-"], Some(script.as_bytes()))?.map(drop))
}

/// Kernel: the whole batch through ONE `nft -j -f -` process.
fn apply_with_nft(batch: &Batch) -> Result<()> {
    let input = serde_json::to_vec(&batch.to_json())
        .map_err(|e| Error::Internal(format!("encoding nft batch: {e}")))?;
    log::debug!("nft -j -f -: {}", String::from_utf8_lossy(&input));
    match run_nft(&["-j", "-f", "-"], Some(&input))? {
        Ok(_) => Ok(()),
        Err(stderr) => Err(Error::Nft(format!("nft: {stderr}"))),
    }
}

/// Kernel: `nft -j list table FAMILY NAME`. A missing table is `None`, not an error.
pub fn list_table_from_kernel(table: TableRef<'_>) -> Result<Option<TableListing>> {
    let fam = table.family.as_str();
    match run_nft(&["-j", "list", "table", fam, table.name], None)? {
        Ok(stdout) => {
            let doc: Value = serde_json::from_slice(&stdout)
                .map_err(|e| Error::Nft(format!("listing table {table}: {e}")))?;
            TableListing::parse(table, &doc).map(Some)
        }
        Err(stderr) if stderr.contains("No such file or directory") => Ok(None),
        Err(stderr) => Err(Error::Nft(format!("listing table {table}: {stderr}"))),
    }
}

/// Kernel: lists each table (one `nft list` per table) and deletes, in ONE transaction, the
/// elements of all their sets and maps whose comment satisfies `pick`. Missing tables are
/// skipped. Returns how many elements were deleted (no transaction when none).
pub fn delete_elements_by_comment_in_kernel(
    tables: &[TableRef<'_>],
    pick: &dyn Fn(&str) -> bool,
) -> Result<usize> {
    let mut batch = Batch::new();
    let mut n = 0;
    for t in tables {
        if let Some(listing) = list_table_from_kernel(*t)? {
            n += batch.delete_listed_elements(&listing, pick);
        }
    }
    apply_to_kernel(&batch)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TableRef<'static> = TableRef {
        family: Family::Inet,
        name: "t",
    };
    const S: SetDef<'static> = SetDef {
        table: T,
        name: "s",
        key: &["ipv4_addr", "ipv4_addr"],
        map: None,
        interval: true,
    };

    #[test]
    fn comment_plain_when_it_fits() {
        let c = attachment_comment("mynet", &"a".repeat(64), "eth0");
        assert_eq!(c, format!("mynet/{}/eth0", "a".repeat(64)));
        assert!(comment_is_in_network(&c, "mynet"));
        assert!(!comment_is_in_network(&c, "mynet2"));
        assert!(!comment_is_in_network(&c, "myne"));
    }

    #[test]
    fn comment_long_names_are_hashed_and_bounded() {
        let long_net = "n".repeat(200);
        let other_long = format!("{}x", "n".repeat(199));
        let cid = "c".repeat(300);
        let c = attachment_comment(&long_net, &cid, "eth0");
        assert!(c.len() <= COMMENT_MAX, "{} bytes", c.len());
        assert!(comment_is_in_network(&c, &long_net));
        assert!(!comment_is_in_network(&c, &other_long));
        assert_ne!(c, attachment_comment(&long_net, &cid, "eth1"));
        assert_ne!(c, attachment_comment(&long_net, &format!("{cid}d"), "eth0"));
        // Deterministic.
        assert_eq!(c, attachment_comment(&long_net, &cid, "eth0"));
        for n in 0..300 {
            let c = attachment_comment(&"x".repeat(n), &"y".repeat(300 - n), "eth0");
            assert!(c.len() <= COMMENT_MAX);
        }
    }

    #[test]
    fn stale_picker_keeps_valid_and_other_networks() {
        let valid = vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        let stale = comment_is_stale("net", &valid);
        assert!(!stale(&attachment_comment("net", "c1", "eth0")));
        assert!(stale(&attachment_comment("net", "c1", "eth1")));
        assert!(stale(&attachment_comment("net", "c2", "eth0")));
        assert!(!stale(&attachment_comment("net2", "c2", "eth0")));
        assert!(!stale("something else"));
    }

    #[test]
    fn add_and_known_delete_json() {
        let key = Key::new(key_concat(vec![
            key_addr("10.0.0.5".parse().unwrap()),
            key_prefix("10.0.0.0".parse().unwrap(), 24),
        ]));
        let mut b = Batch::new();
        b.add_attachment_elements(&S, "n/c/eth0", std::slice::from_ref(&key));
        b.delete_known_elements(&S, &[key]);
        let concat = json!({"concat": ["10.0.0.5", {"prefix": {"addr": "10.0.0.0", "len": 24}}]});
        let set = json!({"family": "inet", "table": "t", "name": "s",
            "type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]});
        // The table and the set once, then the changes; no rules, so no marker.
        assert_eq!(
            b.to_json(),
            json!({"nftables": [
                {"add": {"table": {"family": "inet", "name": "t"}}},
                {"add": {"set": set}},
                {"add": {"element": {"family": "inet", "table": "t", "name": "s", "elem": [concat]}}},
                {"delete": {"element": {"family": "inet", "table": "t", "name": "s", "elem": [concat]}}},
                {"add": {"element": {"family": "inet", "table": "t", "name": "s",
                    "elem": [{"elem": {"val": concat, "comment": "n/c/eth0"}}]}}},
                {"add": {"element": {"family": "inet", "table": "t", "name": "s", "elem": [concat]}}},
                {"delete": {"element": {"family": "inet", "table": "t", "name": "s", "elem": [concat]}}},
            ]})
        );
        // Over netlink: the own element must be new, then the delete (added first).
        let msgs = b.messages_for_test(false).unwrap();
        let cmds: Vec<_> = msgs.iter().map(|m| m.cmd).collect();
        use netlink::ElementCmd::{Add, Create, Delete};
        assert_eq!(cmds, vec![Create, Add, Delete]);
        assert_eq!(msgs[0].elements[0].comment.as_deref(), Some("n/c/eth0"));
        assert_eq!(
            msgs[0].elements[0].key.start,
            vec![10, 0, 0, 5, 10, 0, 0, 0]
        );
        assert_eq!(
            msgs[0].elements[0].key.end,
            Some(vec![10, 0, 0, 5, 10, 0, 0, 255])
        );
        let replacing: Vec<_> = b
            .messages_for_test(true)
            .unwrap()
            .iter()
            .map(|m| m.cmd)
            .collect();
        assert_eq!(replacing, vec![Add, Delete, Create, Add, Delete]);
        let mut empty = Batch::new();
        empty.add_attachment_elements(&S, "x", &[]);
        empty.delete_known_elements(&S, &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn full_length_prefix_is_an_address() {
        assert_eq!(
            key_prefix("10.0.0.5".parse().unwrap(), 32),
            json!("10.0.0.5")
        );
        assert_eq!(
            key_prefix("fd00::5".parse().unwrap(), 128),
            json!("fd00::5")
        );
        assert_eq!(
            key_prefix("fd00::".parse().unwrap(), 64),
            json!({"prefix": {"addr": "fd00::", "len": 64}})
        );
    }

    #[test]
    fn chain_with_rules_json() {
        let chain = ChainDef {
            table: T,
            name: "post",
            hook: Some(Hook {
                chain_type: "nat",
                hook: "postrouting",
                prio: 100,
                policy: "accept",
            }),
        };
        let mut b = Batch::new();
        b.ensure_chain_rules(&chain, vec![vec![json!({"masquerade": null})]]);
        let cmds = b.to_json()["nftables"].as_array().unwrap().clone();
        assert_eq!(
            cmds[..4],
            [
                json!({"add": {"table": {"family": "inet", "name": "t"}}}),
                json!({"add": {"chain": {"family": "inet", "table": "t", "name": "post",
                    "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
                json!({"flush": {"chain": {"family": "inet", "table": "t", "name": "post"}}}),
                json!({"add": {"rule": {"family": "inet", "table": "t", "chain": "post",
                    "expr": [{"masquerade": null}]}}}),
            ]
        );
        // The rules are guarded by the marker map, holding their hash.
        assert_eq!(cmds[4]["add"]["map"]["name"], SETUP_MARKER);
        assert_eq!(cmds[5]["flush"]["map"]["name"], SETUP_MARKER);
        let hash = cmds[6]["add"]["element"]["elem"][0][1].as_u64().unwrap();
        assert_eq!(cmds.len(), 7);
        // Without elements there is nothing for netlink to do.
        assert!(b.messages_for_test(false).is_none());
        // With one, the marker goes first: a missing marker fails the transaction.
        b.add_attachment_elements(
            &S,
            "n/c/eth0",
            &[Key::new(json!({"concat": ["10.0.0.1", "10.0.0.2"]}))],
        );
        let msgs = b.messages_for_test(false).unwrap();
        assert_eq!(msgs[0].set, SETUP_MARKER);
        assert_eq!(
            msgs[0].elements[0].data,
            Some((hash as u32).to_ne_bytes().to_vec())
        );
        assert_eq!(msgs.len(), 2);
        // Other rules, another marker; a raw command sends everything through nft.
        let mut other = Batch::new();
        other.ensure_chain_rules(&chain, vec![vec![json!({"accept": null})]]);
        assert_ne!(u64::from(other.markers()[0].hash), hash);
        b.push(json!({"x": 1}));
        assert!(b.messages_for_test(false).is_none());
    }

    #[test]
    fn listing_parse_and_delete_by_comment() {
        // Shaped like `nft -j list table inet t` output.
        let doc = json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"set": {"family": "inet", "name": "a", "table": "t", "type": "ipv4_addr", "handle": 2,
                "elem": [{"elem": {"val": "10.0.0.5", "comment": "n/c1/eth0"}},
                         {"elem": {"val": "10.0.0.6", "comment": "n/c2/eth0"}},
                         "10.0.0.7"]}},
            {"map": {"family": "inet", "name": "m", "table": "t", "type": "ipv4_addr",
                "map": "verdict", "handle": 3,
                "elem": [[{"elem": {"val": "10.0.0.5", "comment": "n/c1/eth0"}}, {"accept": null}]]}},
            {"set": {"family": "inet", "name": "empty", "table": "t", "type": "ipv4_addr", "handle": 4}},
            {"chain": {"family": "inet", "table": "t", "name": "c", "handle": 1}},
            {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 5,
                "expr": [{"accept": null}]}},
        ]});
        let l = TableListing::parse(T, &doc).unwrap();
        assert_eq!(l.sets.len(), 3);
        assert_eq!(
            l.chain("c").unwrap().rules,
            vec![vec![json!({"accept": null})]]
        );
        assert!(l.has_element("a", &Key::new(json!("10.0.0.5")), "n/c1/eth0"));
        assert!(!l.has_element("a", &Key::new(json!("10.0.0.5")), "n/c2/eth0"));
        assert!(l.has_element(
            "m",
            &Key::mapping(json!("10.0.0.5"), json!({"accept": null})),
            "n/c1/eth0"
        ));
        let mut b = Batch::new();
        let n = b.delete_listed_elements(&l, &|c| c == "n/c1/eth0");
        assert_eq!(n, 2);
        assert_eq!(
            b.to_json()["nftables"],
            json!([
                {"add": {"element": {"family": "inet", "table": "t", "name": "a", "elem": ["10.0.0.5"]}}},
                {"delete": {"element": {"family": "inet", "table": "t", "name": "a", "elem": ["10.0.0.5"]}}},
                {"add": {"element": {"family": "inet", "table": "t", "name": "m",
                    "elem": [["10.0.0.5", {"accept": null}]]}}},
                {"delete": {"element": {"family": "inet", "table": "t", "name": "m",
                    "elem": [["10.0.0.5", {"accept": null}]]}}},
            ])
        );
    }

    #[test]
    fn nft_is_found() {
        // This machine has nft; the lookup must find it (PATH or the sbin fallbacks).
        if Path::new("/usr/sbin/nft").exists() {
            assert!(nft_path().is_ok());
        }
    }
}
