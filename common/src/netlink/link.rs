//! Links: lookups, dumps, creating bridges and veth pairs, link settings, bridge port flags
//! and bridge VLANs.

use super::{Link, Mac, RouteSocket, VethSpec};
use crate::error::{Error, Result};
use crate::nfnetlink::{self, NLMSG_HDRLEN};
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeStpState, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge,
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::os::fd::{AsFd, AsRawFd};

/// `IFLA_BRPORT_MODE`: hairpin mode of a bridge port.
const IFLA_BRPORT_MODE: u16 = 4;
/// `IFLA_BRPORT_ISOLATED`.
const IFLA_BRPORT_ISOLATED: u16 = 33;

/// A link message for `index` (family unspec), with no attributes yet.
fn link_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// A link message of family AF_BRIDGE for `index`.
fn bridge_msg(index: u32) -> LinkMessage {
    let mut msg = link_msg(index);
    msg.header.interface_family = AddressFamily::Bridge;
    msg
}

/// `struct ifinfomsg`'s size, and the offsets of its index and flags.
const IFINFOMSG_LEN: usize = 16;
/// The `IFLA_*` attributes [`link_from_reply`] reads.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_TXQLEN: u16 = 13;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_IFALIAS: u16 = 20;
const IFLA_LINKINFO: u16 = 18;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_MIN_MTU: u16 = 50;
const IFLA_MAX_MTU: u16 = 51;
/// In `IFLA_LINKINFO`.
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
/// `IF_OPER_UP`.
const OPER_UP: u8 = 6;

/// An `RTM_NEWLINK` reply (header included) read directly: the few attributes a [`Link`]
/// holds, where a full decode parses every attribute of every link kind (statistics, AF
/// specifics, XDP...) into owned values: more code run and more memory per call.
fn link_from_reply(raw: &[u8]) -> std::result::Result<Link, String> {
    let body = raw
        .get(NLMSG_HDRLEN..)
        .filter(|b| b.len() >= IFINFOMSG_LEN)
        .ok_or_else(|| format!("link message of {} bytes", raw.len()))?;
    let index = nfnetlink::u32_ne(&body[4..8]).unwrap_or(0);
    let flags = nfnetlink::u32_ne(&body[8..12]).unwrap_or(0);
    let flag = |f: LinkFlags| flags & f.bits() != 0;
    let mut link = Link {
        index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        master: None,
        up: flag(LinkFlags::Up),
        oper_up: false,
        promisc: flag(LinkFlags::Promisc),
        allmulti: flag(LinkFlags::Allmulti),
        txqlen: 0,
        min_mtu: None,
        max_mtu: None,
        link_index: None,
        link_netnsid: None,
        alias: None,
    };
    for (kind, value) in nfnetlink::attrs(&body[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_IFNAME => link.name = nfnetlink::as_str(value).unwrap_or_default().to_string(),
            IFLA_ADDRESS => link.mac = <Mac>::try_from(value).ok(),
            IFLA_MTU => link.mtu = nfnetlink::u32_ne(value).unwrap_or(0),
            IFLA_TXQLEN => link.txqlen = nfnetlink::u32_ne(value).unwrap_or(0),
            IFLA_MIN_MTU => link.min_mtu = nfnetlink::u32_ne(value),
            IFLA_MAX_MTU => link.max_mtu = nfnetlink::u32_ne(value),
            IFLA_MASTER => link.master = nfnetlink::u32_ne(value),
            IFLA_OPERSTATE => link.oper_up = value.first() == Some(&OPER_UP),
            IFLA_LINK => link.link_index = nfnetlink::u32_ne(value),
            IFLA_LINK_NETNSID => link.link_netnsid = nfnetlink::u32_ne(value).map(|v| v as i32),
            IFLA_IFALIAS => {
                link.alias = nfnetlink::as_str(value)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string);
            }
            IFLA_LINKINFO => {
                link.kind = nfnetlink::find(value, IFLA_INFO_KIND)
                    .and_then(nfnetlink::as_str)
                    .map(str::to_string);
            }
            _ => {}
        }
    }
    Ok(link)
}

/// (hairpin, isolated) of a bridge port from its `RTM_NEWLINK` reply; None when the link
/// is no bridge port.
fn bridge_port_flags_from_reply(raw: &[u8]) -> Option<(bool, bool)> {
    let body = raw.get(NLMSG_HDRLEN + IFINFOMSG_LEN..)?;
    let info = nfnetlink::find(body, IFLA_LINKINFO)?;
    let kind = nfnetlink::find(info, IFLA_INFO_SLAVE_KIND).and_then(nfnetlink::as_str);
    if kind != Some("bridge") {
        return None;
    }
    let port = nfnetlink::find(info, IFLA_INFO_SLAVE_DATA)?;
    let on = |k: u16| nfnetlink::find(port, k).and_then(|v| v.first()) == Some(&1);
    Some((on(IFLA_BRPORT_MODE), on(IFLA_BRPORT_ISOLATED)))
}

