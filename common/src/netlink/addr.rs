//! Addresses: dump, add, delete.

use super::{Address, Family, RouteSocket};
use crate::error::Result;
use crate::nfnetlink::{self, NLMSG_HDRLEN};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

pub(super) fn family_of(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

pub(super) fn family_of_ip(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The request for `addr` on `index`: IFA_LOCAL + IFA_ADDRESS for IPv4 (plus IFA_BROADCAST
/// when asked, as `ip` sets it for prefixes shorter than /31), IFA_ADDRESS for IPv6.
fn addr_msg(index: u32, addr: IpNetwork, with_broadcast: bool) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of_ip(addr.ip());
    msg.header.prefix_len = addr.prefix();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    match addr {
        IpNetwork::V4(v4) => {
            msg.attributes.push(AddressAttribute::Local(addr.ip()));
            msg.attributes.push(AddressAttribute::Address(addr.ip()));
            if with_broadcast && v4.prefix() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        IpNetwork::V6(_) => msg.attributes.push(AddressAttribute::Address(addr.ip())),
    }
    msg
}

/// `struct ifaddrmsg`'s size.
const IFADDRMSG_LEN: usize = 8;
/// The `IFA_*` attributes [`address_from_reply`] reads.
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;

/// An address attribute's value: 4 or 16 bytes.
pub(super) fn ip_from_bytes(v: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(v) {
        Some(IpAddr::from(b))
    } else {
        <[u8; 16]>::try_from(v).ok().map(IpAddr::from)
    }
}

/// An `RTM_NEWADDR` reply (header included) read directly, as [`super::link`] reads links:
/// None for a message that is no address.
fn address_from_reply(raw: &[u8]) -> Option<Address> {
    let body = raw.get(NLMSG_HDRLEN..)?;
    let &[_family, prefix_len, header_flags, scope, ..] = body else {
        return None;
    };
    let index = nfnetlink::u32_ne(body.get(4..IFADDRMSG_LEN)?)?;
    let (mut local, mut address, mut flags) = (None, None, None);
    for (kind, value) in nfnetlink::attrs(body.get(IFADDRMSG_LEN..)?) {
        match kind {
            IFA_LOCAL => local = ip_from_bytes(value),
            IFA_ADDRESS => address = ip_from_bytes(value),
            IFA_FLAGS => flags = nfnetlink::u32_ne(value),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    // links, and the only one sent otherwise for IPv6.
    let ip = local.or(address)?;
    Some(Address {
        index,
        addr: IpNetwork::new(ip, prefix_len).ok()?,
        scope,
        flags: flags.unwrap_or(u32::from(header_flags)),
    })
}

/// The same as [`address_from_reply`] through netlink-packet-route's decoder: the reference
/// the tests hold it to.
#[cfg(test)]
pub(super) fn address_from_msg(msg: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(f.bits()),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    // links, and the only one sent otherwise for IPv6.
    let ip = local.or(address)?;
    let addr = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
    Some(Address {
        index: msg.header.index,
        addr,
        scope: u8::from(msg.header.scope),
        flags: flags.unwrap_or_else(|| u32::from(msg.header.flags.bits())),
    })
}

impl RouteSocket {
    pub fn addresses(
        &mut self,
        index: Option<u32>,
        family: Option<Family>,
    ) -> Result<Vec<Address>> {
        // With strict checking (see NlSocket::open) the IPv4 and IPv6 dumps hold only the
        // addresses of the link asked for (an unspecified family would also ask families
        // that may refuse the filter); the filter below still holds where it does not.
        let mut msg = AddressMessage::default();
        msg.header.family = family.map_or(AddressFamily::Unspec, family_of);
        if family.is_some() {
            msg.header.index = index.unwrap_or(0);
        }
        // Addresses of other families (an unspecified dump holds MCTP's, for one) decode to
        // None: kept out, not warned about.
        let out = match self.nl.dump_with(
            RouteNetlinkMessage::GetAddress(msg),
            "dump addresses",
            &mut |raw| Ok(address_from_reply(raw)),
        ) {
            Ok(out) => out,
            // The kernel's filter refuses a link that is gone: it has no addresses.
            Err(e) if e.is_not_found() && family.is_some() && index.is_some() => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(out
            .into_iter()
            .flatten()
            .filter(|a| index.is_none_or(|i| a.index == i))
            .filter(|a| match family {
                Some(Family::V4) => a.addr.is_ipv4(),
                Some(Family::V6) => a.addr.is_ipv6(),
                None => true,
            })
            .collect())
    }

    /// Adds an address (NLM_F_EXCL; EEXIST if present).
    pub fn add_address(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        self.nl.request_ack(
            RouteNetlinkMessage::NewAddress(addr_msg(index, addr, true)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr} (link {index})"),
        )
    }

    /// Deletes an address; one that is not there is EADDRNOTAVAIL.
    pub fn del_address(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        self.nl.request_ack(
            RouteNetlinkMessage::DelAddress(addr_msg(index, addr, false)),
            0,
            &format!("delete address {addr} (link {index})"),
        )
    }
}
