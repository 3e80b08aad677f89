//! The portmap plugin's nftables objects: one table per network, fixed chains, and per
//! attachment only map and set elements.
//!
//! ```text
//! table inet cnirs_portmap_<network> {
//!   # hostIP . proto . hostPort → container address / port (mappings with a hostIP)
//!   map addr4_ip { type ipv4_addr . inet_proto . inet_service : ipv4_addr }
//!   map port4_ip { type ipv4_addr . inet_proto . inet_service : inet_service }
//!   # proto . hostPort → container address / port (mappings on every local address)
//!   map addr4    { type inet_proto . inet_service : ipv4_addr }
//!   map port4    { type inet_proto . inet_service : inet_service }
//!   map addr6_ip, port6_ip, addr6, port6       # the same for IPv6
//!   set hairpin4 { type ipv4_addr . ipv4_addr }  # container . container (snat)
//!   set masq4    { type ipv4_addr }              # container (snat: localhost, masqAll)
//!   set hairpin6, masq6
//!
//!   chain prerouting { type nat hook prerouting priority dstnat;
//!     meta nfproto ipv4 fib daddr type local jump conditions4
//!     meta nfproto ipv6 fib daddr type local jump conditions6 }
//!   chain output { type nat hook output priority dstnat; (the same two rules) }
//!   chain conditions4 { [conditionsV4] goto hostports4 }
//!   chain conditions6 { [conditionsV6] goto hostports6 }
//!   chain hostports4 {
//!     dnat ip to ip daddr . meta l4proto . th dport map @addr4_ip
//!              : ip daddr . meta l4proto . th dport map @port4_ip
//!     dnat ip to meta l4proto . th dport map @addr4 : meta l4proto . th dport map @port4 }
//!   chain hostports6 { (the same with ip6) }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ct status dnat ip saddr . ip daddr @hairpin4 masquerade            # snat
//!     ct status dnat ip saddr 127.0.0.0/8 ip daddr @masq4 masquerade     # snat
//!     ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade          # snat
//!     ct status dnat ip daddr @masq4 masquerade                          # snat + masqAll
//!     ct status dnat ip6 daddr @masq6 masquerade }                       # snat + masqAll
//! }
//! ```
//!
//! Only traffic to a local address (`fib daddr type local`) is ever rewritten, so a mapping
//! with a hostIP that is not this host's catches nothing. A mapping with a hostIP is looked
//! up before the mappings on every address.
//!
//! A table per network holds what is per network in the config: the conditions and the
//! snat/masqAll rules, rewritten by every ADD in the same transaction as its elements. Each
//! element carries [`common::nft::attachment_comment`], so DEL with known keys is one
//! transaction without listing, and DEL without them and GC find elements by comment.
//!
//! Two attachments of one network cannot map the same host address, protocol and port:
//! the second ADD fails (`File exists`) instead of shadowing the first silently.

use crate::config::{Mapping, Proto};
use common::error::{Error, Result};
use common::nft::{
    self, Batch, ChainDef, Family, Hook, Key, SetDef, TableListing, TableRef, attachment_comment,
    matches, payload, reference, set_ref,
};
use common::spec::config::Attachment;
use serde_json::{Value, json};
use std::net::IpAddr;

/// Table names start with this; the network name follows.
pub const TABLE_PREFIX: &str = "cnirs_portmap_";

/// The longest network name used as is in a table name.
const NET_IN_NAME_MAX: usize = 200;

/// `cnirs_portmap_<network>`; a network name longer than 200 bytes is cut to 180 and
/// followed by `_` and 16 hex digits of its hash (nft names hold 255 bytes).
pub fn table_name(network: &str) -> String {
    if network.len() <= NET_IN_NAME_MAX {
        format!("{TABLE_PREFIX}{network}")
    } else {
        let head = common::naming::cut(network, 180);
        format!(
            "{TABLE_PREFIX}{head}_{:016x}",
            common::naming::fnv1a64(&[network])
        )
    }
}

/// The objects of one network's table.
pub struct Objects<'a> {
    pub table: TableRef<'a>,
    pub addr4_ip: SetDef<'a>,
    pub port4_ip: SetDef<'a>,
    pub addr4: SetDef<'a>,
    pub port4: SetDef<'a>,
    pub addr6_ip: SetDef<'a>,
    pub port6_ip: SetDef<'a>,
    pub addr6: SetDef<'a>,
    pub port6: SetDef<'a>,
    pub hairpin4: SetDef<'a>,
    pub hairpin6: SetDef<'a>,
    pub masq4: SetDef<'a>,
    pub masq6: SetDef<'a>,
    pub prerouting: ChainDef<'a>,
    pub output: ChainDef<'a>,
    pub conditions4: ChainDef<'a>,
    pub conditions6: ChainDef<'a>,
    pub hostports4: ChainDef<'a>,
    pub hostports6: ChainDef<'a>,
    pub postrouting: ChainDef<'a>,
}

