//! The attachment index: `<dataDir>/.cnirs-index/<network>/`, outside the network directory
//! so the reference plugin never sees it (network names cannot start with `.`).
//!
//! It maps each owner (`containerID` + ifname) to the addresses it holds, so ADD and DEL read
//! one small file instead of every allocation file. Owners are spread over at most
//! [`BUCKETS`] bucket files (`b-00` .. `b-ff`, by a stable hash of the owner), one line per
//! owner: `<escaped cid>:<escaped ifname> <ip> <ip>..`. Buckets rather than one file per
//! owner keep a rebuild at a few hundred file writes however many allocations there are
//! (creating ten thousand small files took seconds on ext4), while a bucket stays a few
//! kilobytes at tens of thousands of allocations.
//!
//! The index is only a cache of the network directory and is trusted only while the `stamp`
//! file names the network directory exactly as it is now: device, inode and a modification
//! time to the nanosecond that only we ever set (see [`Stamp`]). Any file created or removed
//! there by someone else (the reference plugin, or us crashing halfway) moves that time, and
//! the next invocation rebuilds the index from a full scan.

use crate::allocator::Owner;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory under `dataDir` that holds the indexes of all networks.
pub const INDEX_ROOT: &str = ".cnirs-index";
/// How many bucket files owners are spread over.
pub const BUCKETS: u64 = 256;
const STAMP: &str = "stamp";
const BUCKET_PREFIX: &str = "b-";
/// Present when the filesystem cannot keep a nanosecond modification time: the index is then
/// never used for that network (every invocation scans).
const UNSUPPORTED: &str = "unsupported";

/// What the index believes the network directory looks like: its identity and the
/// modification time we gave it after our last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub sec: i64,
    pub nsec: i64,
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            sec: meta.mtime(),
            nsec: meta.mtime_nsec(),
        }
    }

    fn encode(&self) -> String {
        format!("v1 {} {} {} {}\n", self.dev, self.ino, self.sec, self.nsec)
    }

    fn decode(s: &str) -> Option<Stamp> {
        let mut f = s.split_whitespace();
        if f.next()? != "v1" {
            return None;
        }
        let stamp = Stamp {
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            sec: f.next()?.parse().ok()?,
            nsec: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(stamp)
    }
}

/// Escapes every byte outside `[A-Za-z0-9_.-]` as `%XX`: no whitespace, no `:`, no `/`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key of an owner: `<cid>:<ifname>`, or `<cid>:` for a legacy owner (a real ifname is
/// never empty).
pub fn key(owner: &Owner) -> String {
    format!(
        "{}:{}",
        escape(&owner.container_id),
        owner.ifname.as_deref().map(escape).unwrap_or_default()
    )
}

fn bucket_of(key: &str) -> String {
    format!(
        "{BUCKET_PREFIX}{:02x}",
        common::naming::fnv1a64(&[key]) % BUCKETS
    )
}

/// A bucket file's lines, by key.
type Bucket = BTreeMap<String, String>;

fn parse_bucket(text: &str) -> Bucket {
    text.lines()
        .filter_map(|l| {
            let (k, _) = l.split_once(' ')?;
            Some((k.to_string(), l.to_string()))
        })
        .collect()
}