/// The same as [`link_from_reply`] through netlink-packet-route's decoder: the reference
/// the tests hold it to.
#[cfg(test)]
pub(super) fn link_from_msg(msg: &LinkMessage) -> Link {
    use netlink_packet_route::link::State;
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        oper_up: false,
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        allmulti: msg.header.flags.contains(LinkFlags::Allmulti),
        txqlen: 0,
        min_mtu: None,
        max_mtu: None,
        link_index: None,
        link_netnsid: None,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = <Mac>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::TxQueueLen(q) => link.txqlen = *q,
            LinkAttribute::MinMtu(m) => link.min_mtu = Some(*m),
            LinkAttribute::MaxMtu(m) => link.max_mtu = Some(*m),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::OperState(s) => link.oper_up = *s == State::Up,
            LinkAttribute::Link(l) => link.link_index = Some(*l),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The dump request of [`RouteSocket::links`], for tests decoding its replies otherwise.
#[cfg(test)]
pub(super) fn link_request_for_test() -> RouteNetlinkMessage {
    let mut msg = link_msg(0);
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    RouteNetlinkMessage::GetLink(msg)
}

fn not_found(op: &str, what: impl std::fmt::Display) -> Error {
    Error::netlink(op, libc::ENODEV).context(format!("{what}"))
}

impl RouteSocket {
    /// The RTM_GETLINK reply for a link (undecoded), None when the kernel says it does not
    /// exist.
    fn get_link_reply(&mut self, msg: LinkMessage, op: &str) -> Result<Option<Vec<u8>>> {
        match self.nl.get_raw(RouteNetlinkMessage::GetLink(msg), op) {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn link_reply_by_index(&mut self, index: u32) -> Result<Option<Vec<u8>>> {
        if index == 0 {
            return Ok(None);
        }
        let mut msg = link_msg(index);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.get_link_reply(msg, "get link")
    }

    fn decode_link(raw: Option<Vec<u8>>, op: &str) -> Result<Option<Link>> {
        raw.map(|raw| {
            link_from_reply(&raw)
                .map_err(|e| Error::internal(format!("netlink {op}: cannot decode reply: {e}")))
        })
        .transpose()
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let op = format!("get link {name}");
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let raw = self.get_link_reply(msg, &op)?;
        Self::decode_link(raw, &op)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let raw = self.link_reply_by_index(index)?;
        Self::decode_link(raw, "get link")
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let mut msg = link_msg(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.nl.dump_with(
            RouteNetlinkMessage::GetLink(msg),
            "dump links",
            &mut link_from_reply,
        )
    }

    /// Creates a bridge (NLM_F_EXCL: an existing one is an EEXIST error). STP stays off.
    /// `mtu` 0 = default. `vlan_filtering` sets IFLA_BR_VLAN_FILTERING.
    pub fn create_bridge(&mut self, name: &str, mtu: u32, vlan_filtering: bool) -> Result<()> {
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if mtu != 0 {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut data = vec![InfoBridge::StpState(BridgeStpState::Disabled)];
        // Sent only when asked: kernels built without CONFIG_BRIDGE_VLAN_FILTERING refuse
        // the attribute even when it says 0.
        if vlan_filtering {
            data.push(InfoBridge::VlanFiltering(true));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(data)),
        ]));
        self.nl.request_ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create bridge {name}"),
        )
    }

    /// Creates a veth pair whose peer is born inside `spec.peer_ns` (one RTM_NEWLINK,
    /// NLM_F_EXCL).
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()> {
        let mut peer = link_msg(0);
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_ns.as_fd().as_raw_fd()));
        if spec.mtu != 0 {
            peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut msg = link_msg(0);
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        if spec.mtu != 0 {
            msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        // `spec.peer_ns` is borrowed until here, so the fd stays open while sent.
        self.nl.request_ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create veth {} (peer {})", spec.name, spec.peer_name),
        )
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.nl.request_ack(
            RouteNetlinkMessage::DelLink(link_msg(index)),
            0,
            &format!("delete link {index}"),
        )
    }

    fn set_link(&mut self, msg: LinkMessage, op: &str) -> Result<()> {
        let op = format!("{op} (link {})", msg.header.index);
        self.nl
            .request_ack(RouteNetlinkMessage::SetLink(msg), 0, &op)
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool, op: &str) -> Result<()> {
        let mut msg = link_msg(index);
        msg.header.change_mask = flag;
        if on {
            msg.header.flags = flag;
        }
        self.set_link(msg, op)
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, true, "set up")
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, false, "set down")
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut msg = link_msg(index);
        msg.attributes.push(LinkAttribute::Controller(master));
        self.set_link(msg, &format!("set master {master}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = link_msg(index);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, &format!("set mtu {mtu}"))
    }

    pub fn set_mac(&mut self, index: u32, mac: &Mac) -> Result<()> {
        let mut msg = link_msg(index);
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(msg, &format!("set mac {}", super::format_mac(mac)))
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flag(index, LinkFlags::Promisc, on, "set promisc")
    }

    pub fn set_allmulti(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flag(index, LinkFlags::Allmulti, on, "set allmulti")
    }

    /// Sets the transmit queue length (IFLA_TXQLEN), in packets.
    pub fn set_txqlen(&mut self, index: u32, qlen: u32) -> Result<()> {
        let mut msg = link_msg(index);
        msg.attributes.push(LinkAttribute::TxQueueLen(qlen));
        self.set_link(msg, &format!("set txqlen {qlen}"))
    }

    /// Bridge port flags of `index` (a port of some bridge): hairpin mode and isolation.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<()> {
        // AF_BRIDGE RTM_SETLINK without IFLA_BRIDGE_FLAGS goes to the port's bridge, which
        // reads the nested IFLA_PROTINFO as IFLA_BRPORT_* attributes.
        let mut msg = bridge_msg(index);
        msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(hairpin)])),
            LinkProtoInfoBridge::Other(DefaultNla::new(
                IFLA_BRPORT_ISOLATED,
                vec![u8::from(isolated)],
            )),
        ]));
        self.set_link(
            msg,
            &format!("set bridge port hairpin={hairpin} isolated={isolated}"),
        )
    }

    /// Reads (hairpin, isolated) of a bridge port.
    pub fn bridge_port_flags(&mut self, index: u32) -> Result<(bool, bool)> {
        let op = "get bridge port";
        let raw = self
            .link_reply_by_index(index)?
            .ok_or_else(|| not_found(op, format!("link {index}")))?;
        bridge_port_flags_from_reply(&raw)
            .ok_or_else(|| Error::internal(format!("{op}: link {index} is not a bridge port")))
    }

    /// The AF_SPEC flags that route a bridge VLAN request: `self` for the bridge device
    /// itself, nothing (its master) for a port.
    fn vlan_target(&mut self, index: u32, op: &str) -> Result<Vec<AfSpecBridge>> {
        let link = self
            .link_by_index(index)?
            .ok_or_else(|| not_found(op, format!("link {index}")))?;
        Ok(if link.kind.as_deref() == Some("bridge") {
            vec![AfSpecBridge::Flags(BridgeFlag::LowerDev)]
        } else {
            Vec::new()
        })
    }

    /// Adds VLAN `vid` on bridge port (or bridge self) `index`, optionally as PVID/untagged.
    pub fn bridge_vlan_add(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        let op = format!("bridge vlan add {vid}");
        let mut spec = self.vlan_target(index, &op)?;
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }));
        let mut msg = bridge_msg(index);
        msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
        self.set_link(msg, &op)
    }

    pub fn bridge_vlan_del(&mut self, index: u32, vid: u16) -> Result<()> {
        let op = format!("bridge vlan del {vid}");
        let mut spec = self.vlan_target(index, &op)?;
        spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo {
            flags: BridgeVlanInfoFlags::empty(),
            vid,
        }));
        let mut msg = bridge_msg(index);
        msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
        // AF_BRIDGE RTM_DELLINK removes VLANs; it never deletes the device.
        self.nl.request_ack(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("{op} (link {index})"),
        )
    }

    /// The VLANs on a bridge port: (vid, pvid, untagged).
    pub fn bridge_vlans(&mut self, index: u32) -> Result<Vec<(u16, bool, bool)>> {
        let op = "bridge vlan dump";
        if self.link_by_index(index)?.is_none() {
            return Err(not_found(op, format!("link {index}")));
        }
        // Strict checking refuses an index in a bridge dump request: dump all, pick ours.
        let mut msg = bridge_msg(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let out = self.nl.dump(RouteNetlinkMessage::GetLink(msg), op)?;
        let mut vlans = Vec::new();
        for m in &out {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            if l.header.index != index {
                continue;
            }
            for attr in &l.attributes {
                let LinkAttribute::AfSpecBridge(spec) = attr else {
                    continue;
                };
                for s in spec {
                    if let AfSpecBridge::VlanInfo(info) = s {
                        vlans.push((
                            info.vid,
                            info.flags.contains(BridgeVlanInfoFlags::Pvid),
                            info.flags.contains(BridgeVlanInfoFlags::Untagged),
                        ));
                    }
                }
            }
        }
        Ok(vlans)
    }
}
