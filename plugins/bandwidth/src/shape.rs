//! The kernel side: which host device to shape, the ifb, and the qdiscs and filter.
//!
//! Ingress (towards the container) is a tbf at the root of the host veth: what the host
//! sends into the veth is what the container receives. Egress (from the container) arrives
//! on the host veth's ingress side, where a u32 match-all filter redirects it to the egress
//! of an ifb, whose root tbf shapes it.

use crate::config::Limit;
use common::error::{Error, Result};
use common::netlink::tc::{INGRESS_HANDLE, PschedClock, TBF_HANDLE, TC_H_INGRESS, TC_H_ROOT, Tbf};
use common::netlink::{Link, RouteSocket};
use common::netns::NetNs;
use common::nft::attachment_comment;
use common::spec::CniResult;

/// How much traffic, in time at the configured rate, the queue may hold beyond the burst.
pub const LATENCY_MS: u32 = 25;
/// The priority of the redirect filter on the host veth.
pub const FILTER_PRIO: u16 = 1;
/// Link names are at most 15 bytes.
const IFNAME_MAX: usize = 15;
const IFB_PREFIX: &str = "bwp";

/// The ifb of an attachment: `bwp` + the first 12 hex digits of sha512(network + container
/// ID), the reference plugin's name, so that either plugin finds the other's device.
pub fn ifb_name(network: &str, container_id: &str) -> String {
    common::naming::reference_name(IFB_PREFIX, network, container_id, IFNAME_MAX)
}

