//! The on-disk [`Store`]: the reference plugin's layout, byte for byte, plus the optional
//! attachment index of [`crate::index`].
//!
//! `<dataDir>/<network>/` (0755) holds `lock` (flock), one file per allocated address named by
//! the address (0600, content `containerID\r\nifname`, or a bare `containerID` in old files)
//! and `last_reserved_ip.<rangeSetIndex>` (the address, no newline).
//!
//! Every invocation works under the lock. It trusts the index only when the index's stamp
//! matches the network directory; otherwise it scans the directory once and rewrites the
//! index. After it changed anything it writes the touched index entries, then a fresh stamp,
//! then sets the directory's modification time to the stamp's (see `sync`). A crash anywhere
//! in between leaves stamp and directory disagreeing, so the next invocation rebuilds.

use crate::allocator::{Owner, Store};
use crate::index::{self, Index, Stamp, WriteError};
use crate::lock::{self, LockGuard};
use crate::range::canonical;
use common::error::IoContext;
use common::{Error, Result};
use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LAST_RESERVED: &str = "last_reserved_ip.";
const LOCK: &str = "lock";

/// The name of an allocation file if `name` is one: an address in its canonical spelling.
fn allocation_name(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.parse().ok()?;
    (canonical(ip) == ip && ip.to_string() == name).then_some(ip)
}

/// Every allocation in `dir`, by owner. Only files named by an address are allocations
/// (`lock` and `last_reserved_ip.*` never are).
pub fn scan(dir: &Path) -> Result<HashMap<Owner, BTreeSet<IpAddr>>> {
    let mut map: HashMap<Owner, BTreeSet<IpAddr>> = HashMap::new();
    let entries = fs::read_dir(dir).with_io_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_io_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some(ip) = name.to_str().and_then(allocation_name) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match fs::read(entry.path()) {
            Ok(content) => {
                map.entry(Owner::parse(&content)).or_default().insert(ip);
            }
            Err(e) => log::warn!("reading {}: {e}", entry.path().display()),
        }
    }
    Ok(map)
}

/// The store of one network, locked for the lifetime of this value.
pub struct DiskStore {
    dir: PathBuf,
    index: Option<Index>,
    /// Entries read this invocation; every owner after a scan (`complete`).
    cache: HashMap<Owner, BTreeSet<IpAddr>>,
    complete: bool,
    /// Owners whose entries changed.
    dirty: BTreeSet<Owner>,
    /// The index was not trusted: rewrite all of it.
    rebuild: bool,
    /// We created or removed files in the network directory.
    modified: bool,
    /// Released after `sync` (fields drop after `Drop::drop`).
    _lock: LockGuard,
}

impl DiskStore {
    /// Locks the network's directory (creating it when `create`) and decides whether the index
    /// can be trusted. `Ok(None)` when the directory does not exist and `create` is false:
    /// there is nothing to release or check.
    pub fn open(
        data_dir: &Path,
        network: &str,
        timeout: Duration,
        create: bool,
    ) -> Result<Option<DiskStore>> {
        let dir = data_dir.join(network);
        if !dir.is_dir() {
            if !create {
                return Ok(None);
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .with_io_context(|| format!("creating {}", dir.display()))?;
        }
        let guard = lock::lock(&dir.join(LOCK), timeout)?;
        let index = match Index::open(data_dir, network) {
            Ok(i) if i.unsupported() => None,
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!("host-local index for {network} unusable, scanning instead: {e}");
                None
            }
        };
        let mut store = DiskStore {
            dir,
            index,
            cache: HashMap::new(),
            complete: false,
            dirty: BTreeSet::new(),
            rebuild: false,
            modified: false,
            _lock: guard,
        };
        if !store.index_trusted()? {
            store.scan_all()?;
        }
        Ok(Some(store))
    }

    fn index_trusted(&self) -> Result<bool> {
        let Some(index) = &self.index else {
            return Ok(false);
        };
        let meta = fs::metadata(&self.dir)
            .with_io_context(|| format!("reading {}", self.dir.display()))?;
        Ok(index.read_stamp() == Some(Stamp::of(&meta)))
    }

    /// Replaces the cache by a full scan, and schedules an index rebuild.
    fn scan_all(&mut self) -> Result<()> {
        self.cache = scan(&self.dir)?;
        self.complete = true;
        self.rebuild = self.index.is_some();
        Ok(())
    }

