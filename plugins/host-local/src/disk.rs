//! The on-disk [`Store`]: the reference plugin's layout, byte for byte, plus the optional
//! attachment index of [`crate::index`].
//!
//! `<dataDir>/<network>/` (0755) holds `lock` (flock), one file per allocated address named by
//! the address (0600, content `containerID\r\nifname`, or a bare `containerID` in old files)
//! and `last_reserved_ip.<rangeSetIndex>` (the address, no newline).
//!
//! Every invocation works under the lock. It trusts the index only when the index's stamp
//! matches the network directory; otherwise it scans the directory once and rewrites the
//! index. After it changed anything it removes the stamp, writes the touched index entries,
//! then a fresh stamp, then sets the directory's modification time to the stamp's (see
//! `sync`). A crash anywhere in between leaves no stamp or one that disagrees with the
//! directory, so the next invocation rebuilds.

use crate::allocator::{Owner, Store};
use crate::index::{self, Index, Stamp};
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LAST_RESERVED: &str = "last_reserved_ip.";
const LOCK: &str = "lock";
/// Where allocation files are written before they are linked into the network directory:
/// inside the index directory (same filesystem, invisible to the reference).
const STAGING: &str = "staging";

/// The name of an allocation file if `name` is one: an address in its canonical spelling.
fn allocation_name(name: &str) -> Option<IpAddr> {
    // An IPv4 address parses only in its canonical dotted-decimal spelling (no leading
    // zeros): no need to print it again to compare.
    if let Ok(v4) = name.parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
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

/// Every allocated address of `dir`, from the names of its entries alone (no file is read):
/// what STATUS counts. A missing directory holds none.
pub fn allocated_addresses(dir: &Path) -> Result<Vec<IpAddr>> {
    let entries = match fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_io_context(|| format!("listing {}", dir.display()))?;
        if let Some(ip) = entry.file_name().to_str().and_then(allocation_name) {
            out.push(ip);
        }
    }
    Ok(out)
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
    /// Where allocation files are staged (see [`STAGING`]); `None` writes them in place.
    staging: Option<PathBuf>,
    /// Released after `sync` (fields drop after `Drop::drop`).
    _lock: LockGuard,
    /// Tests: where `reserve` stops as if the process were killed.
    #[cfg(test)]
    kill_at: Option<KillPoint>,
}