const KEY4_IP: &[&str] = &["ipv4_addr", "inet_proto", "inet_service"];
const KEY6_IP: &[&str] = &["ipv6_addr", "inet_proto", "inet_service"];
const KEY_ANY: &[&str] = &["inet_proto", "inet_service"];

fn nat_hook(hook: &'static str, prio: i32) -> Option<Hook<'static>> {
    Some(Hook {
        chain_type: "nat",
        hook,
        prio,
        policy: "accept",
    })
}

impl<'a> Objects<'a> {
    pub fn new(table_name: &'a str) -> Objects<'a> {
        let table = TableRef {
            family: Family::Inet,
            name: table_name,
        };
        let map = |name: &'a str, key: &'a [&'a str], data: &'a str| SetDef {
            table,
            name,
            key,
            map: Some(data),
            interval: false,
        };
        let set = |name: &'a str, key: &'a [&'a str]| SetDef {
            table,
            name,
            key,
            map: None,
            interval: false,
        };
        let chain = |name: &'a str, hook: Option<Hook<'static>>| ChainDef { table, name, hook };
        Objects {
            table,
            addr4_ip: map("addr4_ip", KEY4_IP, "ipv4_addr"),
            port4_ip: map("port4_ip", KEY4_IP, "inet_service"),
            addr4: map("addr4", KEY_ANY, "ipv4_addr"),
            port4: map("port4", KEY_ANY, "inet_service"),
            addr6_ip: map("addr6_ip", KEY6_IP, "ipv6_addr"),
            port6_ip: map("port6_ip", KEY6_IP, "inet_service"),
            addr6: map("addr6", KEY_ANY, "ipv6_addr"),
            port6: map("port6", KEY_ANY, "inet_service"),
            hairpin4: set("hairpin4", &["ipv4_addr", "ipv4_addr"]),
            hairpin6: set("hairpin6", &["ipv6_addr", "ipv6_addr"]),
            masq4: set("masq4", &["ipv4_addr"]),
            masq6: set("masq6", &["ipv6_addr"]),
            prerouting: chain("prerouting", nat_hook("prerouting", -100)),
            output: chain("output", nat_hook("output", -100)),
            conditions4: chain("conditions4", None),
            conditions6: chain("conditions6", None),
            hostports4: chain("hostports4", None),
            hostports6: chain("hostports6", None),
            postrouting: chain("postrouting", nat_hook("postrouting", 100)),
        }
    }

    fn sets(&self) -> [&SetDef<'a>; 12] {
        [
            &self.addr4_ip,
            &self.port4_ip,
            &self.addr4,
            &self.port4,
            &self.addr6_ip,
            &self.port6_ip,
            &self.addr6,
            &self.port6,
            &self.hairpin4,
            &self.hairpin6,
            &self.masq4,
            &self.masq6,
        ]
    }

    /// The address map and the port map for a family, with or without a host address.
    fn maps(&self, v6: bool, with_ip: bool) -> (&SetDef<'a>, &SetDef<'a>) {
        match (v6, with_ip) {
            (false, true) => (&self.addr4_ip, &self.port4_ip),
            (false, false) => (&self.addr4, &self.port4),
            (true, true) => (&self.addr6_ip, &self.port6_ip),
            (true, false) => (&self.addr6, &self.port6),
        }
    }
}

/// Network-wide settings that shape the fixed rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub snat: bool,
    pub masq_all: bool,
    /// `conditionsV4`, joined (nft syntax).
    pub conditions_v4: Option<String>,
    pub conditions_v6: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Rule statements, in the JSON form `nft -j list` prints them.

fn ct_dnat() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}})
}

fn jump_rule(nfproto: &str, target: &ChainDef<'_>) -> Vec<Value> {
    vec![
        matches(json!({"meta": {"key": "nfproto"}}), Value::from(nfproto)),
        matches(
            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            Value::from("local"),
        ),
        json!({"jump": {"target": target.name}}),
    ]
}

/// prerouting and output: local destinations go to the conditions chains.
fn hook_rules(o: &Objects<'_>) -> Vec<Vec<Value>> {
    vec![
        jump_rule("ipv4", &o.conditions4),
        jump_rule("ipv6", &o.conditions6),
    ]
}

fn goto(target: &ChainDef<'_>) -> Value {
    json!({"goto": {"target": target.name}})
}