    fn path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Who the allocation file of `ip` names, if it exists.
    fn holder(&self, ip: IpAddr) -> Result<Option<Owner>> {
        match fs::read(self.path(ip)) {
            Ok(c) => Ok(Some(Owner::parse(&c))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", self.path(ip).display()), e)),
        }
    }

    /// The cached entry of `owner`, read from the index (each address checked against its
    /// allocation file) on first use.
    fn entry(&mut self, owner: &Owner) -> Result<&mut BTreeSet<IpAddr>> {
        if !self.cache.contains_key(owner) && !self.complete {
            let listed = match &self.index {
                Some(index) => index.read(owner),
                None => Err(io::Error::other("no index")),
            };
            match listed {
                Ok(ips) => {
                    let mut held = BTreeSet::new();
                    for ip in ips {
                        if self.holder(ip)?.as_ref() == Some(owner) {
                            held.insert(ip);
                        } else {
                            self.dirty.insert(owner.clone());
                        }
                    }
                    self.cache.insert(owner.clone(), held);
                }
                Err(e) => {
                    log::warn!("reading the host-local index, scanning instead: {e}");
                    self.scan_all()?;
                }
            }
        }
        Ok(self.cache.entry(owner.clone()).or_default())
    }

    fn write_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.dir.join(format!("{LAST_RESERVED}{set}")))?;
        f.write_all(ip.to_string().as_bytes())
    }

    /// Brings the index in line with the directory and stamps both (see the module docs).
    fn sync(&mut self) -> Result<()> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        if !self.modified && !self.rebuild {
            return Ok(());
        }
        let owners: Vec<&Owner> = if self.rebuild {
            self.cache.keys().collect()
        } else {
            self.dirty.iter().collect()
        };
        let empty = BTreeSet::new();
        for owner in owners {
            let ips = self.cache.get(owner).unwrap_or(&empty);
            match index.write(owner, ips) {
                Ok(()) => {}
                Err(WriteError::Collision(_)) => {
                    // Two owners share a hashed entry name: leave the index untrusted.
                    log::warn!("host-local index: name collision, the index stays unused");
                    return index.remove_stamp().io_context("removing the index stamp");
                }
                Err(WriteError::Io(e)) => {
                    return Err(Error::io("writing the host-local index", e));
                }
            }
        }
        if self.rebuild {
            let keep: BTreeSet<String> = self
                .cache
                .iter()
                .filter(|(_, ips)| !ips.is_empty())
                .map(|(o, _)| Index::name_of(o))
                .collect();
            index
                .retain(&keep)
                .io_context("pruning the host-local index")?;
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::internal(format!("the clock is before 1970: {e}")))?;
        let dir = index::open_dir(&self.dir)
            .with_io_context(|| format!("opening {}", self.dir.display()))?;
        let meta = dir
            .metadata()
            .with_io_context(|| format!("reading {}", self.dir.display()))?;
        let sec = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let nsec = i64::from(now.subsec_nanos());
        let mut stamp = Stamp::of(&meta);
        stamp.sec = sec;
        stamp.nsec = nsec;
        index
            .write_stamp(&stamp)
            .io_context("writing the host-local index stamp")?;
        futimens(&dir, &TimeSpec::UTIME_OMIT, &TimeSpec::new(sec, nsec)).map_err(|e| {
            Error::io(
                format!("setting the time of {}", self.dir.display()),
                io::Error::from(e),
            )
        })?;
        let after = dir
            .metadata()
            .with_io_context(|| format!("reading {}", self.dir.display()))?;
        if Stamp::of(&after) != stamp {
            log::warn!(
                "{} cannot keep nanosecond timestamps: the host-local index is disabled for it",
                self.dir.display()
            );
            index
                .mark_unsupported()
                .io_context("disabling the host-local index")?;
        }
        self.rebuild = false;
        self.modified = false;
        self.dirty.clear();
        Ok(())
    }

    /// Finishes the invocation: index and stamp written, lock released.
    pub fn close(mut self) -> Result<()> {
        self.sync()
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            log::warn!("updating the host-local index (the next call rebuilds it): {e}");
        }
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool> {
        let path = self.path(ip);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        };
        self.modified = true;
        if let Err(e) = file.write_all(owner.content().as_bytes()) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        drop(file);
        self.entry(owner)?.insert(ip);
        self.dirty.insert(owner.clone());
        if let Err(e) = self.write_last_reserved(set, ip) {
            // Only round-robin suffers: the next ADD starts from the range start.
            log::warn!("recording the last reserved IP: {e}");
        }
        Ok(true)
    }

    fn last_reserved_ip(&mut self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(canonical)
    }

    fn ips_of(&mut self, owner: &Owner) -> Result<Vec<IpAddr>> {
        Ok(self.entry(owner)?.iter().copied().collect())
    }

    fn release(&mut self, owner: &Owner, ip: IpAddr) -> Result<bool> {
        let held = self.holder(ip)?.as_ref() == Some(owner);
        if held {
            let path = self.path(ip);
            match fs::remove_file(&path) {
                Ok(()) => self.modified = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        self.entry(owner)?.remove(&ip);
        self.dirty.insert(owner.clone());
        Ok(held)
    }

    fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>> {
        if !self.complete {
            let rebuild = self.rebuild;
            self.scan_all()?;
            // The index was trusted: a scan is not a reason to rewrite all of it.
            self.rebuild = rebuild;
        }
        Ok(self
            .cache
            .iter()
            .flat_map(|(o, ips)| ips.iter().map(move |ip| (*ip, o.clone())))
            .collect())
    }

    fn is_taken(&mut self, ip: IpAddr) -> Result<bool> {
        match fs::symlink_metadata(self.path(ip)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(
                format!("checking {}", self.path(ip).display()),
                e,
            )),
        }
    }
}

/// A lock-free, read-only view for STATUS: which addresses are taken and where round-robin
/// would start.
pub struct Probe {
    dir: PathBuf,
}

impl Probe {
    pub fn new(dir: &Path) -> Probe {
        Probe {
            dir: dir.to_path_buf(),
        }
    }
}

impl Store for Probe {
    fn reserve(&mut self, _: &Owner, _: IpAddr, _: usize) -> Result<bool> {
        Err(Error::internal("STATUS does not allocate"))
    }
    fn last_reserved_ip(&mut self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(canonical)
    }
    fn ips_of(&mut self, _: &Owner) -> Result<Vec<IpAddr>> {
        Ok(Vec::new())
    }
    fn release(&mut self, _: &Owner, _: IpAddr) -> Result<bool> {
        Ok(false)
    }
    fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>> {
        Ok(Vec::new())
    }
    fn is_taken(&mut self, ip: IpAddr) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("checking {}", path.display()), e)),
        }
    }
}