fn render_bucket(b: &Bucket) -> String {
    let mut out = String::new();
    for line in b.values() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn line(key: &str, ips: &BTreeSet<IpAddr>) -> String {
    let mut l = key.to_string();
    for ip in ips {
        l.push(' ');
        l.push_str(&ip.to_string());
    }
    l
}

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Takes group and other permissions away from `path` if it has any.
fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.mode() & 0o077 != 0 && !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Removes a file, or a directory with everything in it, that may not exist. Only ever used
/// on our own index's entries, where a directory can only be damage.
fn remove_any(path: &Path) -> io::Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One network's index directory.
#[derive(Debug, Clone)]
pub struct Index {
    dir: PathBuf,
    /// Tests: called with the index directory just before each bucket write or removal,
    /// where a kill would leave the index as it is at that moment.
    #[cfg(test)]
    pub before_bucket_write: Option<fn(&Path)>,
}

impl Index {
    /// Opens (creating) the index of `network` under `data_dir`. The index names every
    /// container with its addresses, so it is private to the owner (directories 0700, files
    /// 0600); directories left more open by older versions are closed here.
    pub fn open(data_dir: &Path, network: &str) -> io::Result<Index> {
        let root = data_dir.join(INDEX_ROOT);
        let dir = root.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)?;
        for d in [&root, &dir] {
            if let Err(e) = restrict(d, DIR_MODE) {
                log::warn!("restricting {} to {DIR_MODE:o}: {e}", d.display());
            }
        }
        Ok(Index {
            dir,
            #[cfg(test)]
            before_bucket_write: None,
        })
    }

    #[cfg(test)]
    fn probe(&self) {
        if let Some(f) = self.before_bucket_write {
            f(&self.dir);
        }
    }

    #[cfg(not(test))]
    fn probe(&self) {}

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bucket file that holds `owner`.
    pub fn bucket_path(&self, owner: &Owner) -> PathBuf {
        self.dir.join(bucket_of(&key(owner)))
    }

    /// True when this filesystem was found unable to keep our timestamps.
    pub fn unsupported(&self) -> bool {
        self.dir.join(UNSUPPORTED).exists()
    }

    pub fn mark_unsupported(&self) -> io::Result<()> {
        let _ = fs::remove_file(self.dir.join(STAMP));
        self.write_file(UNSUPPORTED, b"")
    }

    pub fn read_stamp(&self) -> Option<Stamp> {
        fs::read_to_string(self.dir.join(STAMP))
            .ok()
            .and_then(|s| Stamp::decode(&s))
    }

    /// Removes the stamp, whatever is in its place: the index is untrusted from here on.
    pub fn remove_stamp(&self) -> io::Result<()> {
        remove_any(&self.dir.join(STAMP))
    }

    pub fn write_stamp(&self, stamp: &Stamp) -> io::Result<()> {
        self.write_file(STAMP, stamp.encode().as_bytes())
    }

    /// Writes in place. No temporary file and rename is needed: the index is untrusted while
    /// buckets are written (the stamp is removed before the first and written after the
    /// last), and truncating to the new length rather than to zero spares ext4's
    /// flush-on-replace heuristics.
    fn write_file(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(self.dir.join(name))?;
        // A file an older version created 0644.
        if f.metadata()?.mode() & 0o077 != 0 {
            f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        }
        f.write_all(data)?;
        f.set_len(u64::try_from(data.len()).unwrap_or(u64::MAX))
    }

    fn read_bucket(&self, name: &str) -> io::Result<Option<String>> {
        match fs::read_to_string(self.dir.join(name)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `text` as bucket `name` unless it already says exactly that (an empty bucket
    /// is removed).
    fn store_bucket(&self, name: &str, old: Option<&str>, text: &str) -> io::Result<()> {
        if old.unwrap_or("") == text {
            return Ok(());
        }
        self.probe();
        if text.is_empty() {
            return remove_any(&self.dir.join(name));
        }
        self.write_file(name, text.as_bytes())
    }

    /// The addresses the index lists for `owner` (empty when it has none).
    pub fn read(&self, owner: &Owner) -> io::Result<Vec<IpAddr>> {
        let key = key(owner);
        let Some(text) = self.read_bucket(&bucket_of(&key))? else {
            return Ok(Vec::new());
        };
        for l in text.lines() {
            let mut fields = l.split(' ');
            if fields.next() == Some(key.as_str()) {
                return Ok(fields.filter_map(|f| f.parse().ok()).collect());
            }
        }
        Ok(Vec::new())
    }

    /// Records the addresses of the given owners (an empty set removes the owner), touching
    /// only their buckets. Removes the stamp first, like [`Index::replace_all`]: a bucket is
    /// never written while a stamp vouches for the index (the caller writes a new one last).
    pub fn update<'a>(
        &self,
        owners: impl IntoIterator<Item = (&'a Owner, &'a BTreeSet<IpAddr>)>,
    ) -> io::Result<()> {
        self.remove_stamp()?;
        let mut by_bucket: BTreeMap<String, Vec<(String, &BTreeSet<IpAddr>)>> = BTreeMap::new();
        for (owner, ips) in owners {
            let key = key(owner);
            by_bucket
                .entry(bucket_of(&key))
                .or_default()
                .push((key, ips));
        }
        for (name, changes) in by_bucket {
            let old = self.read_bucket(&name)?;
            let mut bucket = old.as_deref().map(parse_bucket).unwrap_or_default();
            for (key, ips) in changes {
                if ips.is_empty() {
                    bucket.remove(&key);
                } else {
                    let l = line(&key, ips);
                    bucket.insert(key, l);
                }
            }
            self.store_bucket(&name, old.as_deref(), &render_bucket(&bucket))?;
        }
        Ok(())
    }

    /// Replaces the whole index by `owners` (rebuild): the stamp removed first (the index may
    /// have been trusted until now), then every bucket rewritten if it differs and buckets
    /// nobody maps to any more removed.
    pub fn replace_all<'a>(
        &self,
        owners: impl IntoIterator<Item = (&'a Owner, &'a BTreeSet<IpAddr>)>,
    ) -> io::Result<()> {
        self.remove_stamp()?;
        let mut buckets: BTreeMap<String, Bucket> = BTreeMap::new();
        for (owner, ips) in owners {
            if ips.is_empty() {
                continue;
            }
            let key = key(owner);
            let l = line(&key, ips);
            buckets.entry(bucket_of(&key)).or_default().insert(key, l);
        }
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(BUCKET_PREFIX) && !buckets.contains_key(name) {
                self.probe();
                remove_any(&entry.path())?;
            }
        }
        for (name, bucket) in &buckets {
            // A bucket that cannot be read (not UTF-8, a directory, ..) is replaced.
            let old = match self.read_bucket(name) {
                Ok(old) => old,
                Err(e) => {
                    log::warn!("replacing the unreadable host-local index bucket {name}: {e}");
                    self.probe();
                    remove_any(&self.dir.join(name))?;
                    None
                }
            };
            self.store_bucket(name, old.as_deref(), &render_bucket(bucket))?;
        }
        Ok(())
    }
}

