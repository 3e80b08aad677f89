//! The `bridge` plugin: a Linux bridge on the host and a veth pair into the container
//! (REFERENCE 2.1), with ipMasq and MAC spoof checking in nftables.
//!
//! ADD is transactional: if any step fails, what this ADD created (veth, allocation, rules)
//! is removed before the error is returned. DEL removes everything the attachment owns even
//! when the netns is gone or CNI_NETNS is empty.

pub mod config;
mod link;
pub mod rules;

use common::error::{Error, Result};
use common::ipam;
use common::netlink::{Family, RouteEntry, RouteSocket, format_mac};
use common::netns::NetNs;
use common::skel::{CmdArgs, Command, Plugin};
use common::spec::{CniResult, Interface, Route, config::valid_attachments};
use config::Conf;
use ipnetwork::IpNetwork;
use link::{ContainerSetup, Gateways};
use rules::{AttachmentRules, SpoofCheck};
use std::time::Duration;

/// How long ADD waits for the host end of the veth to report carrier. With STP off the port
/// forwards as soon as it is up; this only bounds a kernel that never says so.
const PORT_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// The plugin.
pub struct Bridge;

impl Plugin for Bridge {
    fn about(&self) -> String {
        format!(
            "bridge plugin v{} (cni-rs): Linux bridge and veth, nftables ipMasq and MAC spoof check",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = config::load(args)?;
        let mut undo = Undo::default();
        // The result must also print in the config's version (0.1.0/0.2.0 need an address):
        // find out before returning, while a failure can still be rolled back.
        let added = add(args, &conf, &mut undo)
            .and_then(|result| result.to_json(args.version).map(|_| result));
        if added.is_err() {
            undo.run(args, &conf);
        }
        added
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load_for_teardown(args)?;
        del(args, &conf)
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load(args)?;
        check(args, &conf)
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load_for_teardown(args)?;
        let valid = valid_attachments(&args.conf)?;
        let mut errors = Vec::new();
        if let Err(e) = rules::gc_rules(&conf.raw.net.name, &valid) {
            errors.push(e.context("removing stale masquerade and spoof-check rules"));
        }
        if let Err(e) = rules::gc_reference_masq(&conf.raw.net.name, &valid) {
            errors.push(e);
        }
        if conf.is_layer3() {
            if let Err(e) = ipam::exec_command(args, Command::Gc) {
                errors.push(e);
            }
        }
        common::error::join(errors)
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load(args)?;
        if conf.is_layer3() {
            ipam::exec_command(args, Command::Status)?;
        }
        Ok(())
    }
}

/// What a failing ADD must take back.
#[derive(Default)]
struct Undo {
    host_veth: Option<u32>,
    ipam_allocated: bool,
    rules: Option<AttachmentRules>,
}

impl Undo {
    fn run(&self, args: &CmdArgs, conf: &Conf) {
        if let Some(rules) = &self.rules {
            if let Err(e) = rules::del_rules(
                &rules.network,
                &rules.container_id,
                &rules.ifname,
                Some(rules),
            ) {
                log::warn!("rolling back rules: {e}");
            }
        }
        if let Some(index) = self.host_veth {
            let res = RouteSocket::open().and_then(|mut s| s.delete_link(index));
            if let Err(e) = res {
                if !e.is_not_found() {
                    log::warn!("rolling back the veth: {e}");
                }
            }
        }
        if self.ipam_allocated && conf.is_layer3() {
            if let Err(e) = ipam::exec_command(args, Command::Del) {
                log::warn!("rolling back the IPAM allocation: {e}");
            }
        }
    }
}

fn add(args: &CmdArgs, conf: &Conf, undo: &mut Undo) -> Result<CniResult> {
    let netns = NetNs::open_container(&args.netns)?;
    let mut host = RouteSocket::open_for_waits()?;

    // An interface that is already there fails ADD before anything is allocated: an IPAM
    // that hands out the same lease again must not have it released by our rollback.
    if RouteSocket::open_in(&netns)?
        .link_by_name(&args.ifname)?
        .is_some()
    {
        return Err(Error::internal(format!(
            "container veth name {:?} already exists in {}",
            args.ifname, args.netns
        )));
    }

    // IPAM next: a config it refuses must leave the host untouched (no bridge either).
    let mut result = CniResult::default();
    let mut gateways = Gateways::default();
    if conf.is_layer3() {
        let ipam_result = ipam::exec_add(args)?;
        undo.ipam_allocated = true;
        if ipam_result.ips.is_empty() {
            return Err(Error::internal("IPAM plugin returned missing IP config"));
        }
        result.ips = ipam_result.ips;
        result.routes = ipam_result.routes;
        result.dns = ipam_result.dns;
        gateways = link::calc_gateways(&mut result, conf.raw.is_default_gateway)?;
    }

    let bridge = link::ensure_bridge(&mut host, conf)?;
    let veth = link::create_veth(&mut host, &netns, &args.ifname, conf, &bridge)?;
    undo.host_veth = Some(veth.host_index);

    let container = netns.run(|| {
        link::setup_container(&ContainerSetup {
            ifname: &args.ifname,
            result: &result,
            conf,
        })
    })?;

    result.interfaces = vec![
        Interface {
            name: bridge.name.clone(),
            mac: bridge.mac.as_ref().map(format_mac).unwrap_or_default(),
            mtu: bridge.mtu,
            ..Interface::default()
        },
        Interface {
            name: veth.host_name.clone(),
            mac: veth.host_mac.as_ref().map(format_mac).unwrap_or_default(),
            mtu: veth.mtu,
            ..Interface::default()
        },
        Interface {
            name: args.ifname.clone(),
            mac: format_mac(&container.mac),
            mtu: container.mtu,
            sandbox: args.netns.clone(),
            ..Interface::default()
        },
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }

    if conf.is_gateway {
        if let Some(vlan_iface) = link::setup_gateways(&mut host, conf, &bridge, &gateways)? {
            result.interfaces.push(vlan_iface);
        }
    }

    let attachment = attachment_rules(args, conf, &result, &veth.host_name, &container.mac);
    if !attachment.is_empty() {
        undo.rules = Some(attachment.clone());
        rules::add_rules(&attachment)?;
    }

    if !conf.raw.disable_container_interface
        && !host.wait_oper_up(veth.host_index, PORT_UP_TIMEOUT)?
    {
        return Err(Error::internal(format!(
            "bridge port in error state: {} did not come up within {}s",
            veth.host_name,
            PORT_UP_TIMEOUT.as_secs()
        )));
    }

    // The bridge MAC may change when its first port joins: report the current one.
    if let Some(br) = host.link_by_index(bridge.index)? {
        if let (Some(first), Some(mac)) = (result.interfaces.first_mut(), br.mac) {
            first.mac = format_mac(&mac);
        }
    }
    if let Some(dns) = conf.raw.net.dns.as_ref().filter(|d| !d.is_empty()) {
        result.dns = dns.clone();
    }
    Ok(result)
}

/// The nftables state this attachment owns, from a result (ADD) or prevResult (DEL, CHECK).
fn attachment_rules(
    args: &CmdArgs,
    conf: &Conf,
    result: &CniResult,
    host_veth: &str,
    container_mac: &common::netlink::Mac,
) -> AttachmentRules {
    AttachmentRules {
        network: conf.raw.net.name.clone(),
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
        masq: if conf.raw.ip_masq {
            result.ips.iter().map(|ip| ip.address).collect()
        } else {
            Vec::new()
        },
        spoof: conf.raw.macspoofchk.then(|| SpoofCheck {
            host_veth: host_veth.to_string(),
            mac: format_mac(container_mac),
        }),
    }
}

/// The rules recorded in a prevResult: host veth = the interface without sandbox that is
/// not the bridge; container MAC = the interface named CNI_IFNAME with a sandbox.
fn rules_from_prev(args: &CmdArgs, conf: &Conf, prev: &CniResult) -> Option<AttachmentRules> {
    let (_, container) = prev.container_interface(&args.ifname)?;
    let host_veth = host_veth_of(conf, prev)?;
    let mac = common::netlink::parse_mac(&container.mac).ok()?;
    Some(attachment_rules(args, conf, prev, &host_veth.name, &mac))
}

fn del(args: &CmdArgs, conf: &Conf) -> Result<()> {
    if conf.raw.ip_masq {
        rules::del_reference_masq(&conf.raw.net.name, &args.container_id, &args.ifname);
    }
    let mut errors = Vec::new();
    let prev = args.prev_result().unwrap_or_else(|e| {
        log::warn!("DEL: ignoring an unreadable prevResult: {e}");
        None
    });

    // Rules go before the address is released: once IPAM frees it, another attachment may
    // get it, and its elements must not be touched by ours. Masquerade rules go even before
    // the veth: the kernel then frees the deleted elements during the veth's removal instead
    // of after it (each waits for an RCU grace period). Spoof-check rules stay until the
    // veth is gone, so the container never sends unchecked.
    let remove_rules = |errors: &mut Vec<Error>| {
        if conf.raw.ip_masq || conf.raw.macspoofchk {
            let known = prev.as_ref().and_then(|p| rules_from_prev(args, conf, p));
            if let Err(e) = rules::del_rules(
                &conf.raw.net.name,
                &args.container_id,
                &args.ifname,
                known.as_ref(),
            ) {
                errors.push(e.context("removing masquerade and spoof-check rules"));
            }
        }
    };
    let rules_first = !conf.raw.macspoofchk;
    if rules_first {
        remove_rules(&mut errors);
    }

    // The container side: deleting it takes the host end of the veth with it. When the netns
    // is gone, the kernel tears its veths down asynchronously: delete the host end ourselves.
    let netns = match args.netns.as_str() {
        "" => None,
        path => match NetNs::open(path) {
            Ok(ns) => Some(ns),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                log::warn!("DEL: netns {path} unusable ({e}); removing host-side state only");
                None
            }
        },
    };
    let container_removed = match &netns {
        Some(ns) => match link::delete_container_link(ns, &args.ifname) {
            Ok(()) => true,
            Err(e @ Error::InvalidNetns(_)) => {
                log::warn!("DEL: {e}; removing host-side state only");
                false
            }
            Err(e) => {
                errors.push(e);
                true
            }
        },
        None => false,
    };
    if !container_removed {
        if let Some(host_veth) = prev.as_ref().and_then(|p| host_veth_of(conf, p)) {
            if let Err(e) = link::delete_host_veth(conf, &host_veth.name) {
                errors.push(e);
            }
        }
    }

