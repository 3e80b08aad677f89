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
use std::time::Duration;

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
        if part.len() != 2 {
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
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub link_index: Option<u32>,
    /// IFLA_LINK_NETNSID: set when the peer lives in another namespace.
    pub link_netnsid: Option<i32>,
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

fn todo<T>(op: &str) -> Result<T> {
    Err(Error::internal(format!(
        "netlink {op}: not implemented yet"
    )))
}

/// An rtnetlink socket bound to one network namespace.
#[derive(Debug)]
pub struct RouteSocket {
    _private: (),
}

impl RouteSocket {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<RouteSocket> {
        todo("open")
    }

    /// Opens a socket inside `ns` (joined briefly on a helper thread); the socket keeps
    /// working in `ns` from any thread.
    pub fn open_in(ns: &NetNs) -> Result<RouteSocket> {
        let _ = ns;
        todo("open_in")
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let _ = name;
        todo("get link")
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let _ = index;
        todo("get link")
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        todo("dump links")
    }

    /// Creates a bridge (NLM_F_EXCL: an existing one is an EEXIST error). STP stays off.
    /// `mtu` 0 = default. `vlan_filtering` sets IFLA_BR_VLAN_FILTERING.
    pub fn create_bridge(&mut self, name: &str, mtu: u32, vlan_filtering: bool) -> Result<()> {
        let _ = (name, mtu, vlan_filtering);
        todo("create bridge")
    }

    /// Creates a veth pair whose peer is born inside `spec.peer_ns` (one RTM_NEWLINK,
    /// NLM_F_EXCL).
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()> {
        let _ = spec;
        todo("create veth")
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let _ = index;
        todo("delete link")
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let _ = index;
        todo("set up")
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        let _ = index;
        todo("set down")
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let _ = (index, master);
        todo("set master")
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let _ = (index, mtu);
        todo("set mtu")
    }

    pub fn set_mac(&mut self, index: u32, mac: &Mac) -> Result<()> {
        let _ = (index, mac);
        todo("set mac")
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        let _ = (index, on);
        todo("set promisc")
    }

    /// Bridge port flags of `index` (a port of some bridge): hairpin mode and isolation.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<()> {
        let _ = (index, hairpin, isolated);
        todo("set bridge port")
    }

    /// Reads (hairpin, isolated) of a bridge port.
    pub fn bridge_port_flags(&mut self, index: u32) -> Result<(bool, bool)> {
        let _ = index;
        todo("get bridge port")
    }

    /// Adds VLAN `vid` on bridge port (or bridge self) `index`, optionally as PVID/untagged.
    pub fn bridge_vlan_add(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        let _ = (index, vid, pvid, untagged);
        todo("bridge vlan add")
    }

    pub fn bridge_vlan_del(&mut self, index: u32, vid: u16) -> Result<()> {
        let _ = (index, vid);
        todo("bridge vlan del")
    }

    /// The VLANs on a bridge port: (vid, pvid, untagged).
    pub fn bridge_vlans(&mut self, index: u32) -> Result<Vec<(u16, bool, bool)>> {
        let _ = index;
        todo("bridge vlan dump")
    }

    pub fn addresses(
        &mut self,
        index: Option<u32>,
        family: Option<Family>,
    ) -> Result<Vec<Address>> {
        let _ = (index, family);
        todo("dump addresses")
    }

    /// Adds an address (NLM_F_EXCL; EEXIST if present).
    pub fn add_address(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        let _ = (index, addr);
        todo("add address")
    }

    pub fn del_address(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        let _ = (index, addr);
        todo("delete address")
    }

    /// Routes of the main table (or all tables when `all_tables`) of one family.
    pub fn routes(&mut self, family: Family, all_tables: bool) -> Result<Vec<RouteEntry>> {
        let _ = (family, all_tables);
        todo("dump routes")
    }

    /// Adds a route (NLM_F_EXCL; EEXIST if present).
    pub fn add_route(&mut self, route: &RouteEntry) -> Result<()> {
        let _ = route;
        todo("add route")
    }

    pub fn del_route(&mut self, route: &RouteEntry) -> Result<()> {
        let _ = route;
        todo("delete route")
    }

    /// Waits, without polling, until link `index` is operationally up: subscribes to link
    /// events, checks the current state, then waits for the event. Ok(false) on timeout.
    pub fn wait_oper_up(&mut self, index: u32, timeout: Duration) -> Result<bool> {
        let _ = (index, timeout);
        todo("wait oper up")
    }

    /// Waits, without polling, until no IPv6 address on `index` is tentative (DAD done).
    /// Ok(false) on timeout; an address that failed DAD is an error.
    pub fn wait_dad_done(&mut self, index: u32, timeout: Duration) -> Result<bool> {
        let _ = (index, timeout);
        todo("wait dad")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip() {
        let m = parse_mac("0a:58:0A:f4:00:01").unwrap();
        assert_eq!(format_mac(&m), "0a:58:0a:f4:00:01");
        assert_eq!(parse_mac("0a:58:0a:f4:00").unwrap_err().code(), 7);
        assert_eq!(parse_mac("zz:58:0a:f4:00:01").unwrap_err().code(), 7);
    }
}
