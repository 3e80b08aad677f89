//! The `firewall` plugin (REFERENCE 2.5), with an nftables backend only: lets forwarded
//! traffic leave the container addresses of prevResult and come back (related/established),
//! through hosts whose forward policy is drop; an admin chain operators fill; and
//! `ingressPolicy` `same-bridge` / `isolated` between bridges. See [`rules`] for the tables
//! and [`hook`] for how the accept reaches iptables-nft's `FORWARD` chains.
//!
//! Chained: ADD and CHECK need prevResult and print it back unchanged. DEL works from
//! prevResult (one transaction, no listing) or, without it, by the attachment's comment.

pub mod hook;
pub mod lock;
pub mod rules;

use common::error::{Error, Result};
use common::nft;
use common::skel::{CmdArgs, Plugin};
use common::spec::config::valid_attachments;
use common::spec::{CniResult, NetConf, Version};
use rules::{AttachmentRules, Policy};
use serde::Deserialize;

/// The plugin.
pub struct Firewall;

/// The versions this plugin speaks (it needs prevResult on DEL and CHECK: 0.4.0 and later).
pub const VERSIONS: [Version; 3] = [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

/// The plugin's configuration keys (REFERENCE 2.5).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawConf {
    /// The common keys, decoded from the same config by [`CmdArgs::net_conf`].
    #[serde(skip)]
    pub net: NetConf,
    /// `iptables`, `firewalld` or `nftables`; all are served by nftables.
    #[serde(default)]
    pub backend: Option<String>,
    /// Accepted for compatibility; the admin chain is `inet cnirs_firewall admin`.
    #[serde(default)]
    pub iptables_admin_chain_name: Option<String>,
    /// Accepted for compatibility; no firewalld zone is changed.
    #[serde(default)]
    pub firewalld_zone: Option<String>,
    #[serde(default)]
    pub ingress_policy: Option<String>,
}

/// The configuration, checked.
#[derive(Debug, Clone)]
pub struct Conf {
    pub raw: RawConf,
    pub policy: Policy,
}

/// Parses and checks the configuration (codes 6 and 7), logging how compatibility keys
/// are served.
pub fn load(args: &CmdArgs) -> Result<Conf> {
    let mut raw: RawConf = args.parse_conf()?;
    raw.net = args.net_conf()?;
    match raw.backend.as_deref().unwrap_or("") {
        "" | "nftables" => {}
        b @ ("iptables" | "firewalld") => log::warn!(
            "backend {b:?} is served by nftables (table inet cnirs_firewall); no {b} rule or zone is changed"
        ),
        other => {
            return Err(Error::config(format!(
                "unknown backend {other:?}: expected \"iptables\", \"firewalld\" or \"nftables\""
            )));
        }
    }
    if let Some(c) = raw
        .iptables_admin_chain_name
        .as_deref()
        .filter(|c| !c.is_empty())
    {
        log::warn!(
            "iptablesAdminChainName {c:?} is not used: the admin chain is {} {}",
            rules::TABLE,
            rules::ADMIN.name
        );
    }
    let policy = Policy::parse(raw.ingress_policy.as_deref().unwrap_or(""))?;
    Ok(Conf { raw, policy })
}

/// The attachment's rules from a prevResult: the container interface's addresses (all of
/// them when prevResult names no container interface), the bridge `interfaces[0]`, and the
/// host veth: the first interface after it without a sandbox that is not a `<bridge>.<vlan>`.
pub fn rules_from_prev(
    args: &CmdArgs,
    network: &str,
    policy: Policy,
    prev: &CniResult,
) -> AttachmentRules {
    let idx = prev.container_interface(&args.ifname).map(|(i, _)| i);
    let mut addrs = Vec::new();
    for ip in prev.ips_of(idx) {
        if !addrs.contains(&ip.address.ip()) {
            addrs.push(ip.address.ip());
        }
    }
    let bridge = prev
        .interfaces
        .first()
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let vlan_prefix = format!("{bridge}.");
    let host_port = prev
        .interfaces
        .iter()
        .skip(1)
        .find(|i| i.sandbox.is_empty() && !i.name.starts_with(&vlan_prefix))
        .map(|i| i.name.clone());
    AttachmentRules {
        network: network.to_string(),
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
        addrs,
        policy,
        bridge,
        host_port,
    }
}