/// A hostports chain: DNAT by the maps with a host address first, then the others.
fn hostports_rules(o: &Objects<'_>, v6: bool) -> Vec<Vec<Value>> {
    let (ip, family) = if v6 { ("ip6", "ip6") } else { ("ip", "ip") };
    let l4 = [json!({"meta": {"key": "l4proto"}}), payload("th", "dport")];
    let mut rules = Vec::new();
    for with_ip in [true, false] {
        let (addr, port) = o.maps(v6, with_ip);
        let mut key: Vec<Value> = Vec::new();
        if with_ip {
            key.push(payload(ip, "daddr"));
        }
        key.extend(l4.iter().cloned());
        let lookup = |m: &SetDef<'_>| json!({"map": {"key": {"concat": key}, "data": set_ref(m)}});
        rules.push(vec![json!({"dnat": {
            "family": family,
            "addr": lookup(addr),
            "port": lookup(port),
        }})]);
    }
    rules
}

/// postrouting: masquerade what must come back through this host.
fn postrouting_rules(o: &Objects<'_>, policy: &Policy) -> Vec<Vec<Value>> {
    let masquerade = json!({"masquerade": null});
    let mut rules = Vec::new();
    if !policy.snat {
        return rules;
    }
    for (ip, hairpin) in [("ip", &o.hairpin4), ("ip6", &o.hairpin6)] {
        rules.push(vec![
            ct_dnat(),
            matches(
                json!({"concat": [payload(ip, "saddr"), payload(ip, "daddr")]}),
                set_ref(hairpin),
            ),
            masquerade.clone(),
        ]);
        if ip == "ip" {
            rules.push(vec![
                ct_dnat(),
                matches(
                    payload("ip", "saddr"),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                ),
                matches(payload("ip", "daddr"), set_ref(&o.masq4)),
                masquerade.clone(),
            ]);
        }
    }
    if policy.masq_all {
        for (ip, masq) in [("ip", &o.masq4), ("ip6", &o.masq6)] {
            rules.push(vec![
                ct_dnat(),
                matches(payload(ip, "daddr"), set_ref(masq)),
                masquerade.clone(),
            ]);
        }
    }
    rules
}

// ---------------------------------------------------------------------------------------
// One attachment

/// Everything one attachment puts into its network's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRules {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The container's first IPv4 and IPv6 address.
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    pub mappings: Vec<Mapping>,
    pub policy: Policy,
}

/// A UDP mapping as installed: what the conntrack flush looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFlow {
    /// None: any local address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container: IpAddr,
    /// None when only the address is known (DEL from a listing).
    pub container_port: Option<u16>,
}

fn map_key(host_ip: Option<IpAddr>, proto: Proto, port: u16) -> Value {
    let mut parts = Vec::new();
    if let Some(ip) = host_ip {
        parts.push(nft::key_addr(ip));
    }
    parts.push(Value::from(proto.as_str()));
    parts.push(Value::from(port));
    nft::key_concat(parts)
}

impl AttachmentRules {
    pub fn table_name(&self) -> String {
        table_name(&self.network)
    }

    pub fn comment(&self) -> String {
        attachment_comment(&self.network, &self.container_id, &self.ifname)
    }

    fn addresses(&self) -> impl Iterator<Item = (bool, IpAddr)> + '_ {
        [(false, self.v4), (true, self.v6)]
            .into_iter()
            .filter_map(|(v6, ip)| ip.map(|ip| (v6, ip)))
    }

    /// True when there is nothing to install (no mapping or no container address).
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty() || (self.v4.is_none() && self.v6.is_none())
    }

    /// The elements this attachment owns, by set (each key once). Code 7 when two mappings
    /// send the same host address, protocol and port to different places.
    pub fn elements<'a>(&self, o: &'a Objects<'a>) -> Result<Vec<(&'a SetDef<'a>, Key)>> {
        let mut out: Vec<(&SetDef<'a>, Key)> = Vec::new();
        if self.mappings.is_empty() {
            return Ok(out);
        }
        for (v6, ip) in self.addresses() {
            for m in &self.mappings {
                let Some(host) = m.for_family(v6) else {
                    continue;
                };
                let key = map_key(host, m.proto, m.host_port);
                let (addr_map, port_map) = o.maps(v6, host.is_some());
                let port = Value::from(m.container_port);
                if let Some((_, seen)) = out
                    .iter()
                    .find(|(s, k)| s.name == port_map.name && k.key == key)
                {
                    if seen.data.as_ref() != Some(&port) {
                        return Err(Error::config(format!(
                            "portMappings: {}/{} on {} is mapped twice to different container ports",
                            m.host_port,
                            m.proto.as_str(),
                            host.map_or_else(|| "every address".to_string(), |h| h.to_string())
                        )));
                    }
                    continue;
                }
                out.push((addr_map, Key::mapping(key.clone(), nft::key_addr(ip))));
                out.push((port_map, Key::mapping(key, port)));
            }
            if self.policy.snat {
                let (hairpin, masq) = if v6 {
                    (&o.hairpin6, &o.masq6)
                } else {
                    (&o.hairpin4, &o.masq4)
                };
                let a = nft::key_addr(ip);
                out.push((
                    hairpin,
                    Key::new(nft::key_concat(vec![a.clone(), a.clone()])),
                ));
                out.push((masq, Key::new(a)));
            }
        }
        Ok(out)
    }

    /// The UDP mappings, per container address.
    pub fn udp_flows(&self) -> Vec<UdpFlow> {
        let mut flows = Vec::new();
        for (v6, ip) in self.addresses() {
            for m in self.mappings.iter().filter(|m| m.proto == Proto::Udp) {
                if let Some(host_ip) = m.for_family(v6) {
                    flows.push(UdpFlow {
                        host_ip,
                        host_port: m.host_port,
                        container: ip,
                        container_port: Some(m.container_port),
                    });
                }
            }
        }
        flows.dedup();
        flows
    }
}