    if !rules_first {
        remove_rules(&mut errors);
    }

    if conf.is_layer3() {
        if let Err(e) = ipam::exec_command(args, Command::Del) {
            errors.push(e);
        }
    }
    common::error::join(errors)
}

/// The host end of the veth in a result: the interface without sandbox that is not the bridge.
pub(crate) fn host_veth_of<'a>(conf: &Conf, result: &'a CniResult) -> Option<&'a Interface> {
    result
        .host_interfaces()
        .find(|i| i.name != conf.bridge() && i.name.starts_with("veth"))
}

fn check(args: &CmdArgs, conf: &Conf) -> Result<()> {
    let prev = args
        .prev_result()?
        .ok_or_else(|| Error::config("Required prevResult missing"))?;
    if conf.is_layer3() {
        ipam::exec_command(args, Command::Check)?;
    }
    let netns = NetNs::open_container(&args.netns)?;
    let mut host = RouteSocket::open()?;
    link::check_links(&mut host, &netns, args, conf, &prev)?;
    let container_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == args.ifname && i.sandbox == args.netns);
    netns.run(|| link::check_container(&args.ifname, container_idx, &prev))?;
    if conf.raw.ip_masq || conf.raw.macspoofchk {
        let rules = rules_from_prev(args, conf, &prev).ok_or_else(|| {
            Error::config(
                "prevResult lacks the host veth or container interface of this attachment",
            )
        })?;
        rules::check_rules(&rules)?;
    }
    Ok(())
}

/// Routes to install in the container: a route without a gateway uses the gateway of the
/// first address of its family that has one (as the reference's `ConfigureIface`).
pub(crate) fn container_routes(result: &CniResult, oif: u32) -> Vec<RouteEntry> {
    let gw_of = |v4: bool| {
        result
            .ips
            .iter()
            .filter(|ip| ip.address.is_ipv4() == v4)
            .find_map(|ip| ip.gateway)
    };
    result
        .routes
        .iter()
        .map(|r: &Route| RouteEntry {
            dst: r.dst,
            gw: r.gw.or_else(|| gw_of(r.dst.is_ipv4())),
            oif: Some(oif),
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
        })
        .collect()
}

/// The family of a network.
pub(crate) fn family_of(n: &IpNetwork) -> Family {
    if n.is_ipv4() { Family::V4 } else { Family::V6 }
}