/// True for a name [`ifb_name`] could have made.
pub fn is_ifb_name(name: &str) -> bool {
    name.len() == IFNAME_MAX
        && name.starts_with(IFB_PREFIX)
        && name[IFB_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The alias an ifb carries to say which attachment owns it (the project's attachment
/// comment: `<network>/<containerID>/<ifname>`, shortened with a hash when long).
pub fn ifb_alias(network: &str, container_id: &str, ifname: &str) -> String {
    attachment_comment(network, container_id, ifname)
}

/// tbf parameters for one direction's limit.
pub fn tbf_of(limit: &Limit, clock: PschedClock) -> Result<Tbf> {
    Tbf::from_bits(limit.rate, limit.burst, LATENCY_MS, clock)
}

/// The tbf the reference plugin makes for the same limit: ours, except where its arithmetic
/// wraps a count that does not fit a u32 (long buffers, limits past 4 GiB).
pub fn reference_tbf_of(limit: &Limit, clock: PschedClock) -> Option<Tbf> {
    Tbf::from_bits_as_reference(limit.rate, limit.burst, LATENCY_MS, clock)
}

/// The host end of the container's veth `ifname`: the container link's peer index, looked
/// up in the host namespace, and it must be an interface of `result` with no sandbox.
pub fn host_veth(
    host: &mut RouteSocket,
    netns: &NetNs,
    ifname: &str,
    result: &CniResult,
) -> Result<Link> {
    let cont = RouteSocket::open_in(netns)?
        .link_by_name(ifname)?
        .ok_or_else(|| {
            Error::internal(format!(
                "container interface {ifname} not found in {}",
                netns.path()
            ))
        })?;
    if cont.kind.as_deref() != Some("veth") {
        return Err(Error::internal(format!(
            "container interface {ifname} is not a veth (kind {}); bandwidth shapes veth attachments only",
            cont.kind.as_deref().unwrap_or("none")
        )));
    }
    let peer = cont
        .link_index
        .filter(|i| *i > 0)
        .ok_or_else(|| Error::internal(format!("container interface {ifname} has no veth peer")))?;
    let link = host.link_by_index(peer)?.ok_or_else(|| {
        Error::internal(format!(
            "veth peer of {ifname} (index {peer}) is not in the host namespace"
        ))
    })?;
    if !result.host_interfaces().any(|i| i.name == link.name) {
        return Err(Error::internal(format!(
            "the veth peer of {ifname} in the host namespace ({}) is not an interface of prevResult",
            link.name
        )));
    }
    Ok(link)
}

/// Host veths of `result` that exist here: the fallback of teardown when the container
/// namespace is gone (then so is the veth, usually) or CNI_NETNS is empty.
pub fn host_veths_of(host: &mut RouteSocket, result: &CniResult) -> Vec<Link> {
    result
        .host_interfaces()
        .filter_map(|i| host.link_by_name(&i.name).ok().flatten())
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .collect()
}

/// Compares a tbf the kernel reports with the one expected, `want`. The reference plugin's
/// parameters for the same limit (`reference`) pass too: attachments it made before it was
/// replaced by this plugin keep passing CHECK.
pub fn check_tbf(got: Option<&Tbf>, want: &Tbf, reference: Option<&Tbf>, what: &str) -> Result<()> {
    let Some(got) = got else {
        return Err(Error::internal(format!(
            "{what}: no tbf qdisc with handle 1: at the root"
        )));
    };
    if got == want || Some(got) == reference {
        return Ok(());
    }
    let clock = PschedClock::read();
    let mut diffs = Vec::new();
    if got.rate != want.rate {
        diffs.push(format!("rate {} B/s, expected {}", got.rate, want.rate));
    }
    if got.buffer != want.buffer {
        diffs.push(format!(
            "burst {} B ({} ticks), expected {} B ({} ticks)",
            got.burst_bytes(clock),
            got.buffer,
            want.burst_bytes(clock),
            want.buffer
        ));
    }
    if got.limit != want.limit {
        diffs.push(format!("limit {} B, expected {}", got.limit, want.limit));
    }
    Err(Error::internal(format!("{what}: {}", diffs.join(", "))))
}

/// The root tbf `1:` of device `index`, if that is what its root is.
pub fn root_tbf(host: &mut RouteSocket, index: u32) -> Result<Option<Tbf>> {
    Ok(host
        .root_qdisc(index)?
        .filter(|q| q.kind == "tbf" && q.handle == TBF_HANDLE)
        .and_then(|q| q.tbf))
}

/// Removes from a host veth what this plugin put there: the root tbf `1:`, and the ingress
/// qdisc when its filter redirects to `ifb` or it has no filter left at all.
pub fn clear_veth(host: &mut RouteSocket, veth: u32, ifb: Option<u32>) -> Result<()> {
    if root_tbf(host, veth)?.is_some() {
        host.delete_qdisc(veth, TC_H_ROOT, TBF_HANDLE)?;
    }
    let filters = host.filters(veth, INGRESS_HANDLE)?;
    let ours = filters
        .iter()
        .filter_map(|f| f.redirect_to)
        .any(|target| Some(target) == ifb);
    if ours || filters.is_empty() {
        host.delete_qdisc(veth, TC_H_INGRESS, INGRESS_HANDLE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_are_the_reference_ones() {
        // `printf mynetabc123 | sha512sum` starts with 70a29d9dc18b.
        let n = ifb_name("mynet", "abc123");
        assert_eq!(n, "bwp70a29d9dc18b");
        assert!(is_ifb_name(&n));
        assert_ne!(n, ifb_name("mynet", "abc124"));
        assert!(!is_ifb_name("bwpxyz"));
        assert!(!is_ifb_name("eth0"));
    }

    #[test]
    fn check_accepts_ours_and_the_references_parameters_only() {
        let clock = PschedClock::DEFAULT;
        // CRI-O's burst at 10 Mbit/s: the reference wraps buffer and limit, ours saturates.
        let limit = Limit {
            rate: 10_000_000,
            burst: 34_359_738_359,
        };
        let ours = tbf_of(&limit, clock).unwrap();
        let reference = reference_tbf_of(&limit, clock).unwrap();
        assert_ne!(ours, reference);
        for got in [ours, reference] {
            check_tbf(Some(&got), &ours, Some(&reference), "t").unwrap();
        }
        let mixed = Tbf {
            limit: reference.limit,
            ..ours
        };
        let e = check_tbf(Some(&mixed), &ours, Some(&reference), "t").unwrap_err();
        assert!(e.to_string().contains("limit 31248 B"), "{e}");
        assert!(check_tbf(None, &ours, Some(&reference), "t").is_err());
    }
}
