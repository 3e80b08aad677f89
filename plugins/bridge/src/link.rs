//! Kernel-side work of the bridge plugin: the bridge, the veth pair, the container interface,
//! gateway addresses. Every function here touches the kernel.

use crate::config::Conf;
use crate::{container_routes, family_of};
use common::error::{Error, IoContext, Result};
use common::netlink::{Family, Link, Mac, RouteSocket, VethSpec, format_mac, parse_mac};
use common::netns::NetNs;
use common::skel::CmdArgs;
use common::spec::{CniResult, Interface, Route};
use common::sysctl;
use ipnetwork::IpNetwork;
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

/// How long ADD waits for IPv6 duplicate address detection when `enabledad` is set.
const DAD_TIMEOUT: Duration = Duration::from_secs(10);

pub struct BridgeInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
}

pub struct VethInfo {
    pub host_index: u32,
    pub host_name: String,
    pub host_mac: Option<Mac>,
    pub mtu: u32,
}

pub struct ContainerInfo {
    pub mac: Mac,
    pub mtu: u32,
}

/// Gateway addresses (gateway IP with its subnet's prefix) per family.
#[derive(Debug, Default)]
pub struct Gateways {
    pub v4: Vec<IpNetwork>,
    pub v6: Vec<IpNetwork>,
}

/// Writes a per-interface sysctl, ignoring a missing path (IPv6 disabled, no such device).
fn write_if_sysctl(proto: &str, ifname: &str, key: &str, value: &str) {
    let path = sysctl::path_from_parts(&["net", proto, "conf", ifname, key]);
    if let Err(e) = sysctl::write_path(&path, value) {
        log::debug!("{path}: {e}");
    }
}

/// Finds or creates the bridge (kernel), brings it up, and applies promiscMode.
pub fn ensure_bridge(host: &mut RouteSocket, conf: &Conf) -> Result<BridgeInfo> {
    let name = conf.bridge();
    let link = match host.link_by_name(name)? {
        Some(l) => l,
        None => {
            let vlan_filtering = conf.vlan != 0 || !conf.trunk.is_empty();
            let created = match host.create_bridge(name, conf.mtu, vlan_filtering) {
                Ok(()) => true,
                Err(e) if e.is_exists() => false,
                Err(e) => return Err(e.context(format!("failed to create bridge {name:?}"))),
            };
            let link = host.link_by_name(name)?.ok_or_else(|| {
                Error::internal(format!("bridge {name:?} vanished after creation"))
            })?;
            if created {
                write_if_sysctl("ipv6", name, "accept_ra", "0");
                // Before it comes up: a tentative link-local address would stall the first
                // forwarded or DNATed IPv6 packets for the length of DAD (~1.5 s).
                write_if_sysctl("ipv6", name, "accept_dad", "0");
                // Pin the MAC: otherwise a bridge takes the lowest MAC of its ports, which
                // changes as containers come and go.
                if let Some(mac) = link.mac {
                    host.set_mac(link.index, &mac)?;
                }
            }
            link
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::internal(format!(
            "{name:?} already exists but is not a bridge"
        )));
    }
    if conf.raw.promisc_mode && !link.promisc {
        host.set_promisc(link.index, true)?;
    }
    if !link.up {
        host.set_up(link.index)?;
    }
    Ok(BridgeInfo {
        index: link.index,
        name: link.name,
        mac: link.mac,
        mtu: link.mtu,
    })
}

fn random_u32() -> Result<u32> {
    let mut buf = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .io_context("reading /dev/urandom")?;
    Ok(u32::from_ne_bytes(buf))
}

/// A name for a host-side veth, `veth` + 8 hex digits, as the reference makes them.
fn random_veth_name() -> Result<String> {
    Ok(format!("veth{:08x}", random_u32()?))
}

