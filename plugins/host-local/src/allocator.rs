//! Allocation logic over an abstract [`Store`]: one address per range set, requested
//! addresses, round-robin from the last reserved address, rollback when a later set fails,
//! release, and GC by attachment. [`MemStore`] is the in-memory store the unit tests use.

use crate::range::{RangeSet, canonical};
use common::spec::{Attachment, IpConfig};
use common::{Error, Result};
use std::collections::HashSet;
#[cfg(test)]
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Who holds an address, as written in its allocation file: `containerID\r\nifname`, or just
/// `containerID` in files from before ifnames were recorded (`ifname` is then `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Owner {
        Owner {
            container_id: container_id.trim().to_string(),
            ifname: Some(ifname.to_string()),
        }
    }

    /// The legacy key of a container: files holding only its ID.
    pub fn legacy(container_id: &str) -> Owner {
        Owner {
            container_id: container_id.trim().to_string(),
            ifname: None,
        }
    }

    /// Reads an allocation file's content (surrounding whitespace ignored, as the reference
    /// compares trimmed contents).
    pub fn parse(content: &[u8]) -> Owner {
        let text = String::from_utf8_lossy(content);
        let text = text.trim();
        match text.split_once("\r\n") {
            Some((cid, ifname)) => Owner {
                container_id: cid.to_string(),
                ifname: Some(ifname.to_string()),
            },
            None => Owner::legacy(text),
        }
    }

    /// The allocation file content, byte for byte the reference's.
    pub fn content(&self) -> String {
        match &self.ifname {
            Some(ifname) => format!("{}\r\n{ifname}", self.container_id),
            None => self.container_id.clone(),
        }
    }

    /// True when this owner is one of the listed attachments (a legacy owner matches any
    /// attachment of its container).
    pub fn is_in(&self, valid: &HashSet<(&str, &str)>, valid_ids: &HashSet<&str>) -> bool {
        match &self.ifname {
            Some(ifname) => valid.contains(&(self.container_id.as_str(), ifname.as_str())),
            None => valid_ids.contains(self.container_id.as_str()),
        }
    }
}

/// The allocation state of one network.
pub trait Store {
    /// Records `ip` for `owner` unless it is taken (then `Ok(false)`), and remembers it as the
    /// last address reserved in range set `set`.
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool>;
    /// The last address reserved in range set `set`, if known.
    fn last_reserved_ip(&mut self, set: usize) -> Option<IpAddr>;
    /// Every address `owner` holds (exactly that owner, no legacy matching).
    fn ips_of(&mut self, owner: &Owner) -> Result<Vec<IpAddr>>;
    /// Frees `ip` if `owner` holds it; `Ok(false)` when it did not.
    fn release(&mut self, owner: &Owner, ip: IpAddr) -> Result<bool>;
    /// Every allocation of the network.
    fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>>;
    /// True when `ip` is allocated (to anyone).
    fn is_taken(&mut self, ip: IpAddr) -> Result<bool>;
}

/// The addresses of an attachment: its own plus legacy ones of its container.
pub fn ips_of_attachment(store: &mut dyn Store, cid: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let mut ips = store.ips_of(&Owner::new(cid, ifname))?;
    ips.extend(store.ips_of(&Owner::legacy(cid))?);
    Ok(ips)
}

