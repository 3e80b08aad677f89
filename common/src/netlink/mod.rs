//! Synchronous rtnetlink: a socket with sequence checks and acks, and typed operations.
//!
//! Every function here touches the kernel. A [`RouteSocket`] belongs to the network namespace
//! it was opened in ([`RouteSocket::open_in`] opens it inside another one), so container-side
//! work needs no further namespace switching.
//!
//! Errors keep the kernel's errno: `e.is_exists()`, `e.is_not_found()`, `e.errno()`.

use crate::error::{Error, Result};
use crate::netns::NetNs;
use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); code 7 on anything else.
pub fn parse_mac(s: &str) -> Result<Mac> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || Error::config(format!("invalid MAC address {s:?}"));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        // from_str_radix alone would take "+a".
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "ifb", ... (None for plain devices such as lo).
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// IFLA_MASTER (the bridge of a bridge port).
    pub master: Option<u32>,
    /// IFF_UP (administratively up).
    pub up: bool,
    /// IFLA_OPERSTATE is UP.
    pub oper_up: bool,
    pub promisc: bool,
    /// IFF_ALLMULTI (receive all multicast).
    pub allmulti: bool,
    /// IFLA_TXQLEN (transmit queue length, in packets).
    pub txqlen: u32,
    /// IFLA_MIN_MTU / IFLA_MAX_MTU: the range the device accepts (None if not reported).
    pub min_mtu: Option<u32>,
    pub max_mtu: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub link_index: Option<u32>,
    /// IFLA_LINK_NETNSID: set when the peer lives in another namespace.
    pub link_netnsid: Option<i32>,
    /// IFLA_IFALIAS, when set and not empty.
    pub alias: Option<String>,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// With its prefix length and host bits ("10.0.0.5/24").
    pub addr: IpNetwork,
    /// RT_SCOPE_*: 0 universe, 253 link, 254 host.
    pub scope: u8,
    /// IFA_F_* flags (IFA_F_TENTATIVE = 0x40, IFA_F_DADFAILED = 0x08, ...).
    pub flags: u32,
}

/// A route, as read or to be added (main table unless `table` says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: u32,
    pub advmss: u32,
    pub priority: u32,
    /// None = main (254).
    pub table: Option<u32>,
    /// None = universe with a gateway, link without.
    pub scope: Option<u8>,
}

impl RouteEntry {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>, oif: Option<u32>) -> RouteEntry {
        RouteEntry {
            dst,
            gw,
            oif,
            mtu: 0,
            advmss: 0,
            priority: 0,
            table: None,
            scope: None,
        }
    }
}

/// Address family filter for dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A veth pair to create with one request: `name` here, `peer_name` inside `peer_ns`.
#[derive(Debug, Clone, Copy)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer_name: &'a str,
    pub peer_ns: &'a NetNs,
    /// 0 = kernel default.
    pub mtu: u32,
    pub peer_mac: Option<Mac>,
}

mod addr;
mod link;
mod route;
mod socket;

pub(crate) use socket::recv_whole;
pub mod tc;
mod wait;

#[cfg(test)]
pub(crate) mod tests;

/// An rtnetlink socket bound to one network namespace.
///
/// The link, bridge, address, route and wait operations are in the submodules `link`,
/// `addr`, `route` and `wait`; every mutation is acknowledged by the kernel before it
/// returns, and errors keep the kernel's errno.
#[derive(Debug)]
pub struct RouteSocket {
    nl: socket::NlSocket,
    /// Opened alongside `nl` by the `*_for_waits` constructors, so in the same namespace;
    /// joins multicast groups only while [`RouteSocket::wait_oper_up`] or
    /// [`RouteSocket::wait_dad_done`] run. Most callers never wait, and skip it.
    events: Option<socket::EventSocket>,
}

impl RouteSocket {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<RouteSocket> {
        Ok(RouteSocket {
            nl: socket::NlSocket::open()?,
            events: None,
        })
    }

    /// Like [`RouteSocket::open`], with the event socket the waits need.
    pub fn open_for_waits() -> Result<RouteSocket> {
        Ok(RouteSocket {
            nl: socket::NlSocket::open()?,
            events: Some(socket::EventSocket::open()?),
        })
    }

    /// Opens a socket inside `ns` (joined briefly on a helper thread); the socket keeps
    /// working in `ns` from any thread.
    pub fn open_in(ns: &NetNs) -> Result<RouteSocket> {
        ns.run(RouteSocket::open)
            .map_err(|e| e.context(format!("opening a netlink socket in {}", ns.path())))
    }

    /// Like [`RouteSocket::open_in`], with the event socket the waits need.
    pub fn open_in_for_waits(ns: &NetNs) -> Result<RouteSocket> {
        ns.run(RouteSocket::open_for_waits)
            .map_err(|e| e.context(format!("opening a netlink socket in {}", ns.path())))
    }
}