/// Creates the veth pair (container end = `ifname` inside `netns`), attaches the host end to
/// the bridge with the port settings, and brings it up.
pub fn create_veth(
    host: &mut RouteSocket,
    netns: &NetNs,
    ifname: &str,
    conf: &Conf,
    bridge: &BridgeInfo,
) -> Result<VethInfo> {
    let mut created = None;
    for _ in 0..10 {
        let host_name = random_veth_name()?;
        let spec = VethSpec {
            name: &host_name,
            peer_name: ifname,
            peer_ns: netns,
            mtu: conf.mtu,
            peer_mac: conf.mac,
        };
        match host.create_veth(&spec) {
            Ok(()) => {
                created = Some(host_name);
                break;
            }
            Err(e) if e.is_exists() => {
                if host.link_by_name(&host_name)?.is_none() {
                    return Err(Error::internal(format!(
                        "container veth name {ifname:?} already exists in {}",
                        netns.path()
                    )));
                }
            }
            Err(e) => return Err(e.context("failed to create the veth pair")),
        }
    }
    let host_name =
        created.ok_or_else(|| Error::internal("failed to find a free veth name in 10 tries"))?;
    let link = host
        .link_by_name(&host_name)?
        .ok_or_else(|| Error::internal(format!("veth {host_name} vanished after creation")))?;
    let info = VethInfo {
        host_index: link.index,
        host_name: host_name.clone(),
        host_mac: link.mac,
        mtu: link.mtu,
    };
    // From here on the caller's undo deletes the pair if anything fails.
    write_if_sysctl("ipv6", &host_name, "accept_ra", "0");
    host.set_master(link.index, bridge.index).map_err(|e| {
        e.context(format!(
            "failed to connect {host_name} to bridge {}",
            bridge.name
        ))
    })?;
    if conf.raw.hairpin_mode || conf.raw.port_isolation {
        host.set_bridge_port(link.index, conf.raw.hairpin_mode, conf.raw.port_isolation)
            .map_err(|e| e.context(format!("failed to set port flags on {host_name}")))?;
    }
    setup_port_vlans(host, link.index, conf)?;
    host.set_up(link.index)?;
    Ok(info)
}

fn setup_port_vlans(host: &mut RouteSocket, index: u32, conf: &Conf) -> Result<()> {
    if conf.vlan != 0 {
        host.bridge_vlan_add(index, conf.vlan, true, true)
            .map_err(|e| e.context(format!("failed to set up vlan {}", conf.vlan)))?;
    }
    for &vid in &conf.trunk {
        host.bridge_vlan_add(index, vid, false, false)
            .map_err(|e| e.context(format!("failed to add trunk vlan {vid}")))?;
    }
    let uses_vlans = conf.vlan != 0 || !conf.trunk.is_empty();
    if uses_vlans && !conf.raw.preserve_default_vlan && conf.vlan != 1 && !conf.trunk.contains(&1) {
        match host.bridge_vlan_del(index, 1) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.context("failed to remove the default vlan")),
        }
    }
    Ok(())
}

/// Fills in missing gateways (subnet + 1), adds default routes for isDefaultGateway, and
/// collects the gateway addresses for the bridge (REFERENCE 2.1 `calcGateways`).
pub fn calc_gateways(result: &mut CniResult, default_gateway: bool) -> Result<Gateways> {
    let mut gws = Gateways::default();
    let mut default_found = [false, false];
    for ip in &mut result.ips {
        let v4 = ip.address.is_ipv4();
        let gateway = match ip.gateway {
            Some(gw) => gw,
            None => {
                let gw = first_host(&ip.address);
                ip.gateway = Some(gw);
                gw
            }
        };
        let slot = usize::from(!v4);
        if default_gateway && !default_found.get(slot).copied().unwrap_or(true) {
            let default: IpNetwork = if v4 {
                IpNetwork::V4(ipnetwork::Ipv4Network::from(
                    std::net::Ipv4Addr::UNSPECIFIED,
                ))
            } else {
                IpNetwork::V6(ipnetwork::Ipv6Network::from(
                    std::net::Ipv6Addr::UNSPECIFIED,
                ))
            };
            let default = IpNetwork::new(default.ip(), 0)
                .map_err(|e| Error::internal(format!("default route: {e}")))?;
            let existing = result
                .routes
                .iter()
                .find(|r| r.dst == default && r.gw.is_some());
            if let Some(r) = existing {
                if r.gw != Some(gateway) {
                    log::info!(
                        "isDefaultGateway: IPAM already routes {default} via {:?}",
                        r.gw
                    );
                }
            } else {
                result.routes.push(Route::new(default, Some(gateway)));
            }
            if let Some(f) = default_found.get_mut(slot) {
                *f = true;
            }
        }
        let gw_net = IpNetwork::new(gateway, ip.address.prefix())
            .map_err(|e| Error::internal(format!("gateway {gateway}: {e}")))?;
        if v4 {
            gws.v4.push(gw_net)
        } else {
            gws.v6.push(gw_net)
        }
    }
    Ok(gws)
}

/// The first host address of a network (network address + 1).
fn first_host(net: &IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()).wrapping_add(1),
        )),
        IpNetwork::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).wrapping_add(1),
        )),
    }
}

