//! Routes: dump, add, delete.

use super::addr::{family_of, family_of_ip, ip_from_bytes};
use super::{Family, RouteEntry, RouteSocket};
use crate::error::Result;
use crate::nfnetlink::{self, NLMSG_HDRLEN};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// RT_TABLE_MAIN.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// The scope [`RouteSocket::add_route`] picks when none is given: as `ip route` does,
/// universe for IPv6 and for routes through a gateway, link for on-link IPv4 routes.
fn default_scope(dst: &IpNetwork, gw: Option<IpAddr>) -> u8 {
    if dst.is_ipv6() || gw.is_some() {
        RouteScope::Universe.into()
    } else {
        RouteScope::Link.into()
    }
}

#[cfg(test)]
fn ip_of(addr: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The request for `route`. A delete leaves protocol and (unless given) scope open, so that
/// it matches the route whoever added it.
fn route_msg(route: &RouteEntry, delete: bool) -> RouteMessage {
    let table = route.table.unwrap_or(MAIN_TABLE);
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of_ip(route.dst.ip());
    msg.header.destination_prefix_length = route.dst.prefix();
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.kind = RouteType::Unicast;
    if delete {
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = route.scope.map_or(RouteScope::NoWhere, RouteScope::from);
    } else {
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::from(
            route
                .scope
                .unwrap_or_else(|| default_scope(&route.dst, route.gw)),
        );
    }
    if route.dst.prefix() != 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route.dst.network().into()));
    }
    if let Some(gw) = route.gw {
        msg.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if route.priority != 0 {
        msg.attributes
            .push(RouteAttribute::Priority(route.priority));
    }
    msg.attributes.push(RouteAttribute::Table(table));
    if !delete {
        let mut metrics = Vec::new();
        if route.mtu != 0 {
            metrics.push(RouteMetric::Mtu(route.mtu));
        }
        if route.advmss != 0 {
            metrics.push(RouteMetric::Advmss(route.advmss));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
    }
    msg
}

/// `struct rtmsg`'s size.
const RTMSG_LEN: usize = 12;
/// `RTN_UNICAST`.
const RTN_UNICAST: u8 = 1;
/// The `RTA_*` attributes [`route_from_reply`] reads, and `RTAX_*` in `RTA_METRICS`.
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RTAX_ADVMSS: u16 = 8;

/// A dumped unicast route as a [`RouteEntry`], with `table` None for main and `scope` None
/// when it is the one [`RouteSocket::add_route`] would have picked. The `RTM_NEWROUTE` reply
/// (header included) is read directly, as [`super::link`] reads links. None for other types.
fn route_from_reply(raw: &[u8]) -> Option<RouteEntry> {
    let body = raw.get(NLMSG_HDRLEN..)?;
    let &[
        family,
        dst_len,
        _src_len,
        _tos,
        table8,
        _protocol,
        scope,
        kind,
        ..,
    ] = body
    else {
        return None;
    };
    if kind != RTN_UNICAST {
        return None;
    }
    let mut dst_ip = None;
    let mut entry = RouteEntry::new(
        IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).ok()?,
        None,
        None,
    );
    let mut table = u32::from(table8);
    for (attr, value) in nfnetlink::attrs(body.get(RTMSG_LEN..)?) {
        match attr {
            RTA_DST => dst_ip = ip_from_bytes(value),
            RTA_GATEWAY => entry.gw = ip_from_bytes(value),
            RTA_OIF => entry.oif = nfnetlink::u32_ne(value),
            RTA_PRIORITY => entry.priority = nfnetlink::u32_ne(value).unwrap_or(0),
            RTA_TABLE => table = nfnetlink::u32_ne(value).unwrap_or(table),
            RTA_METRICS => {
                for (metric, v) in nfnetlink::attrs(value) {
                    match metric {
                        RTAX_MTU => entry.mtu = nfnetlink::u32_ne(v).unwrap_or(0),
                        RTAX_ADVMSS => entry.advmss = nfnetlink::u32_ne(v).unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let ip = match (dst_ip, i32::from(family)) {
        (Some(ip), _) => ip,
        (None, libc::AF_INET6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, libc::AF_INET) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    entry.dst = IpNetwork::new(ip, dst_len).ok()?;
    entry.table = (table != MAIN_TABLE).then_some(table);
    entry.scope = (scope != default_scope(&entry.dst, entry.gw)).then_some(scope);
    Some(entry)
}

/// The same as [`route_from_reply`] through netlink-packet-route's decoder: the reference
/// the tests hold it to.
#[cfg(test)]
pub(super) fn route_from_msg(msg: &RouteMessage) -> Option<RouteEntry> {
    use netlink_packet_route::AddressFamily;
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut dst_ip = None;
    let mut entry = RouteEntry::new(
        IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).ok()?,
        None,
        None,
    );
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_ip = ip_of(a),
            RouteAttribute::Gateway(a) => entry.gw = ip_of(a),
            RouteAttribute::Oif(i) => entry.oif = Some(*i),
            RouteAttribute::Priority(p) => entry.priority = *p,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Metrics(metrics) => {
                for m in metrics {
                    match m {
                        RouteMetric::Mtu(v) => entry.mtu = *v,
                        RouteMetric::Advmss(v) => entry.advmss = *v,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let ip = match (dst_ip, msg.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    entry.dst = IpNetwork::new(ip, msg.header.destination_prefix_length).ok()?;
    entry.table = (table != MAIN_TABLE).then_some(table);
    let scope = u8::from(msg.header.scope);
    entry.scope = (scope != default_scope(&entry.dst, entry.gw)).then_some(scope);
    Some(entry)
}

impl RouteSocket {
    /// Unicast routes of the main table (or all tables when `all_tables`) of one family.
    /// `table` is None for main; `scope` is None when it is the default [`Self::add_route`]
    /// picks (so an entry made with [`RouteEntry::new`] compares equal once read back, apart
    /// from the kernel's default IPv6 `priority` of 1024).
    pub fn routes(&mut self, family: Family, all_tables: bool) -> Result<Vec<RouteEntry>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(family);
        // Routes of other types (local, broadcast, ...) decode to None: kept out, not
        // warned about.
        let out = self.nl.dump_with(
            RouteNetlinkMessage::GetRoute(msg),
            "dump routes",
            &mut |raw| Ok(route_from_reply(raw)),
        )?;
        Ok(out
            .into_iter()
            .flatten()
            .filter(|r| all_tables || r.table.is_none())
            .collect())
    }

    /// Adds a route (NLM_F_EXCL; EEXIST if present).
    pub fn add_route(&mut self, route: &RouteEntry) -> Result<()> {
        self.nl.request_ack(
            RouteNetlinkMessage::NewRoute(route_msg(route, false)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {}", describe(route)),
        )
    }

    /// Deletes a route; one that is not there is ESRCH (IPv4) or ENOENT (IPv6).
    pub fn del_route(&mut self, route: &RouteEntry) -> Result<()> {
        self.nl.request_ack(
            RouteNetlinkMessage::DelRoute(route_msg(route, true)),
            0,
            &format!("delete route {}", describe(route)),
        )
    }
}

fn describe(route: &RouteEntry) -> String {
    let mut s = route.dst.to_string();
    if let Some(gw) = route.gw {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev {oif}"));
    }
    if let Some(t) = route.table {
        s.push_str(&format!(" table {t}"));
    }
    s
}
