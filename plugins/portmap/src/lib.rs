//! The `portmap` plugin (REFERENCE 2.3): publishes container ports on the host with
//! nftables DNAT, for the `portMappings` capability. Chained: it reads the container's
//! addresses from prevResult and returns prevResult unchanged.
//!
//! ADD: one nft transaction (conditionsV4/V6 included, see [`text`]), after `route_localnet` is set on
//! the host interface towards the container (snat, IPv4); then the UDP conntrack entries of
//! the published host ports are flushed. DEL: one transaction without listing when
//! prevResult and the mappings are known, else a listing by comment; then the same flush.
//! GC: one listing and one transaction per network. See [`rules`] for the ruleset.

pub mod config;
pub mod rules;
pub mod text;

use common::conntrack::{self, Entry, PROTO_UDP};
use common::error::{Error, Result};
use common::netlink::{Family, RouteSocket};
use common::skel::{CmdArgs, Plugin};
use common::spec::CniResult;
use common::spec::config::valid_attachments;
use common::sysctl;
use config::Conf;
use ipnetwork::IpNetwork;
use rules::{AttachmentRules, Policy, UdpFlow};
use std::net::IpAddr;

/// The plugin.
pub struct Portmap;

impl Plugin for Portmap {
    fn about(&self) -> String {
        format!(
            "portmap plugin v{} (cni-rs): host ports to container ports with nftables DNAT",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = config::load(args)?;
        let prev = args.prev_result()?.ok_or_else(|| {
            Error::config("portmap must be called as a chained plugin: prevResult is missing")
        })?;
        // The result must print in the config's version; find out before changing anything.
        prev.to_json(args.version)?;
        let Some(rules) = attachment_rules(args, &conf, &prev) else {
            return Ok(prev);
        };
        if rules.is_empty() {
            return Ok(prev);
        }
        // Validate everything that can be validated before touching the kernel.
        let batch = rules::add_batch(&rules)?;
        if conf.snat {
            if let Some(v4) = rules.v4 {
                enable_route_localnet(v4)?;
            }
        }
        rules::add_rules(&rules, &batch)?;
        // After the rules, so that new packets take the new path. Failures only logged.
        flush_udp(&rules.udp_flows(), Stage::Add);
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load_for_teardown(args);
        // A prevResult that cannot be read counts as absent: DEL must still clean up.
        let prev = args.prev_result().unwrap_or_else(|e| {
            log::warn!("ignoring an unreadable prevResult on DEL: {e}");
            None
        });
        let known = match (&conf.mappings, &prev) {
            // The runtime says there were no mappings: ADD installed nothing.
            (Some(m), _) if m.is_empty() => return Ok(()),
            (Some(_), Some(prev)) => match attachment_rules(args, &conf, prev) {
                Some(r) if r.is_empty() => return Ok(()),
                other => other,
            },
            _ => None,
        };
        rules::del_reference_rules(conf.network(), &args.container_id, &args.ifname);
        let flows = rules::del_rules(
            conf.network(),
            &args.container_id,
            &args.ifname,
            known.as_ref(),
        )?;
        flush_udp(&flows, Stage::Del);
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load(args)?;
        let prev = args
            .prev_result()?
            .ok_or_else(|| Error::config("CHECK: required prevResult missing"))?;
        let Some(rules) = attachment_rules(args, &conf, &prev) else {
            return Ok(());
        };
        if rules.is_empty() {
            return Ok(());
        }
        rules::check_rules(&rules)?;
        if conf.snat {
            if let Some(v4) = rules.v4 {
                check_route_localnet(v4)?;
            }
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let conf = config::load_for_teardown(args);
        let valid = valid_attachments(&args.conf)?;
        let flows = rules::gc_rules(conf.network(), &valid)?;
        flush_udp(&flows, Stage::Del);
        rules::gc_reference_rules(conf.network(), &valid)
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        config::load(args)?;
        common::nft::nft_path()
            .map(|_| ())
            .map_err(|e| Error::NotAvailable(format!("cannot install port mappings: {e}")))
    }
}

/// The attachment's rules, or `None` when the config has no mappings.
fn attachment_rules(args: &CmdArgs, conf: &Conf, prev: &CniResult) -> Option<AttachmentRules> {
    let mappings = conf.mappings.as_ref().filter(|m| !m.is_empty())?;
    let (v4, v6) = config::container_ips(prev, &args.ifname);
    Some(AttachmentRules {
        network: conf.network().to_string(),
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
        v4: v4.map(|n| n.ip()),
        v6: v6.map(|n| n.ip()),
        mappings: mappings.clone(),
        policy: Policy {
            snat: conf.snat,
            masq_all: conf.masq_all,
            conditions_v4: conf.conditions_v4.clone(),
            conditions_v6: conf.conditions_v6.clone(),
        },
    })
}

/// Kernel: the name of the host interface the main table routes `dst` through (longest
/// prefix, then lowest metric).
fn host_interface_to(dst: IpAddr) -> Result<Option<String>> {
    let mut sock = RouteSocket::open()?;
    let family = if dst.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let best = sock
        .routes(family, false)?
        .into_iter()
        .filter(|r| r.oif.is_some() && r.dst.contains(dst))
        .max_by(|a, b| {
            a.dst
                .prefix()
                .cmp(&b.dst.prefix())
                .then(b.priority.cmp(&a.priority))
        });
    let Some(index) = best.and_then(|r| r.oif) else {
        return Ok(None);
    };
    Ok(sock.link_by_index(index)?.map(|l| l.name))
}

fn route_localnet_path(ifname: &str) -> String {
    sysctl::path_from_parts(&["net", "ipv4", "conf", ifname, "route_localnet"])
}

/// Kernel: `route_localnet=1` on the host interface towards the container, so that
/// connections to 127.0.0.1:hostPort can be routed there (and then masqueraded).
fn enable_route_localnet(container: IpAddr) -> Result<()> {
    match host_interface_to(container)? {
        Some(ifname) => sysctl::write_path(&route_localnet_path(&ifname), "1")
            .map_err(|e| e.context("enabling localhost access to the port mappings")),
        None => {
            log::warn!(
                "no route to {container}: route_localnet not set, so 127.0.0.1 will not reach the mappings"
            );
            Ok(())
        }
    }
}

/// Kernel: CHECK of [`enable_route_localnet`].
fn check_route_localnet(container: IpAddr) -> Result<()> {
    let Some(ifname) = host_interface_to(container)? else {
        return Ok(());
    };
    let path = route_localnet_path(&ifname);
    if sysctl::read_path(&path)? == "1" {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "{path} is not 1: 127.0.0.1 cannot reach the port mappings"
        )))
    }
}