/// Tests: the points of `reserve` a kill can fall between.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    /// The content is written, not yet visible as an allocation file.
    Staged,
    /// The allocation file is in place, the staged copy not yet removed.
    Linked,
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
        let (index, staging) = match Index::open(data_dir, network) {
            Ok(i) => {
                let staging = i.dir().join(STAGING);
                // Under the lock nobody else stages here: anything left is from a kill.
                clean_staging(&staging);
                ((!i.unsupported()).then_some(i), Some(staging))
            }
            Err(e) => {
                log::warn!("host-local index for {network} unusable, scanning instead: {e}");
                (None, None)
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
            staging,
            _lock: guard,
            #[cfg(test)]
            kill_at: None,
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
                    let mut checked = Ok(());
                    for ip in ips {
                        match self.holder(ip) {
                            Ok(h) if h.as_ref() == Some(owner) => {
                                held.insert(ip);
                            }
                            Ok(_) => {
                                self.dirty.insert(owner.clone());
                            }
                            Err(e) => {
                                checked = Err(e);
                                break;
                            }
                        }
                    }
                    match checked {
                        Ok(()) => {
                            self.cache.insert(owner.clone(), held);
                        }
                        Err(e) => {
                            log::warn!("checking the host-local index, scanning instead: {e}");
                            self.scan_all()?;
                        }
                    }
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

    /// Brings the index in line with the directory and stamps both (see the module docs), at
    /// most once per change. The index is only a cache: when that fails the allocation files
    /// are still right, so it warns, removes the stamp (the next call rebuilds) and carries on.
    fn sync(&mut self) {
        if !self.modified && !self.rebuild {
            return;
        }
        let Some(index) = &self.index else {
            return;
        };
        if let Err(e) = self.write_index(index) {
            log::warn!("updating the host-local index (the next call rebuilds it): {e}");
            if let Err(e) = index.remove_stamp() {
                log::warn!("removing the host-local index stamp: {e}");
            }
        }
        self.rebuild = false;
        self.modified = false;
        self.dirty.clear();
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let written = if self.rebuild {
            index.replace_all(self.cache.iter())
        } else {
            let empty = BTreeSet::new();
            index.update(
                self.dirty
                    .iter()
                    .map(|o| (o, self.cache.get(o).unwrap_or(&empty))),
            )
        };
        written.io_context("writing the host-local index")?;

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
        Ok(())
    }

    /// Finishes the invocation: index and stamp written (best effort), lock released.
    pub fn close(mut self) {
        self.sync();
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.sync();
    }
}

impl DiskStore {
    /// Creates the allocation file `path` holding `content` unless it exists (`Ok(false)`).
    /// The file appears complete or not at all: it is written under [`STAGING`] and
    /// hard-linked into place (the link fails if the name is taken), so a kill never leaves
    /// an empty or partial allocation file. Where that is impossible (no staging directory,
    /// another filesystem, no hard links) it is written in place, as the reference does.
    fn create_allocation(&mut self, path: &Path, content: &[u8]) -> Result<bool> {
        if let Some(staging) = self.staging.clone() {
            match stage(&staging, content) {
                Ok(tmp) => {
                    #[cfg(test)]
                    if self.kill_at == Some(KillPoint::Staged) {
                        return Err(Error::internal("killed"));
                    }
                    let linked = fs::hard_link(&tmp, path);
                    #[cfg(test)]
                    if linked.is_ok() && self.kill_at == Some(KillPoint::Linked) {
                        return Err(Error::internal("killed"));
                    }
                    if let Err(e) = fs::remove_file(&tmp) {
                        log::warn!("removing {} (the next call does): {e}", tmp.display());
                    }
                    match linked {
                        Ok(()) => return Ok(true),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                        Err(e) => log::warn!(
                            "linking {} into place, writing it in place instead: {e}",
                            path.display()
                        ),
                    }
                }
                Err(e) => log::warn!(
                    "staging {} in {}, writing it in place instead: {e}",
                    path.display(),
                    staging.display()
                ),
            }
            self.staging = None;
        }
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        };
        if let Err(e) = file.write_all(content) {
            drop(file);
            let _ = fs::remove_file(path);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        Ok(true)
    }
}

/// A unique staging file name for this process.
fn staging_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `content` to a new file (0600) in `staging`, created if missing.
fn stage(staging: &Path, content: &[u8]) -> io::Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(staging)?;
    let tmp = staging.join(staging_name());
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
    };
    let mut file = match create() {
        // Left by an earlier process with this pid: never truncate it (it may be linked as
        // an allocation file), replace the name.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp)?;
            create()?
        }
        other => other?,
    };
    if let Err(e) = file.write_all(content) {
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Removes what a killed invocation left in `staging` (best effort).
fn clean_staging(staging: &Path) {
    let entries = match fs::read_dir(staging) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            log::warn!("listing {}: {e}", staging.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = removed {
            log::warn!("removing the stale {}: {e}", path.display());
        }
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool> {
        let path = self.path(ip);
        if !self.create_allocation(&path, owner.content().as_bytes())? {
            return Ok(false);
        }
        self.modified = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{self, MemStore};
    use crate::range::{Range, RangeSet};
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;

    const NET: &str = "net1";
    const T: Duration = Duration::from_secs(5);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sets() -> Vec<RangeSet> {
        let r = Range::new("10.0.0.0/24".parse().unwrap(), None, None, None).unwrap();
        vec![RangeSet::new(vec![r]).unwrap()]
    }

    fn open(d: &Path) -> DiskStore {
        DiskStore::open(d, NET, T, true).unwrap().unwrap()
    }

    #[test]
    fn only_canonical_spellings_are_allocation_names() {
        for good in ["10.0.0.1", "0.0.0.0", "fd00::1", "2001:db8::a:1"] {
            assert_eq!(allocation_name(good), Some(ip(good)), "{good}");
        }
        for bad in [
            "010.0.0.1",
            "10.0.0.01",
            "10.0.0.1 ",
            "fd00:0::1",
            "FD00::1",
            "::ffff:10.0.0.1",
            "lock",
            "last_reserved_ip.0",
        ] {
            assert_eq!(allocation_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn allocated_addresses_lists_names_only() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            allocated_addresses(&d.path().join("missing"))
                .unwrap()
                .is_empty()
        );
        for name in [
            "10.0.0.2",
            "10.0.0.3",
            "lock",
            "last_reserved_ip.0",
            "010.0.0.4",
        ] {
            std::fs::write(d.path().join(name), "c\r\neth0").unwrap();
        }
        let mut got = allocated_addresses(d.path()).unwrap();
        got.sort();
        assert_eq!(got, [ip("10.0.0.2"), ip("10.0.0.3")]);
    }

    fn add(d: &Path, cid: &str) -> Result<IpAddr> {
        let mut s = open(d);
        let r = allocator::allocate_all(&mut s, &sets(), cid, "eth0", &[]);
        s.close();
        r.map(|c| c[0].address.ip())
    }

    fn del(d: &Path, cid: &str) -> Vec<IpAddr> {
        let mut s = open(d);
        let r = allocator::release_attachment(&mut s, cid, "eth0").unwrap();
        s.close();
        r
    }

    /// Writes an allocation file as the reference plugin would (which moves the directory's
    /// modification time).
    fn reference_reserve(d: &Path, ip: &str, content: &str) {
        fs::write(d.join(NET).join(ip), content).unwrap();
    }

    fn trusted_after_open(d: &Path) -> bool {
        let s = open(d);
        !s.complete
    }

    #[test]
    fn the_layout_is_the_reference_one() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(add(d.path(), "c1").unwrap(), ip("10.0.0.2"));
        let dir = d.path().join(NET);
        assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.0.0.2"
        );
        assert!(dir.join("lock").is_file());
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.join("10.0.0.2")), 0o600);
        assert_eq!(mode(&dir), 0o755);
        let names: BTreeSet<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            ["10.0.0.2", "last_reserved_ip.0", "lock"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn after_our_own_changes_the_index_is_trusted_and_no_scan_happens() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        assert!(trusted_after_open(d.path()));
        // Proof that a trusted index is what ADD and DEL read: a file slipped in behind its
        // back with the directory time put back is invisible to it.
        let dir = d.path().join(NET);
        let before = fs::metadata(&dir).unwrap();
        reference_reserve(d.path(), "10.0.0.50", "hidden\r\neth0");
        let f = File::open(&dir).unwrap();
        futimens(
            &f,
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::new(before.mtime(), before.mtime_nsec()),
        )
        .unwrap();
        assert!(trusted_after_open(d.path()));
        assert!(del(d.path(), "hidden").is_empty());
    }

    #[test]
    fn a_file_created_by_the_reference_makes_us_rebuild() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        reference_reserve(d.path(), "10.0.0.3", "c2\r\neth0");
        assert!(!trusted_after_open(d.path()), "directory time moved");
        // The rebuilt index knows c2: a second ADD is a duplicate, DEL frees it.
        let e = add(d.path(), "c2").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert!(trusted_after_open(d.path()), "rebuilt and stamped");
        assert_eq!(del(d.path(), "c2"), [ip("10.0.0.3")]);
        assert!(!d.path().join(NET).join("10.0.0.3").exists());
        // The helper did not move last_reserved_ip.0 (still .2): .3 is next again.
        assert_eq!(add(d.path(), "c3").unwrap(), ip("10.0.0.3"));
    }

    #[test]
    fn a_file_removed_by_the_reference_is_forgotten() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        fs::remove_file(d.path().join(NET).join("10.0.0.2")).unwrap();
        // c1 holds nothing now, so a new ADD for it is no duplicate.
        assert_eq!(add(d.path(), "c1").unwrap(), ip("10.0.0.3"));
        assert_eq!(del(d.path(), "c1"), [ip("10.0.0.3")]);
    }

    #[test]
    fn del_checks_the_file_before_removing_it() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        // The reference freed c1's address and gave it to c2 (two changes, same name).
        let p = d.path().join(NET).join("10.0.0.2");
        fs::remove_file(&p).unwrap();
        fs::write(&p, "c2\r\neth0").unwrap();
        assert!(del(d.path(), "c1").is_empty());
        assert_eq!(fs::read(&p).unwrap(), b"c2\r\neth0");
        // Even with a stale entry trusted (index says c1 holds .2), c2's file is safe.
        let idx = Index::open(d.path(), NET).unwrap();
        let mut stale = BTreeSet::new();
        stale.insert(ip("10.0.0.2"));
        let stamp = idx.read_stamp().unwrap();
        idx.update([(&Owner::new("c1", "eth0"), &stale)]).unwrap();
        idx.write_stamp(&stamp).unwrap();
        assert!(trusted_after_open(d.path()));
        assert!(del(d.path(), "c1").is_empty());
        assert!(p.exists());
    }

    #[test]
    fn a_crash_before_the_stamp_is_repaired() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        // Crash after creating an allocation file, before index and stamp.
        {
            let mut s = open(d.path());
            assert!(
                s.reserve(&Owner::new("c2", "eth0"), ip("10.0.0.3"), 0)
                    .unwrap()
            );
            s.index = None; // the crash: nothing of the index is written
        }
        assert!(!trusted_after_open(d.path()));
        assert_eq!(del(d.path(), "c2"), [ip("10.0.0.3")]);
        // Crash after writing the stamp, before setting the directory time.
        let idx = Index::open(d.path(), NET).unwrap();
        let mut st = Stamp::of(&fs::metadata(d.path().join(NET)).unwrap());
        st.nsec = (st.nsec + 1) % 1_000_000_000;
        idx.write_stamp(&st).unwrap();
        assert!(!trusted_after_open(d.path()));
        // Index entries torn or missing while untrusted are rebuilt from the files.
        fs::remove_file(idx.bucket_path(&Owner::new("c1", "eth0"))).unwrap();
        idx.remove_stamp().unwrap();
        let e = add(d.path(), "c1").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert_eq!(
            idx.read(&Owner::new("c1", "eth0")).unwrap(),
            [ip("10.0.0.2")]
        );
    }

    #[test]
    fn legacy_and_foreign_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(NET)).unwrap();
        reference_reserve(d.path(), "10.0.0.7", "old");
        reference_reserve(d.path(), "10.0.0.8", "c1\r\neth0\n");
        fs::write(d.path().join(NET).join("last_reserved_ip.0"), "10.0.0.8").unwrap();
        fs::write(d.path().join(NET).join("notes.txt"), "c1\r\neth0").unwrap();
        assert_eq!(add(d.path(), "c2").unwrap(), ip("10.0.0.9"));
        assert_eq!(del(d.path(), "c1"), [ip("10.0.0.8")]);
        assert_eq!(del(d.path(), "old"), [ip("10.0.0.7")]);
        assert!(d.path().join(NET).join("notes.txt").exists());
    }

    #[test]
    fn disk_and_memory_stores_agree() {
        let d = tempfile::tempdir().unwrap();
        let mut mem = MemStore::default();
        let sets = sets();
        for i in 0..20 {
            let cid = format!("c{i}");
            let a = {
                let mut s = open(d.path());
                let r = allocator::allocate_all(&mut s, &sets, &cid, "eth0", &[]).unwrap();
                s.close();
                r
            };
            let b = allocator::allocate_all(&mut mem, &sets, &cid, "eth0", &[]).unwrap();
            assert_eq!(a, b);
            if i % 3 == 0 {
                let cid = format!("c{}", i / 2);
                let x = del(d.path(), &cid);
                let y = allocator::release_attachment(&mut mem, &cid, "eth0").unwrap();
                assert_eq!(x, y);
            }
        }
        let mut s = open(d.path());
        let mut on_disk = s.all().unwrap();
        on_disk.sort();
        let in_mem: Vec<(IpAddr, Owner)> = mem.ips.into_iter().collect();
        assert_eq!(on_disk, in_mem);
    }

    #[test]
    fn gc_with_a_trusted_index_updates_only_the_freed_entries() {
        let d = tempfile::tempdir().unwrap();
        for c in ["a", "b", "c"] {
            add(d.path(), c).unwrap();
        }
        let valid = vec![common::spec::Attachment {
            container_id: "b".into(),
            ifname: "eth0".into(),
        }];
        let mut s = open(d.path());
        let mut freed = allocator::gc(&mut s, &valid).unwrap();
        s.close();
        freed.sort();
        assert_eq!(freed, [ip("10.0.0.2"), ip("10.0.0.4")]);
        assert!(trusted_after_open(d.path()));
        let idx = Index::open(d.path(), NET).unwrap();
        assert!(idx.read(&Owner::new("a", "eth0")).unwrap().is_empty());
        assert_eq!(
            idx.read(&Owner::new("b", "eth0")).unwrap(),
            [ip("10.0.0.3")]
        );
    }

    #[test]
    fn an_index_that_cannot_be_written_costs_nothing_but_time() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        // Every index write fails from here on (as on a full or read-only filesystem): the
        // index directory becomes a file under the open store's feet.
        let idxdir = d.path().join(index::INDEX_ROOT).join(NET);
        let mut s = open(d.path());
        fs::remove_dir_all(&idxdir).unwrap();
        fs::write(&idxdir, "").unwrap();
        let r = allocator::allocate_all(&mut s, &sets(), "c2", "eth0", &[]).unwrap();
        s.close();
        assert_eq!(r[0].address.ip(), ip("10.0.0.3"));
        assert_eq!(
            fs::read(d.path().join(NET).join("10.0.0.3")).unwrap(),
            b"c2\r\neth0"
        );
        // Later calls scan instead, and see every allocation.
        assert!(!trusted_after_open(d.path()));
        let e = add(d.path(), "c2").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert_eq!(del(d.path(), "c1"), [ip("10.0.0.2")]);
        assert_eq!(add(d.path(), "c3").unwrap(), ip("10.0.0.4"));
        // Once the damage is gone the index comes back.
        fs::remove_file(&idxdir).unwrap();
        assert_eq!(del(d.path(), "c2"), [ip("10.0.0.3")]);
        assert!(trusted_after_open(d.path()));
        assert_eq!(del(d.path(), "c3"), [ip("10.0.0.4")]);
    }

    static REWRITES_UNDER_A_STAMP: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    fn stamp_check(dir: &Path) {
        if dir.join("stamp").exists() {
            REWRITES_UNDER_A_STAMP.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn an_unreadable_bucket_under_a_valid_stamp_is_rebuilt_untrusted() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        add(d.path(), "c2").unwrap();
        // A bucket goes bad; the directory does not change, so the stamp still matches.
        let c1 = Owner::new("c1", "eth0");
        let bucket = Index::open(d.path(), NET).unwrap().bucket_path(&c1);
        fs::write(&bucket, b"\xff\xfe\n").unwrap();
        let mut s = open(d.path());
        assert!(!s.complete, "trusted");
        s.index.as_mut().unwrap().before_bucket_write = Some(stamp_check);
        // c1's entry cannot be read: a scan, and a rebuild of the index, follow.
        assert_eq!(s.ips_of(&c1).unwrap(), [ip("10.0.0.2")]);
        assert!(s.rebuild);
        s.close();
        // A kill during that rewrite must leave no stamp vouching for a torn index.
        assert_eq!(
            REWRITES_UNDER_A_STAMP.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(trusted_after_open(d.path()));
        assert_eq!(
            Index::open(d.path(), NET).unwrap().read(&c1).unwrap(),
            [ip("10.0.0.2")]
        );
    }

    #[test]
    fn a_kill_while_reserving_leaves_no_empty_allocation_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(add(d.path(), "c1").unwrap(), ip("10.0.0.2"));
        let netdir = d.path().join(NET);
        let staging = d.path().join(index::INDEX_ROOT).join(NET).join(STAGING);
        let killed = |point: KillPoint, cid: &str, at: &str| {
            let mut s = open(d.path());
            s.kill_at = Some(point);
            assert!(s.reserve(&Owner::new(cid, "eth0"), ip(at), 0).is_err());
            s.index = None; // killed: nothing else runs
        };
        // Killed before the allocation file is in place: the network directory is untouched.
        let before = fs::read_dir(&netdir).unwrap().count();
        killed(KillPoint::Staged, "c2", "10.0.0.3");
        assert!(!netdir.join("10.0.0.3").exists());
        assert_eq!(fs::read_dir(&netdir).unwrap().count(), before);
        // The next call removes the staged file, and the address is free.
        assert_eq!(add(d.path(), "c2").unwrap(), ip("10.0.0.3"));
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);

        // Killed after the allocation file is in place: it is complete, and DEL frees it.
        killed(KillPoint::Linked, "c3", "10.0.0.4");
        assert_eq!(fs::read(netdir.join("10.0.0.4")).unwrap(), b"c3\r\neth0");
        assert_eq!(
            fs::metadata(netdir.join("10.0.0.4")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(del(d.path(), "c3"), [ip("10.0.0.4")]);
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
        // Nothing of the staging shows in the network directory.
        let names: BTreeSet<String> = fs::read_dir(&netdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            ["10.0.0.2", "10.0.0.3", "last_reserved_ip.0", "lock"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn empty_allocation_files_are_never_handed_out_and_gc_frees_them() {
        // Left by a kill of an older version (or of the reference) between create and write.
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(NET)).unwrap();
        reference_reserve(d.path(), "10.0.0.2", "");
        reference_reserve(d.path(), "10.0.0.3", "\n");
        assert_eq!(add(d.path(), "c1").unwrap(), ip("10.0.0.4"));
        assert_eq!(del(d.path(), "c1"), [ip("10.0.0.4")]);
        assert_eq!(add(d.path(), "c1").unwrap(), ip("10.0.0.5"));
        let mut s = open(d.path());
        assert!(s.is_taken(ip("10.0.0.2")).unwrap());
        let valid = vec![common::spec::Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        let mut freed = allocator::gc(&mut s, &valid).unwrap();
        s.close();
        freed.sort();
        assert_eq!(freed, [ip("10.0.0.2"), ip("10.0.0.3")], "no owner: freed");
        assert!(d.path().join(NET).join("10.0.0.5").exists());
        assert_eq!(add(d.path(), "c2").unwrap(), ip("10.0.0.6"));
    }

    #[test]
    fn without_staging_allocation_files_are_written_in_place() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), "c1").unwrap();
        let staging = d.path().join(index::INDEX_ROOT).join(NET).join(STAGING);
        fs::remove_dir_all(&staging).unwrap();
        fs::write(&staging, "in the way").unwrap();
        assert_eq!(add(d.path(), "c2").unwrap(), ip("10.0.0.3"));
        assert_eq!(
            fs::read(d.path().join(NET).join("10.0.0.3")).unwrap(),
            b"c2\r\neth0"
        );
        assert_eq!(
            fs::metadata(d.path().join(NET).join("10.0.0.3"))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
        assert!(add(d.path(), "c2").is_err(), "duplicate");
        assert_eq!(del(d.path(), "c2"), [ip("10.0.0.3")]);
    }

    #[test]
    fn missing_directory_means_nothing_to_do() {
        let d = tempfile::tempdir().unwrap();
        assert!(DiskStore::open(d.path(), NET, T, false).unwrap().is_none());
        assert!(!d.path().join(NET).exists());
    }
}
