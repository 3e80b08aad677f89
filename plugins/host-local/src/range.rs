//! Address ranges and range sets: defaults, validation and the round-robin walk over them.
//!
//! A [`Range`] is one pool inside a subnet (`rangeStart`..=`rangeEnd`, with a gateway that is
//! skipped, never reserved). A range set is a list of ranges of one family forming one pool;
//! each range set yields one address per ADD.

use ipnetwork::IpNetwork;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as a number, so ranges can be walked and compared in either family.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`] for the family of `like`.
pub fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// IPv4-mapped IPv6 addresses become IPv4 (as the reference's `To4()` does), so an address
/// has one spelling, and one allocation file name.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// One pool: a subnet (its network address and prefix), the first and last allocatable
/// addresses (inclusive) and the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    /// Builds a range with the reference defaults, checking everything a person could get
    /// wrong. `subnet` may carry host bits (they are an error, named in the message).
    pub fn new(
        subnet: IpNetwork,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, String> {
        let given = subnet;
        let network = canonical(subnet.network());
        let subnet = IpNetwork::new(network, subnet.prefix())
            .map_err(|e| format!("invalid subnet {subnet}: {e}"))?;
        if canonical(given.ip()) != network {
            return Err(format!(
                "subnet {given} has host bits set: for a /{} the network address is {network}, so write {subnet}",
                subnet.prefix()
            ));
        }
        let bits: u8 = if network.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > bits - 2 {
            return Err(format!(
                "network {subnet} is too small to allocate from: the prefix must be /{} or shorter",
                bits - 2
            ));
        }
        let first = to_u128(network);
        let host_mask: u128 = if subnet.prefix() == 0 && bits == 128 {
            u128::MAX
        } else {
            (1u128 << (bits - subnet.prefix())) - 1
        };
        let last = first | host_mask;
        let in_subnet = |ip: IpAddr| same_family(ip, network) && subnet.contains(ip);

        let gateway = match gateway.map(canonical) {
            None => from_u128(first + 1, network),
            Some(gw) if in_subnet(gw) => gw,
            Some(gw) => return Err(format!("gateway {gw} is not in network {subnet}")),
        };
        let start = match start.map(canonical) {
            None => from_u128(first + 1, network),
            Some(s) => {
                check_in_subnet(s, subnet)?;
                s
            }
        };
        let end = match end.map(canonical) {
            // IPv4 leaves out the broadcast address; IPv6 has none.
            None => {
                let end = from_u128(if network.is_ipv4() { last - 1 } else { last }, network);
                // Only a start past the default end gets here (the broadcast address of an
                // IPv4 subnet): the pool would be that one wrong address.
                if to_u128(start) > to_u128(end) {
                    return Err(format!(
                        "rangeStart {start} is after rangeEnd {end} (the default: the last address of network {subnet} before its broadcast address); set rangeStart to {end} or earlier"
                    ));
                }
                end
            }
            Some(e) => {
                check_in_subnet(e, subnet)?;
                if to_u128(e) < to_u128(start) {
                    return Err(format!(
                        "rangeEnd {e} is before rangeStart {start} in network {subnet}"
                    ));
                }
                e
            }
        };
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    /// True when `ip` is allocatable from this range (inside start..=end).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        same_family(ip, self.start)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// True when the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        same_family(self.start, other.start)
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// The address with this range's prefix length, as it goes into the result.
    pub fn with_prefix(&self, ip: IpAddr) -> IpNetwork {
        // The prefix was valid for this family when the range was built.
        IpNetwork::new(ip, self.subnet.prefix()).unwrap_or(self.subnet)
    }
}

fn check_in_subnet(ip: IpAddr, subnet: IpNetwork) -> Result<(), String> {
    if !same_family(ip, subnet.ip()) {
        return Err(format!(
            "{ip} is not the same address family as network {subnet}"
        ));
    }
    if !subnet.contains(ip) {
        return Err(format!("{ip} is not in network {subnet}"));
    }
    Ok(())
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// One or more ranges of one family that together yield one address per ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// Checks the set: not empty, one family, no two ranges overlapping.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, String> {
        let Some(first) = ranges.first() else {
            return Err("empty range set".into());
        };
        if ranges.iter().any(|r| !same_family(r.start, first.start)) {
            return Err("mixed address families: a range set holds IPv4 or IPv6 ranges, not both (use one range set per family)".into());
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in ranges.iter().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(format!(
                        "ranges {a} ({}) and {b} ({}) overlap",
                        a.subnet, b.subnet
                    ));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|r| r.start.is_ipv4())
    }

    /// The range that can allocate `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// How many addresses the set can hand out: every address of each range but its
    /// gateway (exactly what [`RangeSet::walk`] yields).
    pub fn capacity(&self) -> u128 {
        self.0
            .iter()
            .map(|r| {
                let size = (to_u128(r.end) - to_u128(r.start)).saturating_add(1);
                size - u128::from(r.contains(r.gateway))
            })
            .fold(0, u128::saturating_add)
    }

    /// True when `ip` is one [`RangeSet::walk`] yields: in a range and not its gateway.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.range_for(ip)
            .is_some_and(|r| canonical(ip) != r.gateway)
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// Every allocatable address once, in the reference's round-robin order: from the one
    /// after `last` (when it is still in the set) around to `last` itself, otherwise from the
    /// first range's start; moving from each range's end to the next range's start and
    /// skipping each range's gateway.
    pub fn walk(&self, last: Option<IpAddr>) -> Walk<'_> {
        let start = last
            .and_then(|ip| {
                let i = self.0.iter().position(|r| r.contains(ip))?;
                Some(self.advance((i, to_u128(canonical(ip)))))
            })
            .or_else(|| self.0.first().map(|r| (0, to_u128(r.start))));
        Walk {
            set: self,
            first: start,
            next: start,
        }
    }

    fn advance(&self, (i, cur): (usize, u128)) -> (usize, u128) {
        match self.0.get(i) {
            Some(r) if cur < to_u128(r.end) => (i, cur + 1),
            _ => {
                let j = if self.0.is_empty() {
                    0
                } else {
                    (i + 1) % self.0.len()
                };
                (j, self.0.get(j).map(|r| to_u128(r.start)).unwrap_or(0))
            }
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// The iterator of [`RangeSet::walk`]: yields each candidate with its range.
pub struct Walk<'a> {
    set: &'a RangeSet,
    first: Option<(usize, u128)>,
    next: Option<(usize, u128)>,
}

impl<'a> Iterator for Walk<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (i, cur) = self.next?;
            let range = self.set.0.get(i)?;
            let following = self.set.advance((i, cur));
            self.next = if Some(following) == self.first {
                None
            } else {
                Some(following)
            };
            let ip = from_u128(cur, range.start);
            if ip != range.gateway {
                return Some((ip, range));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_defaults_skip_network_and_broadcast() {
        let r = Range::new(net("10.1.2.0/24"), None, None, None).unwrap();
        assert_eq!(r.start, ip("10.1.2.1"));
        assert_eq!(r.end, ip("10.1.2.254"));
        assert_eq!(r.gateway, ip("10.1.2.1"));
    }

    #[test]
    fn v6_defaults_end_at_the_last_address() {
        let r = Range::new(net("fd00:1::/120"), None, None, None).unwrap();
        assert_eq!(r.start, ip("fd00:1::1"));
        assert_eq!(r.end, ip("fd00:1::ff"));
        assert_eq!(r.gateway, ip("fd00:1::1"));
    }

    #[test]
    fn too_small_and_out_of_subnet_are_refused() {
        assert!(
            Range::new(net("10.0.0.0/31"), None, None, None)
                .unwrap_err()
                .contains("too small")
        );
        assert!(Range::new(net("10.0.0.0/30"), None, None, None).is_ok());
        assert!(Range::new(net("fd00::/127"), None, None, None).is_err());
        let e = Range::new(net("10.0.0.0/24"), Some(ip("10.0.1.5")), None, None).unwrap_err();
        assert!(e.contains("not in network"), "{e}");
        let e = Range::new(net("10.0.0.0/24"), None, Some(ip("fd00::1")), None).unwrap_err();
        assert!(e.contains("family"), "{e}");
        let e = Range::new(net("10.0.0.0/24"), None, None, Some(ip("10.9.0.1"))).unwrap_err();
        assert!(e.contains("gateway"), "{e}");
        let e = Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.50")),
            Some(ip("10.0.0.40")),
            None,
        )
        .unwrap_err();
        assert!(e.contains("before rangeStart"), "{e}");
    }

    #[test]
    fn a_start_after_the_default_end_is_refused() {
        // The default rangeEnd of 10.0.0.0/8 is 10.255.255.254: a start on the broadcast
        // address would make it the only (and a wrong) candidate.
        let e = Range::new(net("10.0.0.0/8"), Some(ip("10.255.255.255")), None, None).unwrap_err();
        assert!(e.contains("after rangeEnd 10.255.255.254"), "{e}");
        assert!(e.contains("broadcast"), "{e}");
        let r = Range::new(net("10.0.0.0/8"), Some(ip("10.255.255.254")), None, None).unwrap();
        assert_eq!(r.start, r.end);
        // IPv6 has no broadcast address: its last address is a valid start.
        let r = Range::new(net("fd00::/120"), Some(ip("fd00::ff")), None, None).unwrap();
        assert_eq!(r.end, ip("fd00::ff"));
    }

    #[test]
    fn walk_round_robins_wraps_and_skips_the_gateway() {
        let r = Range::new(net("10.0.0.0/29"), None, None, None).unwrap();
        let set = RangeSet::new(vec![r]).unwrap();
        let all: Vec<String> = set.walk(None).map(|(i, _)| i.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let from4: Vec<String> = set
            .walk(Some(ip("10.0.0.4")))
            .map(|(i, _)| i.to_string())
            .collect();
        assert_eq!(
            from4,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        // A last address outside the set restarts at the first range's start.
        let outside: Vec<IpAddr> = set.walk(Some(ip("192.168.0.1"))).map(|x| x.0).collect();
        assert_eq!(outside.first(), Some(&ip("10.0.0.2")));
    }

    #[test]
    fn capacity_is_what_the_walk_yields() {
        let r = |sub: &str, a: Option<&str>, b: Option<&str>, gw: Option<&str>| {
            Range::new(net(sub), a.map(ip), b.map(ip), gw.map(ip)).unwrap()
        };
        let sets = [
            RangeSet::new(vec![r("10.0.0.0/24", None, None, None)]).unwrap(),
            RangeSet::new(vec![r("10.0.0.0/30", None, None, None)]).unwrap(),
            // The gateway outside the range is not subtracted.
            RangeSet::new(vec![r(
                "10.0.0.0/24",
                Some("10.0.0.10"),
                Some("10.0.0.19"),
                None,
            )])
            .unwrap(),
            RangeSet::new(vec![
                r("10.0.0.0/24", Some("10.0.0.1"), Some("10.0.0.5"), None),
                r("10.0.1.0/28", None, None, Some("10.0.1.7")),
            ])
            .unwrap(),
            RangeSet::new(vec![r("fd00::/120", None, None, None)]).unwrap(),
        ];
        for set in &sets {
            let walked: Vec<IpAddr> = set.walk(None).map(|(ip, _)| ip).collect();
            assert_eq!(set.capacity(), walked.len() as u128, "{set}");
            assert!(walked.iter().all(|ip| set.is_allocatable(*ip)), "{set}");
        }
        assert_eq!(sets[0].capacity(), 253);
        assert!(!sets[0].is_allocatable(ip("10.0.0.1")), "the gateway");
        assert!(!sets[0].is_allocatable(ip("10.0.0.255")), "broadcast");
        let big = RangeSet::new(vec![r("fd00::/64", None, None, None)]).unwrap();
        assert_eq!(big.capacity(), (1u128 << 64) - 2);
    }

    #[test]
    fn walk_crosses_ranges_in_order() {
        let a = Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.10")),
            Some(ip("10.0.0.11")),
            None,
        )
        .unwrap();
        let b = Range::new(net("10.0.1.0/30"), None, None, Some(ip("10.0.1.2"))).unwrap();
        let set = RangeSet::new(vec![a, b]).unwrap();
        let got: Vec<String> = set
            .walk(Some(ip("10.0.0.11")))
            .map(|(i, _)| i.to_string())
            .collect();
        assert_eq!(got, ["10.0.1.1", "10.0.0.10", "10.0.0.11"]);
    }

    #[test]
    fn sets_reject_mixed_families_and_overlaps() {
        let a = Range::new(net("10.0.0.0/24"), None, None, None).unwrap();
        let b = Range::new(net("fd00::/64"), None, None, None).unwrap();
        assert!(
            RangeSet::new(vec![a.clone(), b])
                .unwrap_err()
                .contains("mixed")
        );
        let c = Range::new(net("10.0.0.0/25"), None, None, None).unwrap();
        assert!(
            RangeSet::new(vec![a.clone(), c])
                .unwrap_err()
                .contains("overlap")
        );
        assert!(RangeSet::new(vec![]).unwrap_err().contains("empty"));
        let d = Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.200")),
            None,
            Some(ip("10.0.0.1")),
        )
        .unwrap();
        let e = Range::new(
            net("10.0.0.0/24"),
            None,
            Some(ip("10.0.0.199")),
            Some(ip("10.0.0.1")),
        )
        .unwrap();
        assert!(
            RangeSet::new(vec![d, e]).is_ok(),
            "disjoint parts of one subnet"
        );
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("fd00::1")), ip("fd00::1"));
    }
}
