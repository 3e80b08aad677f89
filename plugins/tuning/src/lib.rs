//! The `tuning` plugin (REFERENCE 2.6): sets sysctls in the container's network namespace and
//! the MAC, MTU, promiscuous and all-multicast modes and transmit queue length of the
//! container interface; saves what it changes and puts it back on DEL.
//!
//! ADD validates everything it can before touching anything (keys, values, allow-list, MAC,
//! the MTU range the device accepts, that every sysctl exists), saves the original values in
//! a backup file, then applies. If a step fails, what was applied is set back and the backup
//! file is returned to what it was, so a failed ADD changes nothing.
//!
//! Crash safety: the backup is on disk before the first change. A repeated ADD for the same
//! interface keeps the originals already saved and only adds those it did not have, so a
//! crash between backup and changes, or an ADD retried without DEL, never turns changed
//! values into "originals". DEL restores (idempotently) and removes the file last; GC removes
//! the files of this network's attachments that are no longer valid.

pub mod backup;
pub mod config;
pub mod sysctl;

use backup::{Backup, Entry, Owner};
use common::error::{Error, Result};
use common::netlink::{Link, Mac, RouteSocket, format_mac, parse_mac};
use common::netns::NetNs;
use common::skel::{CmdArgs, Plugin};
use common::spec::{CniResult, config::valid_attachments};
use config::Settings;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use sysctl::Sysctl;

/// A temporary backup file this old is left over from an ADD that died mid-write.
const STALE_TEMP_SECS: u64 = 600;

/// The plugin.
pub struct Tuning;

impl Plugin for Tuning {
    fn about(&self) -> String {
        format!(
            "tuning plugin v{} (cni-rs): sysctls, MAC, MTU, promisc, allmulti and txqueuelen of the container interface",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let settings = config::load(args)?;
        let mut result = args
            .prev_result()?
            .ok_or_else(|| Error::config("Required prevResult missing"))?;
        // The result must print in the config's version: find out before changing anything.
        result.to_json(args.version)?;
        let netns = NetNs::open_container(&args.netns)?;
        let me = Attachment::of(args)?;
        netns.run(|| apply(&settings, &me))?;
        reflect_in_result(&mut result, &args.ifname, &settings);
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        del(args);
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let settings = config::load(args)?;
        args.prev_result()?
            .ok_or_else(|| Error::config("Required prevResult missing"))?;
        let netns = NetNs::open_container(&args.netns)?;
        netns.run(|| check(&settings, &args.ifname))
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        gc(args)
    }
}

/// The attachment an invocation is about, as a backup's owner records it.
struct Attachment {
    network: String,
    container_id: String,
    ifname: String,
    netns_inode: u64,
}

impl Attachment {
    fn of(args: &CmdArgs) -> Result<Attachment> {
        Ok(Attachment {
            network: network_name(args),
            container_id: args.container_id.clone(),
            ifname: args.ifname.clone(),
            netns_inode: std::fs::metadata(&args.netns)
                .map_err(|e| Error::io(format!("stat of netns {}", args.netns), e))?
                .ino(),
        })
    }