/// Allocates one address in range set `idx` for (`cid`, `ifname`), the requested one if
/// given (it must lie in this set).
pub fn allocate(
    store: &mut dyn Store,
    set: &RangeSet,
    idx: usize,
    cid: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<IpConfig> {
    let owner = Owner::new(cid, ifname);
    if let Some(ip) = requested.map(canonical) {
        let range = set
            .range_for(ip)
            .ok_or_else(|| Error::config(format!("requested IP {ip} is not in range set {set}")))?;
        if ip == range.gateway {
            return Err(Error::config(format!(
                "requested IP {ip} is the gateway of network {}",
                range.subnet
            )));
        }
        if !store.reserve(&owner, ip, idx)? {
            return Err(Error::internal(format!(
                "requested IP address {ip} is not available in range set {set}: another container holds it"
            )));
        }
        return Ok(IpConfig {
            interface: None,
            address: range.with_prefix(ip),
            gateway: Some(range.gateway),
        });
    }

    for held in ips_of_attachment(store, cid, ifname)? {
        if set.contains(held) {
            return Err(Error::internal(format!(
                "{held} has been allocated to {cid} (interface {ifname}) already, duplicate allocation is not allowed: DEL it first"
            )));
        }
    }
    let last = store.last_reserved_ip(idx);
    for (ip, range) in set.walk(last) {
        if store.reserve(&owner, ip, idx)? {
            return Ok(IpConfig {
                interface: None,
                address: range.with_prefix(ip),
                gateway: Some(range.gateway),
            });
        }
    }
    Err(Error::internal(format!(
        "no IP addresses available in range set: {set}"
    )))
}

/// Allocates one address per range set, matching each requested address to the set that
/// contains it. On any failure (including a requested address no set contains) everything
/// allocated here is released again.
pub fn allocate_all(
    store: &mut dyn Store,
    ranges: &[RangeSet],
    cid: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<IpConfig>> {
    let mut pending: Vec<IpAddr> = requested.iter().copied().map(canonical).collect();
    let mut done: Vec<IpConfig> = Vec::new();
    let owner = Owner::new(cid, ifname);
    let rollback = |store: &mut dyn Store, done: &[IpConfig]| {
        for c in done {
            if let Err(e) = store.release(&owner, c.address.ip()) {
                log::warn!("releasing {} after a failed ADD: {e}", c.address.ip());
            }
        }
    };
    for (idx, set) in ranges.iter().enumerate() {
        let want = pending.iter().position(|ip| set.contains(*ip));
        let want = want.map(|p| pending.remove(p));
        match allocate(store, set, idx, cid, ifname, want) {
            Ok(c) => done.push(c),
            Err(e) => {
                rollback(store, &done);
                return Err(e.context(format!("failed to allocate for range {idx}")));
            }
        }
    }
    if !pending.is_empty() {
        rollback(store, &done);
        let list: Vec<String> = pending.iter().map(IpAddr::to_string).collect();
        return Err(Error::config(format!(
            "failed to allocate all requested IPs: {} (no configured range set contains them)",
            list.join(" ")
        )));
    }
    Ok(done)
}

/// DEL: frees the attachment's addresses; files holding only the container ID are freed
/// when the attachment itself holds none (as the reference does).
pub fn release_attachment(store: &mut dyn Store, cid: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let mut owner = Owner::new(cid, ifname);
    let mut ips = store.ips_of(&owner)?;
    if ips.is_empty() {
        owner = Owner::legacy(cid);
        ips = store.ips_of(&owner)?;
    }
    let mut freed = Vec::new();
    let mut errors = Vec::new();
    for ip in ips {
        match store.release(&owner, ip) {
            Ok(true) => freed.push(ip),
            Ok(false) => {}
            Err(e) => errors.push(format!("{ip}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(freed)
    } else {
        Err(Error::internal(format!(
            "failed to release: {}",
            errors.join("; ")
        )))
    }
}

/// GC: frees every allocation whose owner is not among `valid`. Continues past errors and
/// reports them all. Returns the freed addresses.
pub fn gc(store: &mut dyn Store, valid: &[Attachment]) -> Result<Vec<IpAddr>> {
    let pairs: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let mut freed = Vec::new();
    let mut errors = Vec::new();
    for (ip, owner) in store.all()? {
        if owner.is_in(&pairs, &ids) {
            continue;
        }
        match store.release(&owner, ip) {
            Ok(true) => freed.push(ip),
            Ok(false) => {}
            Err(e) => errors.push(format!("{ip}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(freed)
    } else {
        Err(Error::internal(format!(
            "GC failed to release: {}",
            errors.join("; ")
        )))
    }
}

/// How many candidates STATUS tries one by one before it counts the allocations instead.
pub const STATUS_PROBES: usize = 32;

/// STATUS: true when range set `idx` has an address an ADD could take. The first
/// [`STATUS_PROBES`] candidates are tried in ADD's order (after round-robin the next one is
/// nearly always free); past them, `allocated` (every allocated address, each once) decides by
/// counting, so a full or nearly full set costs one listing, not a lookup per address.
pub fn has_free(
    store: &mut dyn Store,
    set: &RangeSet,
    idx: usize,
    allocated: &mut dyn FnMut() -> Result<Vec<IpAddr>>,
) -> Result<bool> {
    let last = store.last_reserved_ip(idx);
    let mut tried = 0u128;
    for (ip, _) in set.walk(last).take(STATUS_PROBES) {
        if !store.is_taken(ip)? {
            return Ok(true);
        }
        tried += 1;
    }
    if tried == set.capacity() {
        return Ok(false);
    }
    let taken = allocated()?
        .into_iter()
        .filter(|ip| set.is_allocatable(*ip))
        .count();
    Ok((taken as u128) < set.capacity())
}

/// An in-memory [`Store`] (the unit tests' fake).
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    pub ips: BTreeMap<IpAddr, Owner>,
    pub last: HashMap<usize, IpAddr>,
}

#[cfg(test)]
impl Store for MemStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool> {
        if self.ips.contains_key(&ip) {
            return Ok(false);
        }
        self.ips.insert(ip, owner.clone());
        self.last.insert(set, ip);
        Ok(true)
    }
    fn last_reserved_ip(&mut self, set: usize) -> Option<IpAddr> {
        self.last.get(&set).copied()
    }
    fn ips_of(&mut self, owner: &Owner) -> Result<Vec<IpAddr>> {
        Ok(self
            .ips
            .iter()
            .filter(|(_, o)| *o == owner)
            .map(|(ip, _)| *ip)
            .collect())
    }
    fn release(&mut self, owner: &Owner, ip: IpAddr) -> Result<bool> {
        if self.ips.get(&ip) == Some(owner) {
            self.ips.remove(&ip);
            return Ok(true);
        }
        Ok(false)
    }
    fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>> {
        Ok(self.ips.iter().map(|(i, o)| (*i, o.clone())).collect())
    }
    fn is_taken(&mut self, ip: IpAddr) -> Result<bool> {
        Ok(self.ips.contains_key(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::Range;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(subnet: &str) -> RangeSet {
        RangeSet::new(vec![
            Range::new(subnet.parse().unwrap(), None, None, None).unwrap(),
        ])
        .unwrap()
    }

    fn set_range(subnet: &str, start: &str, end: &str) -> RangeSet {
        RangeSet::new(vec![
            Range::new(
                subnet.parse().unwrap(),
                Some(ip(start)),
                Some(ip(end)),
                None,
            )
            .unwrap(),
        ])
        .unwrap()
    }

    fn alloc(s: &mut MemStore, set: &RangeSet, cid: &str) -> Result<String> {
        allocate(s, set, 0, cid, "eth0", None).map(|c| c.address.to_string())
    }

    #[test]
    fn owner_content_round_trips_and_reads_legacy() {
        let o = Owner::new("c1", "eth0");
        assert_eq!(o.content(), "c1\r\neth0");
        assert_eq!(Owner::parse(b"c1\r\neth0"), o);
        assert_eq!(Owner::parse(b"  c1\r\neth0\n"), o);
        assert_eq!(Owner::parse(b"c1\n"), Owner::legacy("c1"));
        assert_eq!(Owner::legacy("c1").content(), "c1");
    }

    #[test]
    fn first_allocation_skips_the_gateway_and_carries_the_prefix() {
        let mut s = MemStore::default();
        let set = set("10.0.0.0/29");
        let c = allocate(&mut s, &set, 0, "c1", "eth0", None).unwrap();
        assert_eq!(c.address.to_string(), "10.0.0.2/29");
        assert_eq!(c.gateway, Some(ip("10.0.0.1")));
        assert_eq!(s.last[&0], ip("10.0.0.2"));
    }

    #[test]
    fn round_robin_continues_after_the_last_reserved_and_wraps() {
        let mut s = MemStore::default();
        let set = set("10.0.0.0/29"); // .2 .. .6 allocatable
        for (i, want) in ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29"]
            .iter()
            .enumerate()
        {
            assert_eq!(alloc(&mut s, &set, &format!("c{i}")).unwrap(), *want);
        }
        // Freeing .2 does not make it the next one: round-robin goes on to .5.
        assert!(
            s.release(&Owner::new("c0", "eth0"), ip("10.0.0.2"))
                .unwrap()
        );
        assert_eq!(alloc(&mut s, &set, "c3").unwrap(), "10.0.0.5/29");
        assert_eq!(alloc(&mut s, &set, "c4").unwrap(), "10.0.0.6/29");
        // Wraps around to the freed .2.
        assert_eq!(alloc(&mut s, &set, "c5").unwrap(), "10.0.0.2/29");
        let e = alloc(&mut s, &set, "c6").unwrap_err();
        assert!(e.to_string().contains("no IP addresses available"), "{e}");
        assert_eq!(s.ips.len(), 5);
    }

    #[test]
    fn a_last_reserved_outside_the_set_restarts_at_the_beginning() {
        let mut s = MemStore::default();
        s.last.insert(0, ip("192.168.1.1"));
        let set = set_range("10.0.0.0/24", "10.0.0.100", "10.0.0.110");
        assert_eq!(alloc(&mut s, &set, "c1").unwrap(), "10.0.0.100/24");
    }

    #[test]
    fn requested_ips_are_honoured_and_checked() {
        let mut s = MemStore::default();
        let set = set("10.0.0.0/24");
        let c = allocate(&mut s, &set, 0, "c1", "eth0", Some(ip("10.0.0.77"))).unwrap();
        assert_eq!(c.address.to_string(), "10.0.0.77/24");
        assert_eq!(s.last[&0], ip("10.0.0.77"));
        let e = allocate(&mut s, &set, 0, "c2", "eth0", Some(ip("10.0.0.77"))).unwrap_err();
        assert!(e.to_string().contains("not available"), "{e}");
        let e = allocate(&mut s, &set, 0, "c2", "eth0", Some(ip("10.0.0.1"))).unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        assert_eq!(e.code(), 7);
        let e = allocate(&mut s, &set, 0, "c2", "eth0", Some(ip("10.0.0.255"))).unwrap_err();
        assert!(e.to_string().contains("not in range set"), "{e}");
    }

    #[test]
    fn duplicate_allocation_is_refused_in_the_same_set_only() {
        let mut s = MemStore::default();
        let a = set("10.0.0.0/24");
        let b = set("10.0.1.0/24");
        alloc(&mut s, &a, "c1").unwrap();
        let e = alloc(&mut s, &a, "c1").unwrap_err();
        assert!(e.to_string().contains("duplicate allocation"), "{e}");
        assert!(allocate(&mut s, &b, 1, "c1", "eth0", None).is_ok());
        assert!(
            allocate(&mut s, &a, 0, "c1", "eth1", None).is_ok(),
            "other ifname"
        );
        // A legacy file of the container counts too.
        s.ips.insert(ip("10.0.0.50"), Owner::legacy("c9"));
        let e = alloc(&mut s, &a, "c9").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn multiple_sets_give_one_address_each_and_roll_back_on_failure() {
        let mut s = MemStore::default();
        let sets = vec![
            set("10.0.0.0/24"),
            set("fd00::/120"),
            set_range("10.0.5.0/24", "10.0.5.10", "10.0.5.10"),
        ];
        let got = allocate_all(&mut s, &sets, "c1", "eth0", &[ip("fd00::42")]).unwrap();
        let got: Vec<String> = got.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(got, ["10.0.0.2/24", "fd00::42/120", "10.0.5.10/24"]);
        // The third set is now full: the first two allocations of c2 are undone.
        let before = s.ips.clone();
        let e = allocate_all(&mut s, &sets, "c2", "eth0", &[]).unwrap_err();
        assert!(
            e.to_string().contains("failed to allocate for range 2"),
            "{e}"
        );
        assert_eq!(s.ips, before);
    }

    #[test]
    fn unmatched_requested_ips_release_everything() {
        let mut s = MemStore::default();
        let sets = vec![set("10.0.0.0/24")];
        let e = allocate_all(
            &mut s,
            &sets,
            "c1",
            "eth0",
            &[ip("10.0.0.9"), ip("10.0.0.10")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("10.0.0.10"), "{e}");
        assert!(s.ips.is_empty());
        let e = allocate_all(&mut s, &sets, "c1", "eth0", &[ip("192.168.0.1")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("failed to allocate all requested IPs"),
            "{e}"
        );
        assert!(s.ips.is_empty());
    }

    #[test]
    fn v6_allocation() {
        let mut s = MemStore::default();
        let set = set("2001:db8:1::/64");
        let c = allocate(&mut s, &set, 0, "c1", "eth0", None).unwrap();
        assert_eq!(c.address.to_string(), "2001:db8:1::2/64");
        assert_eq!(c.gateway, Some(ip("2001:db8:1::1")));
        s.last.insert(0, ip("2001:db8:1::ffff"));
        assert_eq!(alloc(&mut s, &set, "c2").unwrap(), "2001:db8:1::1:0/64");
    }

    #[test]
    fn release_prefers_exact_then_legacy() {
        let mut s = MemStore::default();
        s.ips.insert(ip("10.0.0.2"), Owner::new("c1", "eth0"));
        s.ips.insert(ip("10.0.0.3"), Owner::legacy("c1"));
        s.ips.insert(ip("10.0.0.4"), Owner::new("c1", "eth1"));
        assert_eq!(
            release_attachment(&mut s, "c1", "eth0").unwrap(),
            [ip("10.0.0.2")]
        );
        assert_eq!(
            release_attachment(&mut s, "c1", "eth0").unwrap(),
            [ip("10.0.0.3")]
        );
        assert!(release_attachment(&mut s, "c1", "eth0").unwrap().is_empty());
        assert_eq!(s.ips.len(), 1);
    }

    #[test]
    fn gc_keeps_exactly_the_valid_attachments() {
        let mut s = MemStore::default();
        s.ips.insert(ip("10.0.0.2"), Owner::new("keep", "eth0"));
        s.ips.insert(ip("10.0.0.3"), Owner::new("keep", "eth1"));
        s.ips.insert(ip("10.0.0.4"), Owner::new("gone", "eth0"));
        s.ips.insert(ip("10.0.0.5"), Owner::legacy("keep"));
        s.ips.insert(ip("10.0.0.6"), Owner::legacy("gone"));
        let valid = vec![Attachment {
            container_id: "keep".into(),
            ifname: "eth0".into(),
        }];
        let mut freed = gc(&mut s, &valid).unwrap();
        freed.sort();
        assert_eq!(freed, [ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.6")]);
        assert_eq!(
            gc(&mut s, &[]).unwrap().len(),
            2,
            "empty list: nothing is valid"
        );
        assert!(s.ips.is_empty());
    }

    fn free(s: &mut MemStore, set: &RangeSet) -> bool {
        let all: Vec<IpAddr> = s.ips.keys().copied().collect();
        has_free(s, set, 0, &mut || Ok(all.clone())).unwrap()
    }

    #[test]
    fn has_free_sees_a_full_set() {
        let mut s = MemStore::default();
        let set = set("10.0.0.0/30"); // only .2 (gateway .1)
        assert!(free(&mut s, &set));
        alloc(&mut s, &set, "c1").unwrap();
        assert!(!free(&mut s, &set));
    }

    #[test]
    fn has_free_counts_past_the_probes() {
        let set = set("10.0.0.0/24"); // 253 addresses
        let mut s = MemStore::default();
        for i in 0..253 {
            alloc(&mut s, &set, &format!("c{i}")).unwrap();
        }
        assert!(!free(&mut s, &set));
        // Addresses outside the set and the gateway do not count as taken.
        s.ips.insert(ip("10.0.0.1"), Owner::new("gw", "eth0"));
        s.ips.insert(ip("10.0.1.9"), Owner::new("other", "eth0"));
        assert!(!free(&mut s, &set));
        // One address free far from where round-robin goes next (after .254, the last
        // reserved: .2, .3, ...): found by counting.
        assert_eq!(s.last[&0], ip("10.0.0.254"));
        let far = ip("10.0.0.200");
        s.ips.remove(&far);
        let mut listed = false;
        let all: Vec<IpAddr> = s.ips.keys().copied().collect();
        assert!(
            has_free(&mut s, &set, 0, &mut || {
                listed = true;
                Ok(all.clone())
            })
            .unwrap()
        );
        assert!(listed, "the probes alone cannot see {far}");
        // A free address right after the last reserved needs no listing.
        s.ips.remove(&ip("10.0.0.2"));
        s.last.insert(0, ip("10.0.0.254"));
        let mut listed = false;
        assert!(
            has_free(&mut s, &set, 0, &mut || {
                listed = true;
                Ok(Vec::new())
            })
            .unwrap()
        );
        assert!(!listed);
    }
}
