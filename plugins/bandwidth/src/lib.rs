//! The `bandwidth` plugin (REFERENCE 2.4): limits the traffic of a veth attachment with tbf
//! qdiscs, all over netlink. Chained after a plugin that made the veth (bridge, ptp).
//!
//! - ingress (towards the container): tbf `1:` at the root of the host veth;
//! - egress (from the container): the host veth's ingress qdisc `ffff:` with a u32 match-all
//!   filter redirecting to an ifb `bwp<hash>`, whose root tbf shapes it. The ifb is added to
//!   the result and carries the attachment in its alias, which is how GC finds stale ones.
//!
//! ADD takes back what it did when a step fails. DEL removes the ifb (and the veth's qdiscs
//! while the veth lives) with or without prevResult and netns; GC removes the ifbs of this
//! network's attachments that are not valid any more.

pub mod config;
pub mod shape;

use common::error::{Error, Result};
use common::netlink::tc::{INGRESS_HANDLE, PschedClock, TBF_HANDLE, TC_H_INGRESS, TC_H_ROOT};
use common::netlink::{Link, RouteSocket, format_mac};
use common::netns::NetNs;
use common::nft::comment_is_stale;
use common::skel::{CmdArgs, Plugin};
use common::spec::config::valid_attachments;
use common::spec::{CniResult, Interface, Version};
use config::{Conf, Limits};
use shape::{FILTER_PRIO, ifb_alias, ifb_name};

/// The plugin.
pub struct Bandwidth;