/// The conditions chain's rule when the family has no conditions.
fn plain_conditions_rule(o: &Objects<'_>, v6: bool) -> Vec<Value> {
    vec![goto(if v6 { &o.hostports6 } else { &o.hostports4 })]
}

/// The ADD batch: the table, every set and chain, the fixed rules (flushed and rewritten,
/// so never duplicated), then this attachment's elements. A conditions chain whose family
/// has conditions is only created here; [`conditions_script`] fills it.
pub fn add_batch(rules: &AttachmentRules) -> Result<Batch> {
    let name = rules.table_name();
    let o = Objects::new(&name);
    let elements = rules.elements(&o)?;
    let mut b = Batch::new();
    if elements.is_empty() {
        return Ok(b);
    }
    b.add_table(o.table);
    for s in o.sets() {
        b.add_set(s);
    }
    for c in [&o.hostports4, &o.hostports6, &o.conditions4, &o.conditions6] {
        b.add_chain(c);
    }
    b.ensure_chain_rules(&o.hostports4, hostports_rules(&o, false));
    b.ensure_chain_rules(&o.hostports6, hostports_rules(&o, true));
    for (v6, chain, cond) in [
        (false, &o.conditions4, &rules.policy.conditions_v4),
        (true, &o.conditions6, &rules.policy.conditions_v6),
    ] {
        if cond.is_none() {
            b.ensure_chain_rules(chain, vec![plain_conditions_rule(&o, v6)]);
        }
    }
    b.ensure_chain_rules(&o.prerouting, hook_rules(&o));
    b.ensure_chain_rules(&o.output, hook_rules(&o));
    b.ensure_chain_rules(&o.postrouting, postrouting_rules(&o, &rules.policy));
    let comment = rules.comment();
    for (set, keys) in by_set(elements) {
        b.add_attachment_elements(set, &comment, &keys);
    }
    Ok(b)
}

/// Elements grouped by set, in first-seen order (one `add element` per set).
fn by_set<'a>(elements: Vec<(&'a SetDef<'a>, Key)>) -> Vec<(&'a SetDef<'a>, Vec<Key>)> {
    let mut out: Vec<(&SetDef<'a>, Vec<Key>)> = Vec::new();
    for (set, key) in elements {
        match out.iter_mut().find(|(s, _)| s.name == set.name) {
            Some((_, keys)) => keys.push(key),
            None => out.push((set, vec![key])),
        }
    }
    out
}

/// The text commands that write the conditions chains of the families that have
/// conditions (nft's JSON input cannot take match expressions written in nft syntax);
/// [`add_rules`] appends them to the batch rendered as text.
/// `None` when no family has conditions.
pub fn conditions_script(rules: &AttachmentRules) -> Option<String> {
    let name = rules.table_name();
    let o = Objects::new(&name);
    let mut s = String::new();
    for (cond, chain, target) in [
        (&rules.policy.conditions_v4, &o.conditions4, &o.hostports4),
        (&rules.policy.conditions_v6, &o.conditions6, &o.hostports6),
    ] {
        let Some(cond) = cond else { continue };
        if s.is_empty() {
            s.push_str(&format!("add table inet {name}\n"));
        }
        let (c, t) = (chain.name, target.name);
        s.push_str(&format!(
            "add chain inet {name} {t}\nadd chain inet {name} {c}\nflush chain inet {name} {c}\n\
             add rule inet {name} {c} {cond} goto {t}\n"
        ));
    }
    (!s.is_empty()).then_some(s)
}

