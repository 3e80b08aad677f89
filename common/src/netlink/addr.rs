//! Addresses: dump, add, delete.

use super::{Address, Family, RouteSocket};
use crate::error::Result;
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

fn address_from_msg(msg: &AddressMessage) -> Option<Address> {
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
        let mut msg = AddressMessage::default();
        msg.header.family = family.map_or(AddressFamily::Unspec, family_of);
        let out = self
            .nl
            .dump(RouteNetlinkMessage::GetAddress(msg), "dump addresses")?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_from_msg(a),
                _ => None,
            })
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