    fn owner(&self, ifindex: u32) -> Owner {
        Owner {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            netns_inode: self.netns_inode,
            ifindex,
            sysctl: Default::default(),
        }
    }
}

fn network_name(args: &CmdArgs) -> String {
    args.conf
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// One value ADD changes, with what it was.
#[derive(Debug, Clone)]
enum Change {
    Mac(Mac, Mac),
    Mtu(u32, u32),
    TxQLen(u32, u32),
    Promisc(bool, bool),
    Allmulti(bool, bool),
    Sysctl {
        key: String,
        path: String,
        from: String,
        to: String,
    },
}

impl Change {
    /// Sets the new value (`forward`) or the old one back.
    fn set(&self, sock: &mut RouteSocket, index: u32, forward: bool) -> Result<()> {
        fn pick<T>(forward: bool, from: T, to: T) -> T {
            if forward { to } else { from }
        }
        match self {
            Change::Mac(from, to) => sock.set_mac(index, pick(forward, from, to)),
            Change::Mtu(from, to) => sock.set_mtu(index, *pick(forward, from, to)),
            Change::TxQLen(from, to) => sock.set_txqlen(index, *pick(forward, from, to)),
            Change::Promisc(from, to) => sock.set_promisc(index, *pick(forward, from, to)),
            Change::Allmulti(from, to) => sock.set_allmulti(index, *pick(forward, from, to)),
            Change::Sysctl {
                key,
                path,
                from,
                to,
            } => sysctl::write_path(key, path, pick(forward, from, to)),
        }
    }

    /// Saves the original value unless the backup already has one (an earlier ADD's
    /// original is the true one).
    fn record(&self, b: &mut Backup, owner: &mut Owner) {
        match self {
            Change::Mac(from, _) if b.mac.is_empty() => b.mac = format_mac(from),
            Change::Mtu(from, _) if b.mtu == 0 => b.mtu = *from,
            Change::TxQLen(from, _) => {
                b.txqlen.get_or_insert(*from);
            }
            Change::Promisc(from, _) => {
                b.promisc.get_or_insert(*from);
            }
            Change::Allmulti(from, _) => {
                b.allmulti.get_or_insert(*from);
            }
            Change::Sysctl { path, from, .. } => {
                owner
                    .sysctl
                    .entry(path.clone())
                    .or_insert_with(|| from.clone());
            }
            _ => {}
        }
    }
}

/// What has to change on `link` (and in the namespace's sysctls) to match `s`. Refuses, with
/// code 7, what the kernel would refuse halfway: an MTU outside the device's range, a MAC on
/// a device without one, a sysctl that does not exist. Runs in the netns.
fn plan(link: &Link, s: &Settings) -> Result<Vec<Change>> {
    let ifname = &link.name;
    let mut changes = Vec::new();
    if let Some(mac) = s.mac {
        let cur = link.mac.ok_or_else(|| {
            Error::config(format!("interface {ifname} has no MAC address to change"))
        })?;
        if cur != mac {
            changes.push(Change::Mac(cur, mac));
        }
    }
    if let Some(mtu) = s.mtu {
        let min = link.min_mtu.unwrap_or(0);
        let max = link.max_mtu.filter(|m| *m != 0).unwrap_or(u32::MAX);
        if mtu < min || mtu > max {
            return Err(Error::config(format!(
                "invalid mtu {mtu}: interface {ifname} accepts {min} to {max}"
            )));
        }
        if link.mtu != mtu {
            changes.push(Change::Mtu(link.mtu, mtu));
        }
    }
    if let Some(q) = s.txqlen {
        if link.txqlen != q {
            changes.push(Change::TxQLen(link.txqlen, q));
        }
    }
    if s.promisc && !link.promisc {
        changes.push(Change::Promisc(false, true));
    }
    if let Some(on) = s.allmulti {
        if link.allmulti != on {
            changes.push(Change::Allmulti(link.allmulti, on));
        }
    }
    for x in &s.sysctls {
        let cur = sysctl::read(x)?;
        if !sysctl::same_value(&cur, &x.value) {
            changes.push(Change::Sysctl {
                key: x.key.clone(),
                path: x.path.clone(),
                from: cur,
                to: x.value.clone(),
            });
        }
    }
    Ok(changes)
}

/// ADD inside the container's namespace: plan, back up, apply; undo on failure.
fn apply(s: &Settings, me: &Attachment) -> Result<()> {
    let mut sock = RouteSocket::open()?;
    let link = sock.link_by_name(&me.ifname)?.ok_or_else(|| {
        Error::internal(format!(
            "interface {} not found in the container's namespace",
            me.ifname
        ))
    })?;
    let changes = plan(&link, s)?;

    let dir = PathBuf::from(&s.data_dir);
    let name = backup::file_name(&me.container_id, &me.ifname);
    let path = dir.join(&name);
    let prior = backup::read_raw(&path)?;
    let mut owner = me.owner(link.index);
    let mut b = match prior.as_deref().map(|bytes| backup::parse(bytes, &path)) {
        Some(Ok(old)) => match &old.cnirs {
            Some(o) if o.same_link(&owner) => {
                owner = o.clone();
                old
            }
            // The reference's file for this attachment: its originals are all there is.
            None => old,
            Some(_) => {
                log::warn!(
                    "{}: backup of another interface or namespace, replaced",
                    path.display()
                );
                Backup::default()
            }
        },
        Some(Err(e)) => {
            log::warn!("{e}: replaced");
            Backup::default()
        }
        None => Backup::default(),
    };
    for c in &changes {
        c.record(&mut b, &mut owner);
    }
    b.cnirs = Some(owner);
    let new_bytes = serde_json::to_vec_pretty(&b)
        .map_err(|e| Error::internal(format!("encoding backup: {e}")))?;
    let wrote = (!changes.is_empty() || prior.is_some()) && prior.as_ref() != Some(&new_bytes);
    if wrote {
        backup::write_atomic(&dir, &name, &new_bytes)?;
    }

    let mut applied: Vec<&Change> = Vec::new();
    for c in &changes {
        if let Err(e) = c.set(&mut sock, link.index, true) {
            for done in applied.iter().rev() {
                if let Err(u) = done.set(&mut sock, link.index, false) {
                    log::warn!("undoing {done:?} on {}: {u}", me.ifname);
                }
            }
            if wrote {
                let back = match &prior {
                    Some(bytes) => backup::write_atomic(&dir, &name, bytes),
                    None => backup::remove(&dir, &name),
                };
                if let Err(u) = back {
                    log::warn!("returning {} to its earlier state: {u}", path.display());
                }
            }
            return Err(e.context(format!("tuning {}", me.ifname)));
        }
        applied.push(c);
    }
    Ok(())
}

/// The MAC (and MTU) ADD set, written into the container interface of the result.
fn reflect_in_result(result: &mut CniResult, ifname: &str, s: &Settings) {
    let idx = result
        .container_interface(ifname)
        .map(|(i, _)| i)
        .or_else(|| result.interfaces.iter().position(|i| i.name == ifname));
    let Some(iface) = idx.and_then(|i| result.interfaces.get_mut(i)) else {
        return;
    };
    if let Some(mac) = s.mac {
        iface.mac = format_mac(&mac);
    }
    if let Some(mtu) = s.mtu {
        iface.mtu = mtu;
    }
}

/// DEL: restore from the backup when the namespace and the interface are still there, then
/// remove the backup. Never fails: what cannot be done is logged.
fn del(args: &CmdArgs) {
    let dir = PathBuf::from(config::data_dir(args));
    let name = backup::file_name(&args.container_id, &args.ifname);
    let path = dir.join(&name);
    match backup::read_raw(&path) {
        Ok(Some(bytes)) => match backup::parse(&bytes, &path) {
            Ok(b) => restore_in_netns(args, &b),
            Err(e) => log::warn!("{e}: nothing restored"),
        },
        Ok(None) => {}
        Err(e) => log::warn!("{e}: nothing restored"),
    }
    if let Err(e) = backup::remove(&dir, &name) {
        log::warn!("{e}");
    }
}

fn restore_in_netns(args: &CmdArgs, b: &Backup) {
    if args.netns.is_empty() {
        log::info!("no CNI_NETNS: nothing to restore for {}", args.ifname);
        return;
    }
    let netns = match NetNs::open(&args.netns) {
        Ok(ns) => ns,
        Err(e) => {
            log::info!("{e}: nothing to restore");
            return;
        }
    };
    if let Some(o) = &b.cnirs {
        let inode = std::fs::metadata(&args.netns).map(|m| m.ino()).ok();
        if inode != Some(o.netns_inode) {
            log::warn!(
                "backup of {} was made in another network namespace: not restored",
                args.ifname
            );
            return;
        }
    }
    match netns.run(|| Ok(restore(b, &args.ifname))) {
        Ok(errors) => {
            for e in errors {
                log::warn!("restoring {}: {e}", args.ifname);
            }
        }
        Err(e) => log::warn!("restoring {}: {e}", args.ifname),
    }
}

/// Puts the saved values back, sysctls first (ADD set them last). Runs in the netns;
/// returns what failed.
fn restore(b: &Backup, ifname: &str) -> Vec<Error> {
    let mut errors = Vec::new();
    if let Some(o) = &b.cnirs {
        for (path, value) in &o.sysctl {
            let s = Sysctl {
                key: path.clone(),
                path: path.clone(),
                value: value.clone(),
            };
            // A per-interface sysctl is gone with its interface: nothing to restore.
            match sysctl::exists(&s) {
                Ok(true) => {
                    let same = sysctl::read_path(path).is_ok_and(|c| sysctl::same_value(&c, value));
                    if !same {
                        if let Err(e) = sysctl::write_path(path, path, value) {
                            errors.push(e);
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    let mut sock = match RouteSocket::open() {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            return errors;
        }
    };
    let link = match sock.link_by_name(ifname) {
        Ok(Some(l)) => l,
        Ok(None) => return errors,
        Err(e) => {
            errors.push(e);
            return errors;
        }
    };
    if let Some(o) = &b.cnirs {
        if o.ifindex != link.index {
            log::warn!("{ifname} was re-created since ADD: its attributes are not restored");
            return errors;
        }
    }
    let mut push = |r: Result<()>, what: &str| {
        if let Err(e) = r {
            errors.push(e.context(format!("restoring {what}")));
        }
    };
    if b.mtu != 0 && b.mtu != link.mtu {
        push(sock.set_mtu(link.index, b.mtu), "MTU");
    }
    if !b.mac.is_empty() {
        match parse_mac(&b.mac) {
            Ok(mac) if link.mac != Some(mac) => push(sock.set_mac(link.index, &mac), "MAC"),
            Ok(_) => {}
            Err(e) => push(Err(e), "MAC"),
        }
    }
    if let Some(q) = b.txqlen.filter(|q| *q != link.txqlen) {
        push(sock.set_txqlen(link.index, q), "txqueuelen");
    }
    if let Some(on) = b.promisc.filter(|on| *on != link.promisc) {
        push(sock.set_promisc(link.index, on), "promiscuous mode");
    }
    if let Some(on) = b.allmulti.filter(|on| *on != link.allmulti) {
        push(sock.set_allmulti(link.index, on), "all-multicast mode");
    }
    errors
}

/// CHECK inside the namespace: every configured value, and promiscuous mode both ways.
fn check(s: &Settings, ifname: &str) -> Result<()> {
    for x in &s.sysctls {
        let cur = sysctl::read(x)?;
        if !sysctl::same_value(&cur, &x.value) {
            return Err(Error::internal(format!(
                "sysctl {} ({}) is {cur:?}, configured {:?}",
                x.key, x.path, x.value
            )));
        }
    }
    let mut sock = RouteSocket::open()?;
    let link = sock
        .link_by_name(ifname)?
        .ok_or_else(|| Error::internal(format!("container interface {ifname} not found")))?;
    let differs = |what: &str, want: String, have: String| {
        Err(Error::internal(format!(
            "{ifname}: {what} is {have}, configured {want}"
        )))
    };
    if let Some(mac) = s.mac {
        if link.mac != Some(mac) {
            let have = link.mac.map(|m| format_mac(&m)).unwrap_or_default();
            return differs("MAC", format_mac(&mac), have);
        }
    }
    if link.promisc != s.promisc {
        return differs("promisc", s.promisc.to_string(), link.promisc.to_string());
    }
    if let Some(mtu) = s.mtu.filter(|m| *m != link.mtu) {
        return differs("MTU", mtu.to_string(), link.mtu.to_string());
    }
    if let Some(on) = s.allmulti.filter(|on| *on != link.allmulti) {
        return differs("allmulti", on.to_string(), link.allmulti.to_string());
    }
    if let Some(q) = s.txqlen.filter(|q| *q != link.txqlen) {
        return differs("txQLen", q.to_string(), link.txqlen.to_string());
    }
    Ok(())
}

/// GC: removes the backups of this network's attachments that are not in the valid list
/// (their interfaces are gone or no longer ours: nothing is restored), and temporary files
/// left by an ADD that died. Backups of other networks and of the reference plugin (no owner
/// recorded) are left alone.
fn gc(args: &CmdArgs) -> Result<()> {
    let dir = PathBuf::from(config::data_dir(args));
    let valid = valid_attachments(&args.conf)?;
    let net = network_name(args);
    let mut errors = Vec::new();
    let mut remove = |p: &Path| {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(Error::io(format!("removing {}", p.display()), e));
            }
        }
    };
    for entry in backup::list(&dir)? {
        match entry {
            Entry::Backup {
                path,
                backup: Ok(b),
            } => {
                let Some(o) = b.cnirs else { continue };
                let stale = o.network == net
                    && !valid
                        .iter()
                        .any(|a| a.container_id == o.container_id && a.ifname == o.ifname);
                if stale {
                    log::info!("GC: removing stale backup {}", path.display());
                    remove(&path);
                }
            }
            Entry::Backup {
                path,
                backup: Err(e),
            } => log::warn!("GC: {} left alone: {e}", path.display()),
            Entry::Temp { path, age_secs } if age_secs >= STALE_TEMP_SECS => remove(&path),
            Entry::Temp { .. } => {}
        }
    }
    common::error::join(errors)
}