/// The DEL batch for known keys: no listing, and no failure when anything is missing.
pub fn del_known_batch(rules: &AttachmentRules) -> Result<Batch> {
    let name = rules.table_name();
    let o = Objects::new(&name);
    let mut b = Batch::new();
    for (set, keys) in by_set(rules.elements(&o)?) {
        b.delete_known_elements(set, &keys);
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------
// Kernel

/// Kernel: installs the attachment's rules (`batch`, from [`add_batch`]) in ONE transaction: the JSON batch, or, when the
/// config has conditions, the batch rendered as text followed by the conditions chains (a
/// rejected condition fails it as a whole, code 7, so nothing changes). Should the batch not
/// render as text, the conditions go first in a transaction of their own. Nothing to
/// install → no nft call.
pub fn add_rules(rules: &AttachmentRules, batch: &Batch) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let ctx = |e: Error| {
        let conflict = e.to_string().contains("File exists");
        let e = e.context(format!(
            "adding port mappings of {}/{} to table inet {}",
            rules.container_id,
            rules.ifname,
            rules.table_name()
        ));
        if conflict {
            e.context("a host port of this attachment is already mapped by another attachment of this network (DEL or GC it first)")
        } else {
            e
        }
    };
    let Some(conditions) = conditions_script(rules) else {
        return nft::apply_to_kernel(batch).map_err(ctx);
    };
    let rejected = |stderr: &str| {
        Error::config(format!(
            "conditionsV4/conditionsV6 rejected by nft: {stderr}"
        ))
    };
    match crate::text::render(&batch.to_json()) {
        Some(mut script) => {
            script.push_str(&conditions);
            match nft::apply_text_to_kernel(&script)? {
                Ok(()) => Ok(()),
                // nft quotes the command it refused: a conditions chain's rule is the config's.
                Err(stderr)
                    if stderr.contains(" conditions4 ") || stderr.contains(" conditions6 ") =>
                {
                    Err(rejected(&stderr))
                }
                Err(stderr) => Err(ctx(Error::Nft(format!("nft: {stderr}")))),
            }
        }
        None => {
            log::debug!("the batch does not render as nft text: two transactions");
            nft::apply_text_to_kernel(&conditions)?.map_err(|stderr| rejected(&stderr))?;
            nft::apply_to_kernel(batch).map_err(ctx)
        }
    }
}

/// The UDP mappings of one attachment read back from a listing (DEL without prevResult).
fn listed_udp_flows(listing: &TableListing, pick: &dyn Fn(&str) -> bool) -> Vec<UdpFlow> {
    let mut flows = Vec::new();
    for set in &listing.sets {
        if !matches!(
            set.name.as_str(),
            "addr4" | "addr4_ip" | "addr6" | "addr6_ip"
        ) {
            continue;
        }
        for e in &set.elements {
            if !e.comment.as_deref().is_some_and(pick) {
                continue;
            }
            let Some(parts) = e.key.get("concat").and_then(Value::as_array) else {
                continue;
            };
            let (host_ip, rest) = match parts.as_slice() {
                [ip, rest @ ..] if rest.len() == 2 => {
                    (ip.as_str().and_then(|s| s.parse::<IpAddr>().ok()), rest)
                }
                rest => (None, rest),
            };
            let [proto, port] = rest else { continue };
            let container = e
                .data
                .as_ref()
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok());
            let port = port.as_u64().and_then(|p| u16::try_from(p).ok());
            if let (Some("udp"), Some(port), Some(container)) = (proto.as_str(), port, container) {
                flows.push(UdpFlow {
                    host_ip,
                    host_port: port,
                    container,
                    container_port: None,
                });
            }
        }
    }
    flows
}