/// Why conntrack entries are flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Entries for the host port that do not already go to this container are stale.
    Add,
    /// Entries that go to this container are stale.
    Del,
}

/// Whether `e` is an entry the flush of `flow` removes; `local` are the host's addresses.
fn is_stale(e: &Entry, flow: &UdpFlow, stage: Stage, local: &[IpAddr]) -> bool {
    let to_host = match flow.host_ip {
        Some(h) => e.orig.dst == h,
        None => e.orig.dst.is_loopback() || local.contains(&e.orig.dst),
    };
    let to_container =
        e.reply.src == flow.container && flow.container_port.is_none_or(|p| e.reply.sport == p);
    to_host
        && match stage {
            Stage::Add => !to_container,
            Stage::Del => to_container,
        }
}

/// Kernel: deletes the UDP conntrack entries of the host ports in `flows` (UDP has no
/// connection end, so an entry made before a mapping existed, or pointing at a container
/// that is gone, would keep capturing the traffic). Failures are logged, never returned.
fn flush_udp(flows: &[UdpFlow], stage: Stage) {
    if flows.is_empty() {
        return;
    }
    let local: Vec<IpAddr> = match RouteSocket::open().and_then(|mut s| s.addresses(None, None)) {
        Ok(addrs) => addrs.into_iter().map(|a| IpNetwork::ip(&a.addr)).collect(),
        Err(e) => {
            log::warn!("listing host addresses for the conntrack flush: {e}");
            Vec::new()
        }
    };
    // One socket for every flow.
    let mut ct = match conntrack::Conntrack::open() {
        Ok(ct) => ct,
        Err(e) => {
            log::warn!("opening a conntrack socket: {e}");
            return;
        }
    };
    for flow in flows {
        let family = if flow.container.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let pick = |e: &Entry| is_stale(e, flow, stage, &local);
        match ct.delete_matching(family, PROTO_UDP, flow.host_port, &pick) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "deleted {n} UDP conntrack entries for host port {}",
                flow.host_port
            ),
            Err(e) => log::warn!(
                "deleting UDP conntrack entries for host port {}: {e}",
                flow.host_port
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::conntrack::Tuple;

    fn entry(dst: &str, reply_src: &str, reply_sport: u16) -> Entry {
        Entry {
            orig: Tuple {
                src: "192.0.2.2".parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto: PROTO_UDP,
                sport: 40000,
                dport: 5353,
            },
            reply: Tuple {
                src: reply_src.parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                proto: PROTO_UDP,
                sport: reply_sport,
                dport: 40000,
            },
            zone: None,
            id: None,
        }
    }

    #[test]
    fn stale_entries() {
        let local: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        let any = UdpFlow {
            host_ip: None,
            host_port: 5353,
            container: "10.0.0.5".parse().unwrap(),
            container_port: Some(53),
        };
        // Before the mapping: to the host itself.
        let undnat = entry("192.0.2.1", "192.0.2.1", 5353);
        assert!(is_stale(&undnat, &any, Stage::Add, &local));
        assert!(!is_stale(&undnat, &any, Stage::Del, &local));
        // Already going to this container.
        let ours = entry("192.0.2.1", "10.0.0.5", 53);
        assert!(!is_stale(&ours, &any, Stage::Add, &local));
        assert!(is_stale(&ours, &any, Stage::Del, &local));
        // Not for this host: never touched.
        let transit = entry("198.51.100.7", "198.51.100.7", 5353);
        assert!(!is_stale(&transit, &any, Stage::Add, &local));
        // Loopback counts as local.
        assert!(is_stale(
            &entry("127.0.0.1", "127.0.0.1", 5353),
            &any,
            Stage::Add,
            &local
        ));
        // A hostIP mapping only touches its address.
        let on_ip = UdpFlow {
            host_ip: Some("192.0.2.9".parse().unwrap()),
            ..any
        };
        assert!(!is_stale(&undnat, &on_ip, Stage::Add, &local));
        assert!(is_stale(
            &entry("192.0.2.9", "192.0.2.9", 5353),
            &on_ip,
            Stage::Add,
            &local
        ));
        // From a listing the container port is unknown: any port of the container.
        let listed = UdpFlow {
            container_port: None,
            ..any
        };
        assert!(is_stale(
            &entry("192.0.2.1", "10.0.0.5", 99),
            &listed,
            Stage::Del,
            &local
        ));
    }
}
