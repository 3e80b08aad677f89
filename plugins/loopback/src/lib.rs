//! The `loopback` plugin: sets `lo` up in the container's network namespace (ADD), down
//! again (DEL), and checks that it is up (CHECK). containerd's CRI runs it for every pod
//! beside the network's own chain.
//!
//! It ignores CNI_IFNAME (it only ever works on `lo`). ADD passes a prevResult through
//! unchanged; without one it answers the result the reference plugin does: one interface
//! `{name: "lo", mac: "00:00:00:00:00:00", sandbox: CNI_NETNS}` and the first IPv4 and the
//! first IPv6 address of `lo` (127.0.0.1/8, ::1/128) on interface 0.
//!
//! Addresses on `lo` that are not loopback addresses make ADD fail before anything changes.
//! DEL succeeds when CNI_NETNS is empty or gone. There is no state on disk, so GC and STATUS
//! have nothing to do.

use common::error::{Error, Result};
use common::netlink::{Address, Family, Link, RouteSocket};
use common::netns::NetNs;
use common::skel::{CmdArgs, Plugin};
use common::spec::CniResult;
use common::spec::config::NetConf;
use common::spec::result::{Interface, IpConfig};
use ipnetwork::IpNetwork;

/// The only interface this plugin works on.
pub const LOOPBACK: &str = "lo";

/// The MAC the reference reports for `lo`.
const LOOPBACK_MAC: &str = "00:00:00:00:00:00";

/// The plugin.
pub struct Loopback;

impl Plugin for Loopback {
    fn about(&self) -> String {
        format!(
            "loopback plugin v{} (cni-rs): sets lo up in the container",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        // The config must decode (code 6), and a prevResult must be readable and printable
        // in the config's version, before anything changes.
        let _conf: NetConf = args.parse_conf()?;
        let prev = args.prev_result()?;
        if let Some(prev) = &prev {
            prev.to_json(args.version)?;
        }
        let netns = NetNs::open_container(&args.netns)?;
        let mut sock = RouteSocket::open_in(&netns)?;
        let lo = loopback_link(&mut sock)?;
        // Refuse a `lo` carrying other addresses before setting it up.
        let mut addrs = loopback_addresses(&mut sock, &lo)?;
        if !lo.up {
            sock.set_up(lo.index)
                .map_err(|e| e.context(format!("setting {LOOPBACK} up in {}", args.netns)))?;
            // Setting `lo` up is what gives it 127.0.0.1/8 and ::1/128: read them now.
            addrs = loopback_addresses(&mut sock, &lo)?;
        }
        let (v4, v6) = addrs;
        if let Some(prev) = prev {
            return Ok(prev);
        }
        let ips = [v4, v6]
            .into_iter()
            .flatten()
            .map(|address| IpConfig {
                interface: Some(0),
                address,
                gateway: None,
            })
            .collect();
        Ok(CniResult {
            interfaces: vec![Interface {
                name: LOOPBACK.into(),
                mac: LOOPBACK_MAC.into(),
                sandbox: args.netns.clone(),
                ..Interface::default()
            }],
            ips,
            ..CniResult::default()
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        if args.netns.is_empty() {
            return Ok(());
        }
        let netns = match NetNs::open(&args.netns) {
            Ok(ns) => ns,
            // The namespace is gone (the container was removed, or DEL runs twice).
            Err(e) if e.is_not_found() => {
                log::debug!("DEL: netns {} is gone: nothing to do", args.netns);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut sock = RouteSocket::open_in(&netns)?;
        let Some(lo) = sock.link_by_name(LOOPBACK)? else {
            return Ok(());
        };
        if lo.up {
            sock.set_down(lo.index)
                .map_err(|e| e.context(format!("setting {LOOPBACK} down in {}", args.netns)))?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let netns = NetNs::open_container(&args.netns)?;
        let mut sock = RouteSocket::open_in(&netns)?;
        let lo = loopback_link(&mut sock)?;
        if !lo.up {
            return Err(Error::internal(format!(
                "the loopback interface is down in {}",
                args.netns
            )));
        }
        Ok(())
    }
}

fn loopback_link(sock: &mut RouteSocket) -> Result<Link> {
    sock.link_by_name(LOOPBACK)?.ok_or_else(|| {
        Error::internal(format!(
            "no {LOOPBACK} interface in the container's namespace"
        ))
    })
}

/// The first IPv4 and the first IPv6 address of `lo`, after checking that every address
/// on it is a loopback address.
fn loopback_addresses(
    sock: &mut RouteSocket,
    lo: &Link,
) -> Result<(Option<IpNetwork>, Option<IpNetwork>)> {
    let addrs = sock.addresses(Some(lo.index), None)?;
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a)) {
        return Err(Error::internal(format!(
            "loopback interface found with non-loopback address {}",
            bad.addr.ip()
        )));
    }
    let first = |family: Family| {
        addrs
            .iter()
            .find(|a| match family {
                Family::V4 => a.addr.is_ipv4(),
                Family::V6 => a.addr.is_ipv6(),
            })
            .map(|a| a.addr)
    };
    Ok((first(Family::V4), first(Family::V6)))
}

/// 127.0.0.0/8, ::1 (and 127.0.0.0/8 written as an IPv4-mapped IPv6 address).
fn is_loopback(a: &Address) -> bool {
    a.addr.ip().to_canonical().is_loopback()
}