pub struct ContainerSetup<'a> {
    pub ifname: &'a str,
    pub result: &'a CniResult,
    pub conf: &'a Conf,
}

/// Configures the container interface. Runs inside the container's netns (on the thread
/// [`NetNs::run`] made), so sysctls and the socket it opens are the container's.
pub fn setup_container(s: &ContainerSetup<'_>) -> Result<ContainerInfo> {
    let mut sock = RouteSocket::open_for_waits()?;
    let link = sock.link_by_name(s.ifname)?.ok_or_else(|| {
        Error::internal(format!(
            "container interface {} not found after creation",
            s.ifname
        ))
    })?;
    let info = ContainerInfo {
        mac: link.mac.unwrap_or_default(),
        mtu: link.mtu,
    };
    if s.conf.raw.disable_container_interface {
        return Ok(info);
    }
    let has_v4 = s.result.ips.iter().any(|ip| ip.address.is_ipv4());
    let has_v6 = s.result.ips.iter().any(|ip| ip.address.is_ipv6());
    let dad = s.conf.raw.enabledad && !(s.conf.raw.hairpin_mode || s.conf.raw.promisc_mode);
    if has_v6 {
        write_if_sysctl("ipv6", "lo", "disable_ipv6", "0");
        write_if_sysctl("ipv6", s.ifname, "disable_ipv6", "0");
        write_if_sysctl("ipv6", s.ifname, "keep_addr_on_down", "1");
        if dad {
            write_if_sysctl("ipv6", s.ifname, "enhanced_dad", "1");
            write_if_sysctl("ipv6", s.ifname, "accept_dad", "1");
        } else {
            write_if_sysctl("ipv6", s.ifname, "accept_dad", "0");
        }
    }
    if has_v4 {
        write_if_sysctl("ipv4", s.ifname, "arp_notify", "1");
    }
    for ip in &s.result.ips {
        sock.add_address(link.index, ip.address).map_err(|e| {
            e.context(format!(
                "failed to add address {} to {}",
                ip.address, s.ifname
            ))
        })?;
    }
    sock.set_up(link.index)?;
    if has_v6 && dad && !sock.wait_dad_done(link.index, DAD_TIMEOUT)? {
        return Err(Error::internal(format!(
            "IPv6 duplicate address detection on {} did not finish within {}s",
            s.ifname,
            DAD_TIMEOUT.as_secs()
        )));
    }
    for route in container_routes(s.result, link.index) {
        match sock.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => {
                return Err(e.context(format!(
                    "failed to add route {} via {:?}",
                    route.dst, route.gw
                )));
            }
        }
    }
    Ok(info)
}

/// Puts the gateway addresses on the bridge (or on `<bridge>.<vlan>`) and enables forwarding.
/// Returns the vlan interface for the result when one is used.
pub fn setup_gateways(
    host: &mut RouteSocket,
    conf: &Conf,
    bridge: &BridgeInfo,
    gws: &Gateways,
) -> Result<Option<Interface>> {
    let (target, vlan_iface) = if conf.vlan != 0 {
        let (index, iface) = ensure_vlan_interface(host, conf, bridge)?;
        (index, Some(iface))
    } else {
        (bridge.index, None)
    };
    if !gws.v6.is_empty() {
        // A tentative gateway address answers nobody until DAD ends (1-2 s): containers
        // could not use their default route right after ADD. The gateway is ours alone.
        let name = vlan_iface
            .as_ref()
            .map_or(bridge.name.as_str(), |i| i.name.as_str());
        write_if_sysctl("ipv6", name, "accept_dad", "0");
    }
    // The bridge keeps the MAC it had before its first port joined (as the reference pins it).
    let pin = if vlan_iface.is_none() {
        bridge.mac
    } else {
        None
    };
    for gw in gws.v4.iter().chain(&gws.v6) {
        ensure_address(host, target, gw, conf.raw.force_address, pin)
            .map_err(|e| e.context("failed to set bridge addr"))?;
    }
    if !gws.v4.is_empty() {
        sysctl::write("net/ipv4/ip_forward", "1")
            .map_err(|e| e.context("failed to enable forwarding"))?;
    }
    if !gws.v6.is_empty() {
        sysctl::write("net/ipv6/conf/all/forwarding", "1")
            .map_err(|e| e.context("failed to enable forwarding"))?;
    }
    Ok(vlan_iface)
}

