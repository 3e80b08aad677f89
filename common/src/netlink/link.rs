//! Links: lookups, dumps, creating bridges and veth pairs, link settings, bridge port flags
//! and bridge VLANs.

use super::{Link, Mac, RouteSocket, VethSpec};
use crate::error::{Error, Result};
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeStpState, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge,
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkExtentMask,
    LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge, State,
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

fn link_from_msg(msg: &LinkMessage) -> Link {
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

/// The bridge port attributes (`IFLA_INFO_SLAVE_DATA`) of a link message, if it is a port.
fn bridge_port_data(msg: &LinkMessage) -> Option<&[InfoBridgePort]> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => Some(port.as_slice()),
            _ => None,
        }),
        _ => None,
    })
}

fn not_found(op: &str, what: impl std::fmt::Display) -> Error {
    Error::netlink(op, libc::ENODEV).context(format!("{what}"))
}

impl RouteSocket {
    /// The raw RTM_GETLINK reply for a link, None when the kernel says it does not exist.
    fn get_link_msg(&mut self, msg: LinkMessage, op: &str) -> Result<Option<LinkMessage>> {
        match self.nl.get(RouteNetlinkMessage::GetLink(msg), op) {
            Ok(RouteNetlinkMessage::NewLink(m)) => Ok(Some(m)),
            Ok(other) => Err(Error::internal(format!(
                "netlink {op}: unexpected reply {other:?}"
            ))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn link_msg_by_index(&mut self, index: u32) -> Result<Option<LinkMessage>> {
        if index == 0 {
            return Ok(None);
        }
        let mut msg = link_msg(index);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.get_link_msg(msg, "get link")
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        Ok(self
            .get_link_msg(msg, &format!("get link {name}"))?
            .as_ref()
            .map(link_from_msg))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        Ok(self.link_msg_by_index(index)?.as_ref().map(link_from_msg))
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let mut msg = link_msg(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let out = self
            .nl
            .dump(RouteNetlinkMessage::GetLink(msg), "dump links")?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })
            .collect())
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
        let msg = self
            .link_msg_by_index(index)?
            .ok_or_else(|| not_found(op, format!("link {index}")))?;
        let port = bridge_port_data(&msg)
            .ok_or_else(|| Error::internal(format!("{op}: link {index} is not a bridge port")))?;
        let mut flags = (false, false);
        for attr in port {
            match attr {
                InfoBridgePort::HairpinMode(on) => flags.0 = *on,
                InfoBridgePort::Isolated(on) => flags.1 = *on,
                _ => {}
            }
        }
        Ok(flags)
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