/// Kernel: removes one attachment's elements; idempotent, a missing table is success.
/// Returns the UDP mappings removed (for the conntrack flush).
///
/// With `known` (mappings from runtimeConfig and addresses from prevResult): ONE
/// transaction without listing. If another attachment holds one of the keys with other
/// data (only after a GC or a conflict), that transaction fails as a whole, and the
/// listing path below runs instead. Without `known`: the table is listed and the elements
/// carrying this attachment's comment are deleted.
pub fn del_rules(
    network: &str,
    container_id: &str,
    ifname: &str,
    known: Option<&AttachmentRules>,
) -> Result<Vec<UdpFlow>> {
    if let Some(rules) = known {
        let batch = del_known_batch(rules)?;
        match nft::apply_to_kernel(&batch) {
            Ok(()) => return Ok(rules.udp_flows()),
            Err(e) if e.to_string().contains("File exists") => {
                log::info!("{e}: deleting this attachment's elements by comment instead");
            }
            Err(e) => {
                return Err(e.context(format!("deleting port mappings of {container_id}/{ifname}")));
            }
        }
    }
    let name = table_name(network);
    let table = TableRef {
        family: Family::Inet,
        name: &name,
    };
    let pick = nft::comment_is_attachment(network, container_id, ifname);
    let Some(listing) = nft::list_table_from_kernel(table)? else {
        return Ok(Vec::new());
    };
    let flows = listed_udp_flows(&listing, &pick);
    let mut batch = Batch::new();
    batch.delete_listed_elements(&listing, &pick);
    nft::apply_to_kernel(&batch)
        .map_err(|e| e.context(format!("deleting port mappings of {container_id}/{ifname}")))?;
    Ok(flows)
}

/// Kernel: GC. Deletes every element of `network` whose attachment is not in `valid` (an
/// empty list means none is valid): one listing and one transaction. When no element would
/// remain, the whole table goes. Returns the UDP mappings removed.
pub fn gc_rules(network: &str, valid: &[Attachment]) -> Result<Vec<UdpFlow>> {
    let name = table_name(network);
    let table = TableRef {
        family: Family::Inet,
        name: &name,
    };
    let ctx = || format!("garbage-collecting port mappings of network {network}");
    let Some(listing) = nft::list_table_from_kernel(table).map_err(|e| e.context(ctx()))? else {
        return Ok(Vec::new());
    };
    let stale = nft::comment_is_stale(network, valid);
    let flows = listed_udp_flows(&listing, &stale);
    let keeps_some = listing
        .sets
        .iter()
        .flat_map(|s| &s.elements)
        .any(|e| !e.comment.as_deref().is_some_and(&stale));
    let mut batch = Batch::new();
    if keeps_some {
        batch.delete_listed_elements(&listing, &stale);
    } else {
        batch.push(json!({"delete": {"table": {"family": "inet", "name": name}}}));
    }
    nft::apply_to_kernel(&batch).map_err(|e| e.context(ctx()))?;
    Ok(flows)
}

/// Kernel: DEL of what the reference portmap made for this attachment before the binaries
/// were swapped (its `CNI-DN-<hash>` nat chains and their jumps, its nftables backend's rules
/// of this container; see [`common::nft::reference`]). Never fails: problems are logged.
pub fn del_reference_rules(network: &str, container_id: &str, ifname: &str) {
    reference::del_portmap_in_kernel(reference::Owner {
        network,
        container_id,
        ifname,
    });
}

/// Kernel: GC of the reference portmap's DNAT chains of `network` whose owner is not in
/// `valid`.
pub fn gc_reference_rules(network: &str, valid: &[Attachment]) -> Result<()> {
    reference::gc_portmap_in_kernel(network, valid).map(drop)
}

/// `meta nfproto` matches are dropped from a listed rule when another match implies the
/// family; compare rules without them.
fn without_nfproto(rule: &[Value]) -> Vec<&Value> {
    rule.iter()
        .filter(|s| s["match"]["left"]["meta"]["key"] != "nfproto")
        .collect()
}

/// What of `rules` is missing or different in `listing` (`None`: no table).
pub fn missing_in(rules: &AttachmentRules, listing: Option<&TableListing>) -> Result<Vec<String>> {
    let name = rules.table_name();
    let o = Objects::new(&name);
    let Some(l) = listing else {
        return Ok(vec![format!("table inet {name}")]);
    };
    let mut missing = Vec::new();
    let mut expect = |chain: &ChainDef<'_>, want: Vec<Vec<Value>>| match l.chain(chain.name) {
        None => missing.push(format!("chain {}", chain.name)),
        Some(c) => {
            let same = c.rules.len() == want.len()
                && c.rules
                    .iter()
                    .zip(&want)
                    .all(|(got, want)| without_nfproto(got) == without_nfproto(want));
            if !same {
                missing.push(format!("the rules of chain {}", chain.name));
            }
        }
    };
    expect(&o.prerouting, hook_rules(&o));
    expect(&o.output, hook_rules(&o));
    expect(&o.hostports4, hostports_rules(&o, false));
    expect(&o.hostports6, hostports_rules(&o, true));
    expect(&o.postrouting, postrouting_rules(&o, &rules.policy));
    for (v6, chain, cond) in [
        (false, &o.conditions4, &rules.policy.conditions_v4),
        (true, &o.conditions6, &rules.policy.conditions_v6),
    ] {
        let want_goto = plain_conditions_rule(&o, v6);
        match (l.chain(chain.name), cond) {
            (None, _) => missing.push(format!("chain {}", chain.name)),
            (Some(c), None) => {
                if c.rules != vec![want_goto] {
                    missing.push(format!("the rule of chain {}", chain.name));
                }
            }
            // The conditions themselves are in nft syntax: check that they are there,
            // followed by the goto.
            (Some(c), Some(_)) => {
                let ok = matches!(c.rules.as_slice(), [r] if r.len() > 1 && r.last() == want_goto.last());
                if !ok {
                    missing.push(format!("the conditions rule of chain {}", chain.name));
                }
            }
        }
    }
    let comment = rules.comment();
    for (set, key) in rules.elements(&o)? {
        if !l.has_element(set.name, &key, &comment) {
            missing.push(format!("element {} in {}", key.key, set.name));
        }
    }
    Ok(missing)
}