fn required_prev(args: &CmdArgs) -> Result<CniResult> {
    args.prev_result()?.ok_or_else(|| {
        Error::config("missing prevResult from earlier plugin (firewall is a chained plugin)")
    })
}

impl Plugin for Firewall {
    fn about(&self) -> String {
        format!(
            "firewall plugin v{} (cni-rs): nftables forwarding accept, admin chain and ingress policy",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn supported_versions(&self) -> &[Version] {
        &VERSIONS
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = load(args)?;
        let prev = required_prev(args)?;
        let rules = rules_from_prev(args, &conf.raw.net.name, conf.policy, &prev);
        rules.validate()?;
        if rules.is_empty() {
            log::info!(
                "prevResult has no address for {}: nothing to do",
                args.ifname
            );
            return Ok(prev);
        }
        let _lock = lock::take()?;
        let inserts = hook::missing_inserts(&rules.families())?;
        let batch = rules::add_batch(&rules, inserts)?;
        nft::apply_to_kernel(&batch).map_err(|e| {
            e.context(format!(
                "adding firewall rules for {}/{}",
                args.container_id, args.ifname
            ))
        })?;
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        // DEL must not fail on what ADD would refuse: with an unreadable config or
        // prevResult, fall back to the attachment's comment.
        let network = common::gojson::get(&args.conf, "name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let policy = match load(args) {
            Ok(c) => Some(c.policy),
            Err(e) => {
                log::warn!("DEL: {e}; removing by comment");
                None
            }
        };
        let prev = args.prev_result().unwrap_or_else(|e| {
            log::warn!("DEL: ignoring an unreadable prevResult: {e}");
            None
        });
        rules::del_reference_accepts(&network, &args.container_id, &args.ifname, prev.as_ref());
        let known = match (policy, prev) {
            (Some(policy), Some(prev)) => {
                let r = rules_from_prev(args, &network, policy, &prev);
                r.validate().is_ok().then_some(r)
            }
            _ => None,
        };
        let res = match known {
            // The default: one transaction, no listing.
            Some(r) if !r.policy.is_guarded() => {
                rules::del_known_batch(&r).and_then(|b| nft::apply_to_kernel(&b))
            }
            // A guarded attachment may be its bridge's last member, and then the bridge
            // leaves `guarded_bridges` in the same transaction: that takes a listing (under
            // the lock, so a concurrent ADD on the bridge cannot be undone).
            _ => lock::take().and_then(|_lock| {
                rules::prune_in_kernel(&nft::comment_is_attachment(
                    &network,
                    &args.container_id,
                    &args.ifname,
                ))
                .map(drop)
            }),
        };
        res.map_err(|e| {
            e.context(format!(
                "deleting firewall rules for {}/{}",
                args.container_id, args.ifname
            ))
        })
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = load(args)?;
        let prev = required_prev(args)?;
        let rules = rules_from_prev(args, &conf.raw.net.name, conf.policy, &prev);
        rules.validate()?;
        if rules.is_empty() {
            return Ok(());
        }
        let inet = nft::list_table_from_kernel(rules::TABLE)?;
        let bridge = if conf.policy == Policy::Isolated {
            nft::list_table_from_kernel(rules::BRIDGE_TABLE)?
        } else {
            None
        };
        let mut missing = rules::missing_in(&rules, inet.as_ref(), bridge.as_ref())?;
        for (f, state) in hook::states_in_kernel(&rules.families())? {
            if state == hook::HookState::Missing {
                missing.push(format!(
                    "the hand-off rule in {f} {} {}",
                    hook::IPTABLES_TABLE,
                    hook::IPTABLES_CHAIN
                ));
            }
        }
        let what = format!(
            "firewall rules of {}/{}/{} missing",
            rules.network, rules.container_id, rules.ifname
        );
        nft::check_outcome_in_kernel(&[rules::TABLE, rules::BRIDGE_TABLE], &what, &missing)
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let network = common::gojson::get(&args.conf, "name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let valid = valid_attachments(&args.conf)?;
        let _lock = lock::take()?;
        let n = rules::prune_in_kernel(&nft::comment_is_stale(network, &valid)).map_err(|e| {
            e.context(format!(
                "garbage-collecting firewall rules of network {network}"
            ))
        })?;
        log::info!("GC of network {network}: {n} element(s) removed");
        Ok(())
    }
}
