//! host-local: IPAM from ranges configured on this node, with the reference plugin's on-disk
//! layout (so either binary can take over a node's state), plus GC, STATUS, a lock wait limit
//! and an attachment index that keeps ADD and DEL from reading every allocation file.

pub mod allocator;
pub mod config;
pub mod disk;
pub mod index;
pub mod lock;
pub mod range;

use common::skel::{CmdArgs, Plugin};
use common::spec::CniResult;
use common::spec::config::valid_attachments;
use common::{Error, Result};
use config::{IpamConfig, StoreLocation};
use disk::{DiskStore, Probe};
use std::net::IpAddr;
use std::path::Path;

/// The host-local IPAM plugin.
pub struct HostLocal;

fn load(args: &CmdArgs) -> Result<IpamConfig> {
    config::load(&args.conf, args.version)
}

fn open(store: &StoreLocation, create: bool) -> Result<Option<DiskStore>> {
    DiskStore::open(&store.data_dir, &store.name, store.lock_timeout, create)
}

impl Plugin for HostLocal {
    fn about(&self) -> String {
        format!(
            "host-local plugin v{} (cni-rs): IPAM, addresses from ranges with file-locked state on disk",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = load(args)?;
        let requested = config::requested_ips(&args.conf, &args.args)?;
        let dns = config::load_dns(&conf)?;
        let mut store = open(&conf.store, true)?.ok_or_else(|| {
            Error::internal(format!(
                "{} could not be created",
                conf.store.network_dir().display()
            ))
        })?;
        let ips = allocator::allocate_all(
            &mut store,
            &conf.ranges,
            &args.container_id,
            &args.ifname,
            &requested,
        )?;
        store.close();
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: conf.routes,
            dns,
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let Some(mut store) = open(&config::load_store(&args.conf), false)? else {
            return Ok(());
        };
        allocator::release_attachment(&mut store, &args.container_id, &args.ifname)?;
        store.close();
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = load(args)?;
        let not_found = || {
            Error::internal(format!(
                "host-local: failed to find address added by container {} (interface {})",
                args.container_id, args.ifname
            ))
        };
        let Some(mut store) = open(&conf.store, false)? else {
            return Err(not_found());
        };
        let held = allocator::ips_of_attachment(&mut store, &args.container_id, &args.ifname)?;
        if held.is_empty() {
            return Err(not_found());
        }
        // Addresses of ours that the previous result names must still be this attachment's.
        if let Some(prev) = args.prev_result()? {
            for ip in prev.ips.iter().map(|c| range::canonical(c.address.ip())) {
                let ours = conf.ranges.iter().any(|s| s.contains(ip));
                if ours && !held.contains(&ip) {
                    return Err(Error::internal(format!(
                        "host-local: {ip} from the previous result is no longer allocated to container {} (interface {})",
                        args.container_id, args.ifname
                    )));
                }
            }
        }
        store.close();
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let valid = valid_attachments(&args.conf)?;
        let Some(mut store) = open(&config::load_store(&args.conf), false)? else {
            return Ok(());
        };
        let freed = allocator::gc(&mut store, &valid);
        store.close();
        let freed = freed?;
        if !freed.is_empty() {
            log::info!(
                "GC freed {}",
                freed
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        let conf = load(args)?;
        let dir = conf.store.network_dir();
        writable(&dir)?;
        let mut probe = Probe::new(&dir);
        for (idx, set) in conf.ranges.iter().enumerate() {
            if !allocator::has_free(&mut probe, set, idx)? {
                return Err(Error::NotAvailable(format!(
                    "no IP addresses available in range set {idx}: {set}"
                )));
            }
        }
        Ok(())
    }
}

/// STATUS: the network directory (or, before the first ADD, the nearest existing parent it
/// would be created in) must be writable.
fn writable(dir: &Path) -> Result<()> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        Error::NotAvailable(format!(
            "data directory {} is not writable: {}",
            probe.display(),
            std::io::Error::from(e)
        ))
    })
}