/// Chaining (prevResult) exists from 0.3.0.
const VERSIONS: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Plugin for Bandwidth {
    fn about(&self) -> String {
        format!(
            "bandwidth plugin v{} (cni-rs): tbf shaping of veth attachments, egress through an ifb",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn supported_versions(&self) -> &[Version] {
        &VERSIONS
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = Conf::load(args)?;
        let prev = args.prev_result()?;
        if conf.limits.is_none() {
            return Ok(prev.unwrap_or_default());
        }
        let mut result = prev.ok_or_else(|| {
            Error::config("bandwidth must be called as a chained plugin (no prevResult)")
        })?;
        let netns = NetNs::open_container(&args.netns)?;
        let mut host = RouteSocket::open()?;
        let veth = shape::host_veth(&mut host, &netns, &args.ifname, &result)?;
        let mut undo = Undo::default();
        let added = add(args, &conf, &mut host, &veth, &mut result, &mut undo);
        if let Err(e) = added {
            undo.run(&mut host, &veth);
            return Err(e);
        }
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let conf = Conf::load_for_teardown(args);
        del(args, &conf)
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = Conf::load(args)?;
        let result = args.prev_result()?.ok_or_else(|| {
            Error::config("bandwidth must be called as a chained plugin (no prevResult)")
        })?;
        let netns = NetNs::open_container(&args.netns)?;
        let mut host = RouteSocket::open()?;
        let veth = shape::host_veth(&mut host, &netns, &args.ifname, &result)?;
        check(args, &conf.network, &conf.limits, &mut host, &veth)
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let conf = Conf::load_for_teardown(args);
        let valid = valid_attachments(&args.conf)?;
        let stale = comment_is_stale(&conf.network, &valid);
        let mut host = RouteSocket::open()?;
        let mut errors = Vec::new();
        for ifb in host.ifb_links()? {
            let Some(alias) = ifb.alias.as_deref() else {
                continue;
            };
            if !shape::is_ifb_name(&ifb.name) || !stale(alias) {
                continue;
            }
            log::info!("GC: removing ifb {} of stale attachment {alias}", ifb.name);
            if let Err(e) = host.delete_link(ifb.index) {
                if !e.is_not_found() {
                    errors.push(e.context(format!("removing ifb {}", ifb.name)));
                }
            }
        }
        common::error::join(errors)
    }
}

/// What a failing ADD must take back.
#[derive(Default)]
struct Undo {
    veth_root: bool,
    veth_ingress: bool,
    ifb: Option<u32>,
}

impl Undo {
    fn run(&self, host: &mut RouteSocket, veth: &Link) {
        if self.veth_ingress {
            if let Err(e) = host.delete_qdisc(veth.index, TC_H_INGRESS, INGRESS_HANDLE) {
                log::warn!("rolling back the ingress qdisc of {}: {e}", veth.name);
            }
        }
        if self.veth_root {
            if let Err(e) = host.delete_qdisc(veth.index, TC_H_ROOT, TBF_HANDLE) {
                log::warn!("rolling back the tbf of {}: {e}", veth.name);
            }
        }
        if let Some(index) = self.ifb {
            if let Err(e) = host.delete_link(index) {
                if !e.is_not_found() {
                    log::warn!("rolling back the ifb: {e}");
                }
            }
        }
    }
}

fn add(
    args: &CmdArgs,
    conf: &Conf,
    host: &mut RouteSocket,
    veth: &Link,
    result: &mut CniResult,
    undo: &mut Undo,
) -> Result<()> {
    let clock = PschedClock::read();
    // Every parameter is computed before the first change.
    let ingress = conf
        .limits
        .ingress
        .as_ref()
        .map(|l| shape::tbf_of(l, clock))
        .transpose()?;
    let egress = conf
        .limits
        .egress
        .as_ref()
        .map(|l| shape::tbf_of(l, clock))
        .transpose()?;

    if let Some(tbf) = ingress {
        undo.veth_root = true;
        host.replace_tbf(veth.index, &tbf)
            .map_err(|e| e.context(format!("shaping ingress on {}", veth.name)))?;
    }

    if let Some(tbf) = egress {
        let name = ifb_name(&conf.network, &args.container_id);
        let alias = ifb_alias(&conf.network, &args.container_id, &args.ifname);
        let ifb = ensure_ifb(host, &name, &alias, veth.mtu, undo)?;
        host.replace_tbf(ifb.index, &tbf)
            .map_err(|e| e.context(format!("shaping egress on {name}")))?;
        // Anything of ours from an earlier, interrupted ADD goes first, with its filter.
        undo.veth_ingress = true;
        host.delete_qdisc(veth.index, TC_H_INGRESS, INGRESS_HANDLE)?;
        host.add_ingress_qdisc(veth.index)
            .map_err(|e| e.context(format!("adding the ingress qdisc to {}", veth.name)))?;
        host.add_redirect_filter(veth.index, INGRESS_HANDLE, FILTER_PRIO, ifb.index)
            .map_err(|e| e.context(format!("redirecting {} to {name}", veth.name)))?;
        if !result.interfaces.iter().any(|i| i.name == name) {
            result.interfaces.push(Interface {
                name: name.clone(),
                mac: ifb.mac.as_ref().map(format_mac).unwrap_or_default(),
                ..Interface::default()
            });
        }
    }
    Ok(())
}

/// The attachment's ifb, up with `mtu` and tagged with `alias`: created, or taken over when
/// an earlier ADD of the same attachment (or the reference plugin, which sets no alias)
/// left it. One that another attachment owns is an error.
fn ensure_ifb(
    host: &mut RouteSocket,
    name: &str,
    alias: &str,
    mtu: u32,
    undo: &mut Undo,
) -> Result<common::netlink::tc::IfbLink> {
    match host.create_ifb(name, mtu, Some(alias)) {
        Ok(()) => {
            let ifb = host
                .ifb_by_name(name)?
                .ok_or_else(|| Error::internal(format!("ifb {name} vanished after creation")))?;
            undo.ifb = Some(ifb.index);
            Ok(ifb)
        }
        Err(e) if e.is_exists() => {
            let ifb = host.ifb_by_name(name)?.ok_or_else(|| {
                Error::internal(format!("{name} exists and is not an ifb device"))
            })?;
            if let Some(owner) = ifb.alias.as_deref() {
                if owner != alias {
                    return Err(Error::internal(format!(
                        "ifb {name} belongs to attachment {owner}"
                    )));
                }
            }
            log::info!("taking over the existing ifb {name}");
            if ifb.mtu != mtu {
                host.set_mtu(ifb.index, mtu)?;
            }
            host.set_up(ifb.index)?;
            host.set_alias(ifb.index, alias)?;
            Ok(ifb)
        }
        Err(e) => {
            // A create that failed half-way (e.g. while setting the alias) leaves the device.
            if let Ok(Some(ifb)) = host.ifb_by_name(name) {
                undo.ifb = Some(ifb.index);
            }
            Err(e)
        }
    }
}

fn del(args: &CmdArgs, conf: &Conf) -> Result<()> {
    let mut host = RouteSocket::open()?;
    let name = ifb_name(&conf.network, &args.container_id);
    let alias = ifb_alias(&conf.network, &args.container_id, &args.ifname);
    // An ifb whose alias names another attachment (same network and container, another
    // ifname) is not ours; one without alias is (the reference plugin made it).
    let ifb = host
        .ifb_by_name(&name)?
        .filter(|l| l.alias.as_deref().is_none_or(|a| a == alias));

    let mut errors = Vec::new();
    // The veth's qdiscs die with the veth; while it lives (CNI_NETNS empty but the container
    // still up, or this plugin removed from a running chain), take them off.
    match veths_for_teardown(args, &mut host) {
        Ok(veths) => {
            for veth in veths {
                if let Err(e) =
                    shape::clear_veth(&mut host, veth.index, ifb.as_ref().map(|l| l.index))
                {
                    errors.push(e.context(format!("removing the qdiscs of {}", veth.name)));
                }
            }
        }
        Err(e) => log::info!("DEL: not clearing veth qdiscs: {e}"),
    }
    if let Some(ifb) = ifb {
        if let Err(e) = host.delete_link(ifb.index) {
            if !e.is_not_found() {
                errors.push(e.context(format!("removing ifb {name}")));
            }
        }
    }
    common::error::join(errors)
}

/// The host veth(s) of the attachment, as far as DEL can still tell: through the container
/// namespace if it is there, else the veths of prevResult.
fn veths_for_teardown(args: &CmdArgs, host: &mut RouteSocket) -> Result<Vec<Link>> {
    let Some(result) = args.prev_result().ok().flatten() else {
        return Ok(Vec::new());
    };
    if !args.netns.is_empty() {
        if let Ok(netns) = NetNs::open(&args.netns) {
            match shape::host_veth(host, &netns, &args.ifname, &result) {
                Ok(veth) => return Ok(vec![veth]),
                Err(e) => log::info!("DEL: {e}; falling back to prevResult's veths"),
            }
        }
    }
    Ok(shape::host_veths_of(host, &result))
}

fn check(
    args: &CmdArgs,
    network: &str,
    limits: &Limits,
    host: &mut RouteSocket,
    veth: &Link,
) -> Result<()> {
    let clock = PschedClock::read();
    if let Some(limit) = &limits.ingress {
        let want = shape::tbf_of(limit, clock)?;
        let got = shape::root_tbf(host, veth.index)?;
        shape::check_tbf(
            got.as_ref(),
            &want,
            shape::reference_tbf_of(limit, clock).as_ref(),
            &format!("ingress tbf on {}", veth.name),
        )?;
    }
    if let Some(limit) = &limits.egress {
        let want = shape::tbf_of(limit, clock)?;
        let reference = shape::reference_tbf_of(limit, clock);
        let name = ifb_name(network, &args.container_id);
        let ifb = host
            .ifb_by_name(&name)?
            .ok_or_else(|| Error::internal(format!("ifb {name} not found")))?;
        if !ifb.up {
            return Err(Error::internal(format!("ifb {name} is down")));
        }
        let got = shape::root_tbf(host, ifb.index)?;
        shape::check_tbf(
            got.as_ref(),
            &want,
            reference.as_ref(),
            &format!("egress tbf on {name}"),
        )?;
        let redirected = host
            .filters(veth.index, INGRESS_HANDLE)?
            .iter()
            .any(|f| f.redirect_to == Some(ifb.index));
        if !redirected {
            return Err(Error::internal(format!(
                "no filter on the ingress of {} redirects to {name}",
                veth.name
            )));
        }
    }
    Ok(())
}