/// Kernel: CHECK. Lists the network's table and fails naming every missing or changed
/// chain, rule or element. Nothing to check → no nft call.
pub fn check_rules(rules: &AttachmentRules) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let name = rules.table_name();
    let listing = nft::list_table_from_kernel(TableRef {
        family: Family::Inet,
        name: &name,
    })?;
    let missing = missing_in(rules, listing.as_ref())?;
    let what = format!(
        "port mappings of {}/{} missing in table inet {name}",
        rules.container_id, rules.ifname
    );
    let table = TableRef {
        family: Family::Inet,
        name: &name,
    };
    nft::check_outcome_in_kernel(&[table], &what, &missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> AttachmentRules {
        AttachmentRules {
            network: "net".into(),
            container_id: "cid".into(),
            ifname: "eth0".into(),
            v4: Some("10.88.0.5".parse().unwrap()),
            v6: Some("fd00::5".parse().unwrap()),
            mappings: vec![
                Mapping {
                    host_port: 8080,
                    container_port: 80,
                    proto: Proto::Tcp,
                    host_ip: None,
                },
                Mapping {
                    host_port: 5353,
                    container_port: 53,
                    proto: Proto::Udp,
                    host_ip: Some("192.0.2.1".parse().unwrap()),
                },
            ],
            policy: Policy {
                snat: true,
                masq_all: false,
                conditions_v4: None,
                conditions_v6: None,
            },
        }
    }

    fn names(els: &[(&SetDef<'_>, Key)]) -> Vec<String> {
        els.iter()
            .map(|(s, k)| {
                format!(
                    "{} {} {}",
                    s.name,
                    k.key,
                    k.data.clone().unwrap_or(Value::Null)
                )
            })
            .collect()
    }

    #[test]
    fn elements_per_family() {
        let a = att();
        let name = a.table_name();
        let o = Objects::new(&name);
        assert_eq!(name, "cnirs_portmap_net");
        assert_eq!(
            names(&a.elements(&o).unwrap()),
            vec![
                r#"addr4 {"concat":["tcp",8080]} "10.88.0.5""#,
                r#"port4 {"concat":["tcp",8080]} 80"#,
                r#"addr4_ip {"concat":["192.0.2.1","udp",5353]} "10.88.0.5""#,
                r#"port4_ip {"concat":["192.0.2.1","udp",5353]} 53"#,
                r#"hairpin4 {"concat":["10.88.0.5","10.88.0.5"]} null"#,
                r#"masq4 "10.88.0.5" null"#,
                r#"addr6 {"concat":["tcp",8080]} "fd00::5""#,
                r#"port6 {"concat":["tcp",8080]} 80"#,
                r#"hairpin6 {"concat":["fd00::5","fd00::5"]} null"#,
                r#"masq6 "fd00::5" null"#,
            ]
        );
        assert_eq!(
            a.udp_flows(),
            vec![UdpFlow {
                host_ip: Some("192.0.2.1".parse().unwrap()),
                host_port: 5353,
                container: "10.88.0.5".parse().unwrap(),
                container_port: Some(53),
            }]
        );
    }

    #[test]
    fn duplicate_and_conflicting_mappings() {
        let mut a = att();
        a.mappings.push(a.mappings[0]);
        let name = a.table_name();
        let o = Objects::new(&name);
        assert_eq!(a.elements(&o).unwrap().len(), 10);
        a.mappings[2].container_port = 81;
        assert_eq!(a.elements(&o).unwrap_err().code(), 7);
    }

    #[test]
    fn snat_off_and_masq_all_shape_postrouting() {
        let name = "cnirs_portmap_n".to_string();
        let o = Objects::new(&name);
        let mut p = att().policy;
        assert_eq!(postrouting_rules(&o, &p).len(), 3);
        p.masq_all = true;
        assert_eq!(postrouting_rules(&o, &p).len(), 5);
        p.snat = false;
        assert!(postrouting_rules(&o, &p).is_empty());
        let mut a = att();
        a.policy.snat = false;
        assert!(
            a.elements(&o)
                .unwrap()
                .iter()
                .all(|(s, _)| !s.name.starts_with("hairpin") && !s.name.starts_with("masq"))
        );
    }

    #[test]
    fn add_batch_keeps_conditions_chains_for_the_script() {
        let mut a = att();
        let plain = add_batch(&a).unwrap().to_json().to_string();
        assert!(plain.contains(r#"{"flush":{"chain":{"family":"inet","name":"conditions4","table":"cnirs_portmap_net"}}}"#));
        assert!(conditions_script(&a).is_none());
        a.policy.conditions_v4 = Some("ip saddr != 10.0.0.0/8".into());
        let with = add_batch(&a).unwrap().to_json().to_string();
        assert!(!with.contains(r#""flush":{"chain":{"family":"inet","name":"conditions4""#));
        assert!(with.contains(r#""flush":{"chain":{"family":"inet","name":"conditions6""#));
        assert_eq!(
            conditions_script(&a).unwrap(),
            "add table inet cnirs_portmap_net\nadd chain inet cnirs_portmap_net hostports4\n\
             add chain inet cnirs_portmap_net conditions4\nflush chain inet cnirs_portmap_net conditions4\n\
             add rule inet cnirs_portmap_net conditions4 ip saddr != 10.0.0.0/8 goto hostports4\n"
        );
    }

    #[test]
    fn nothing_to_do_is_no_batch() {
        let mut a = att();
        a.v4 = None;
        a.v6 = None;
        assert!(add_batch(&a).unwrap().is_empty());
        assert!(del_known_batch(&a).unwrap().is_empty());
        let mut a = att();
        a.mappings.clear();
        assert!(add_batch(&a).unwrap().is_empty());
    }

    #[test]
    fn long_network_names_fit() {
        let long = "n".repeat(300);
        let t = table_name(&long);
        assert!(t.len() <= 255);
        assert_ne!(t, table_name(&format!("{long}x")));
        assert_eq!(table_name("a.b-c_1"), "cnirs_portmap_a.b-c_1");
    }

    #[test]
    fn udp_flows_from_a_listing() {
        let doc = json!({"nftables": [
            {"table": {"family": "inet", "name": "cnirs_portmap_net"}},
            {"map": {"family": "inet", "name": "addr4_ip", "table": "cnirs_portmap_net",
                "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr",
                "elem": [[{"elem": {"val": {"concat": ["192.0.2.1", "udp", 5353]}, "comment": "net/cid/eth0"}}, "10.88.0.5"],
                         [{"elem": {"val": {"concat": ["192.0.2.1", "tcp", 80]}, "comment": "net/cid/eth0"}}, "10.88.0.5"],
                         [{"elem": {"val": {"concat": ["192.0.2.1", "udp", 53]}, "comment": "net/other/eth0"}}, "10.88.0.6"]]}},
            {"map": {"family": "inet", "name": "addr6", "table": "cnirs_portmap_net",
                "type": ["inet_proto", "inet_service"], "map": "ipv6_addr",
                "elem": [[{"elem": {"val": {"concat": ["udp", 5353]}, "comment": "net/cid/eth0"}}, "fd00::5"]]}},
        ]});
        let t = TableRef {
            family: Family::Inet,
            name: "cnirs_portmap_net",
        };
        let l = TableListing::parse(t, &doc).unwrap();
        let flows = listed_udp_flows(&l, &|c| c == "net/cid/eth0");
        assert_eq!(
            flows,
            vec![
                UdpFlow {
                    host_ip: Some("192.0.2.1".parse().unwrap()),
                    host_port: 5353,
                    container: "10.88.0.5".parse().unwrap(),
                    container_port: None
                },
                UdpFlow {
                    host_ip: None,
                    host_port: 5353,
                    container: "fd00::5".parse().unwrap(),
                    container_port: None
                },
            ]
        );
    }

    /// The ruleset written over netlink is the one nft writes, for each policy.
    #[test]
    fn netlink_writes_what_nft_writes() {
        if !testkit::have_root() {
            return;
        }
        for (snat, masq_all) in [(true, false), (true, true), (false, false)] {
            let mut a = att();
            a.network = testkit::unique_name("pm");
            a.policy.snat = snat;
            a.policy.masq_all = masq_all;
            let table = a.table_name();
            testkit::assert_netlink_writes_what_nft_writes(
                &add_batch(&a).unwrap(),
                &[(Family::Inet, &table)],
            );
        }
    }
}