/// Opens a directory for reading its metadata and setting its times.
pub fn open_dir(path: &Path) -> io::Result<File> {
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn keys_have_no_separators() {
        assert_eq!(key(&Owner::new("abc-1.2_x", "eth0")), "abc-1.2_x:eth0");
        assert_eq!(key(&Owner::legacy("abc")), "abc:");
        assert_eq!(key(&Owner::new("a b/c", "e:0\n")), "a%20b%2Fc:e%3A0%0A");
        assert_eq!(bucket_of("x").len(), 4);
        assert_eq!(bucket_of("abc:eth0"), bucket_of("abc:eth0"), "stable");
    }

    #[test]
    fn entries_update_and_rebuild() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::open(d.path(), "net").unwrap();
        let a = Owner::new("c1", "eth0");
        let b = Owner::legacy("c1");
        assert!(idx.read(&a).unwrap().is_empty());
        let two = ips(&["10.0.0.2", "fd00::2"]);
        idx.update([(&a, &two)]).unwrap();
        assert_eq!(
            idx.read(&a).unwrap(),
            two.iter().copied().collect::<Vec<_>>()
        );
        assert!(idx.read(&b).unwrap().is_empty());
        idx.update([(&a, &BTreeSet::new())]).unwrap();
        assert!(idx.read(&a).unwrap().is_empty());
        assert!(!idx.bucket_path(&a).exists(), "empty bucket removed");

        // Many owners share buckets without disturbing each other.
        let owners: Vec<(Owner, BTreeSet<IpAddr>)> = (0..1000)
            .map(|i| {
                let o = Owner::new(&format!("c{i}"), "eth0");
                let s = ips(&[&format!("10.1.{}.{}", i / 250, i % 250 + 1)]);
                (o, s)
            })
            .collect();
        idx.replace_all(owners.iter().map(|(o, s)| (o, s))).unwrap();
        for (o, s) in &owners {
            assert_eq!(idx.read(o).unwrap(), s.iter().copied().collect::<Vec<_>>());
        }
        let files = fs::read_dir(idx.dir()).unwrap().count();
        assert!(files <= BUCKETS as usize, "{files}");
        idx.update([(&owners[0].0, &BTreeSet::new())]).unwrap();
        assert!(idx.read(&owners[0].0).unwrap().is_empty());
        assert_eq!(idx.read(&owners[1].0).unwrap().len(), 1);
        idx.replace_all(std::iter::empty()).unwrap();
        assert_eq!(fs::read_dir(idx.dir()).unwrap().count(), 0);
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn the_index_is_private() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::open(d.path(), "net").unwrap();
        let a = Owner::new("c1", "eth0");
        idx.update([(&a, &ips(&["10.0.0.2"]))]).unwrap();
        idx.write_stamp(&Stamp {
            dev: 1,
            ino: 2,
            sec: 3,
            nsec: 4,
        })
        .unwrap();
        idx.mark_unsupported().unwrap();
        assert_eq!(mode(&d.path().join(INDEX_ROOT)), 0o700);
        assert_eq!(mode(idx.dir()), 0o700);
        assert_eq!(mode(&idx.bucket_path(&a)), 0o600);
        assert_eq!(mode(&idx.dir().join(UNSUPPORTED)), 0o600);

        // An index left world-readable by an older version is closed on the next open.
        let d = tempfile::tempdir().unwrap();
        let idx = Index::open(d.path(), "net").unwrap();
        idx.write_stamp(&Stamp {
            dev: 1,
            ino: 2,
            sec: 3,
            nsec: 4,
        })
        .unwrap();
        for p in [d.path().join(INDEX_ROOT), idx.dir().to_path_buf()] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(idx.dir().join(STAMP), fs::Permissions::from_mode(0o644)).unwrap();
        let idx = Index::open(d.path(), "net").unwrap();
        assert_eq!(mode(&d.path().join(INDEX_ROOT)), 0o700);
        assert_eq!(mode(idx.dir()), 0o700);
        idx.write_stamp(&Stamp {
            dev: 1,
            ino: 2,
            sec: 3,
            nsec: 5,
        })
        .unwrap();
        assert_eq!(mode(&idx.dir().join(STAMP)), 0o600);
    }

    static WRITES: AtomicUsize = AtomicUsize::new(0);
    static WRITES_UNDER_A_STAMP: AtomicUsize = AtomicUsize::new(0);

    fn count_writes(dir: &Path) {
        WRITES.fetch_add(1, Ordering::SeqCst);
        if fs::symlink_metadata(dir.join(STAMP)).is_ok() {
            WRITES_UNDER_A_STAMP.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn no_bucket_is_written_while_a_stamp_vouches_for_the_index() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::open(d.path(), "net").unwrap();
        idx.before_bucket_write = Some(count_writes);
        let stamp = Stamp {
            dev: 1,
            ino: 2,
            sec: 3,
            nsec: 4,
        };
        let a = Owner::new("a", "eth0");
        let b = Owner::new("b", "eth0");
        idx.write_stamp(&stamp).unwrap();
        idx.update([(&a, &ips(&["10.0.0.2"]))]).unwrap();
        idx.write_stamp(&stamp).unwrap();
        idx.replace_all([(&b, &ips(&["10.0.0.3"]))]).unwrap();
        idx.write_stamp(&stamp).unwrap();
        idx.update([(&b, &BTreeSet::new())]).unwrap();
        assert_eq!(WRITES.load(Ordering::SeqCst), 4);
        assert_eq!(WRITES_UNDER_A_STAMP.load(Ordering::SeqCst), 0);
        assert!(
            idx.read_stamp().is_none(),
            "the caller writes a new one last"
        );
    }

    #[test]
    fn stamps_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::open(d.path(), "net").unwrap();
        assert!(idx.read_stamp().is_none());
        let s = Stamp {
            dev: 1,
            ino: 2,
            sec: 3,
            nsec: 4,
        };
        idx.write_stamp(&s).unwrap();
        assert_eq!(idx.read_stamp(), Some(s));
        idx.write_stamp(&Stamp {
            sec: 1_000_000,
            ..s
        })
        .unwrap();
        assert_eq!(idx.read_stamp().unwrap().sec, 1_000_000);
        idx.replace_all(std::iter::empty()).unwrap();
        assert!(
            idx.read_stamp().is_none(),
            "a rebuild starts by removing the stamp"
        );
        assert_eq!(Stamp::decode("v1 1 2 3"), None);
        assert_eq!(Stamp::decode("v1 1 2 3 4 5"), None);
    }
}