/// Ensures `gw` is on link `index`. Another IPv4 address, or an overlapping IPv6 one, is an
/// error unless `force` (then it is replaced).
fn ensure_address(
    host: &mut RouteSocket,
    index: u32,
    gw: &IpNetwork,
    force: bool,
    pin_mac: Option<Mac>,
) -> Result<()> {
    let family = family_of(gw);
    for a in host.addresses(Some(index), Some(family))? {
        if a.addr == *gw {
            return Ok(());
        }
        let conflicts =
            family == Family::V4 || a.addr.contains(gw.ip()) || gw.contains(a.addr.ip());
        if conflicts {
            if force {
                host.del_address(index, a.addr)?;
            } else {
                return Err(Error::internal(format!(
                    "the bridge already has an IP address {} different from {gw} (set forceAddress to replace it)",
                    a.addr
                )));
            }
        }
    }
    match host.add_address(index, *gw) {
        Ok(()) => {}
        Err(e) if e.is_exists() => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(mac) = pin_mac {
        host.set_mac(index, &mac)?;
    }
    Ok(())
}

/// The `<bridge>.<vlan>` interface that carries the gateway of a VLAN: the host end of a
/// veth pair whose other end is a bridge port untagged in that VLAN.
fn ensure_vlan_interface(
    host: &mut RouteSocket,
    conf: &Conf,
    bridge: &BridgeInfo,
) -> Result<(u32, Interface)> {
    let name = format!("{}.{}", bridge.name, conf.vlan);
    common::spec::config::validate_ifname(&name)
        .map_err(|e| Error::config(format!("vlan gateway interface name {name:?}: {e}")))?;
    // A usable one is a veth whose peer is an up port of this bridge; anything else (say,
    // left half-made by a killed ADD) is replaced.
    if let Some(existing) = host.link_by_name(&name)? {
        let peer = match existing.link_index {
            Some(i) => host.link_by_index(i)?,
            None => None,
        };
        let usable = existing.kind.as_deref() == Some("veth")
            && existing.up
            && peer.is_some_and(|p| p.master == Some(bridge.index) && p.up);
        if usable {
            return Ok(vlan_interface(existing));
        }
        log::warn!("replacing the incomplete vlan gateway interface {name}");
        match host.delete_link(existing.index) {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    let here = NetNs::open("/proc/thread-self/ns/net")?;
    let peer = random_veth_name()?;
    match host.create_veth(&VethSpec {
        name: &name,
        peer_name: &peer,
        peer_ns: &here,
        mtu: bridge.mtu,
        peer_mac: None,
    }) {
        Ok(()) => {}
        // A concurrent ADD made it: use theirs.
        Err(e) if e.is_exists() => {
            let link = host
                .link_by_name(&name)?
                .ok_or_else(|| Error::internal(format!("{name} vanished")))?;
            return Ok(vlan_interface(link));
        }
        Err(e) => return Err(e.context(format!("failed to create {name}"))),
    }
    let peer_link = host
        .link_by_name(&peer)?
        .ok_or_else(|| Error::internal(format!("{peer} vanished after creation")))?;
    host.set_master(peer_link.index, bridge.index)?;
    let port_conf = Conf {
        trunk: Vec::new(),
        ..conf.clone()
    };
    setup_port_vlans(host, peer_link.index, &port_conf)?;
    host.set_up(peer_link.index)?;
    let link = host
        .link_by_name(&name)?
        .ok_or_else(|| Error::internal(format!("{name} vanished after creation")))?;
    host.set_up(link.index)?;
    Ok(vlan_interface(link))
}

fn vlan_interface(link: Link) -> (u32, Interface) {
    (
        link.index,
        Interface {
            mac: link.mac.as_ref().map(format_mac).unwrap_or_default(),
            name: link.name,
            ..Interface::default()
        },
    )
}

/// Deletes the host end of an attachment's veth (kernel), if it is still a veth on our bridge.
pub fn delete_host_veth(conf: &Conf, name: &str) -> Result<()> {
    let mut host = RouteSocket::open()?;
    let Some(link) = host.link_by_name(name)? else {
        return Ok(());
    };
    let bridge = host.link_by_name(conf.bridge())?;
    if link.kind.as_deref() != Some("veth") || bridge.map(|b| b.index) != link.master {
        log::warn!("DEL: {name} is not a veth on {}; left alone", conf.bridge());
        return Ok(());
    }
    match host.delete_link(link.index) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// Deletes the container interface (kernel; the host end of the veth goes with it). A missing
/// interface is success.
pub fn delete_container_link(netns: &NetNs, ifname: &str) -> Result<()> {
    netns.run(|| {
        let mut sock = RouteSocket::open()?;
        match sock.link_by_name(ifname)? {
            Some(link) => match sock.delete_link(link.index) {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    })
}

fn expect_kind(link: &Link, kind: &str) -> Result<()> {
    if link.kind.as_deref() != Some(kind) {
        return Err(Error::internal(format!(
            "{} is not a {kind} (kind {:?})",
            link.name, link.kind
        )));
    }
    Ok(())
}

/// CHECK of the host side: the bridge and the host veth of prevResult.
pub fn check_links(
    host: &mut RouteSocket,
    netns: &NetNs,
    args: &CmdArgs,
    conf: &Conf,
    prev: &CniResult,
) -> Result<()> {
    let br = host
        .link_by_name(conf.bridge())?
        .ok_or_else(|| Error::internal(format!("bridge {} not found", conf.bridge())))?;
    expect_kind(&br, "bridge")?;
    if let Some(want) = prev.interfaces.iter().find(|i| i.name == conf.bridge()) {
        if let (Ok(mac), Some(have)) = (parse_mac(&want.mac), br.mac) {
            if mac != have {
                return Err(Error::internal(format!(
                    "bridge {} has MAC {} but prevResult says {}",
                    br.name,
                    format_mac(&have),
                    want.mac
                )));
            }
        }
    }
    if br.promisc != conf.raw.promisc_mode {
        return Err(Error::internal(format!(
            "bridge {} promiscuous mode is {} but the config says {}",
            br.name, br.promisc, conf.raw.promisc_mode
        )));
    }
    let (_, container) = prev.container_interface(&args.ifname).ok_or_else(|| {
        Error::internal(format!(
            "prevResult has no interface {} with a sandbox",
            args.ifname
        ))
    })?;
    if container.sandbox != args.netns {
        return Err(Error::internal(format!(
            "sandbox mismatch: prevResult has {} but CNI_NETNS is {}",
            container.sandbox,
            netns.path()
        )));
    }
    let host_veth = crate::host_veth_of(conf, prev)
        .ok_or_else(|| Error::internal("prevResult has no host veth"))?;
    let hv = host
        .link_by_name(&host_veth.name)?
        .ok_or_else(|| Error::internal(format!("host veth {} not found", host_veth.name)))?;
    expect_kind(&hv, "veth")?;
    if hv.master != Some(br.index) {
        return Err(Error::internal(format!(
            "host veth {} is not attached to bridge {}",
            hv.name, br.name
        )));
    }
    Ok(())
}

/// CHECK inside the container (runs in its netns): the interface, its MAC, addresses, routes.
pub fn check_container(
    ifname: &str,
    index_in_result: Option<usize>,
    prev: &CniResult,
) -> Result<()> {
    let mut sock = RouteSocket::open()?;
    let link = sock
        .link_by_name(ifname)?
        .ok_or_else(|| Error::internal(format!("container interface {ifname} not found")))?;
    expect_kind(&link, "veth")?;
    if let Some(want) = index_in_result.and_then(|i| prev.interfaces.get(i)) {
        if let (Ok(mac), Some(have)) = (parse_mac(&want.mac), link.mac) {
            if mac != have {
                return Err(Error::internal(format!(
                    "interface {ifname} has MAC {} but prevResult says {}",
                    format_mac(&have),
                    want.mac
                )));
            }
        }
    }
    let addrs = sock.addresses(Some(link.index), None)?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == index_in_result)
    {
        if !addrs.iter().any(|a| a.addr == ip.address) {
            return Err(Error::internal(format!(
                "address {} not found on {ifname}",
                ip.address
            )));
        }
    }
    let mut tables: [Option<Vec<common::netlink::RouteEntry>>; 2] = [None, None];
    for want in container_routes(prev, link.index) {
        let slot = usize::from(want.dst.is_ipv6());
        let have = match tables.get_mut(slot) {
            Some(Some(t)) => t,
            Some(entry) => entry.insert(sock.routes(family_of(&want.dst), true)?),
            None => continue,
        };
        let found = have.iter().any(|r| {
            r.dst == want.dst
                && (want.gw.is_none() || r.gw == want.gw)
                && (r.oif.is_none() || r.oif == Some(link.index))
        });
        if !found {
            return Err(Error::internal(format!(
                "route to {} via {:?} not found in the container",
                want.dst, want.gw
            )));
        }
    }
    Ok(())
}
