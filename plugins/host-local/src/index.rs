//! The attachment index: `<dataDir>/.cnirs-index/<network>/`, outside the network directory
//! so the reference plugin never sees it (network names cannot start with `.`).
//!
//! One small file per owner lists the addresses it holds, so ADD and DEL read a file or two
//! instead of every allocation file. The index is only a cache of the network directory and
//! is trusted only while the `stamp` file names the network directory exactly as it is now:
//! device, inode and a modification time to the nanosecond that only we ever set
//! (see [`Stamp`]). Any file created or removed there by someone else (the reference plugin,
//! or us crashing halfway) moves that time, and the next invocation rebuilds the index from a
//! full scan.

use crate::allocator::Owner;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory under `dataDir` that holds the indexes of all networks.
pub const INDEX_ROOT: &str = ".cnirs-index";
const STAMP: &str = "stamp";
const TMP: &str = "~tmp";
/// Present when the filesystem cannot keep a nanosecond modification time: the index is then
/// never used for that network (every invocation scans).
const UNSUPPORTED: &str = "unsupported";
/// File names longer than this are replaced by a hash.
const MAX_NAME: usize = 200;

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

/// Escapes every byte outside `[A-Za-z0-9_.-]` as `%XX`, so any owner makes a safe name.
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
/// never empty). It always contains `:`, so it is never `stamp` nor a temporary name.
pub fn key(owner: &Owner) -> String {
    format!(
        "{}:{}",
        escape(&owner.container_id),
        owner.ifname.as_deref().map(escape).unwrap_or_default()
    )
}

/// FNV-1a, 64 bits: stable across builds (unlike std's hasher), used only for long names.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn file_name(key: &str) -> String {
    if key.len() <= MAX_NAME {
        key.to_string()
    } else {
        format!("#{:016x}", fnv1a(key))
    }
}

/// One network's index directory.
#[derive(Debug, Clone)]
pub struct Index {
    dir: PathBuf,
}

/// An entry whose file belongs to another owner (a hash collision of long names).
#[derive(Debug)]
pub struct Collision;

impl Index {
    /// Opens (creating) the index of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> io::Result<Index> {
        let dir = data_dir.join(INDEX_ROOT).join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
        Ok(Index { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when this filesystem was found unable to keep our timestamps.
    pub fn unsupported(&self) -> bool {
        self.dir.join(UNSUPPORTED).exists()
    }

    pub fn mark_unsupported(&self) -> io::Result<()> {
        let _ = fs::remove_file(self.dir.join(STAMP));
        fs::write(self.dir.join(UNSUPPORTED), b"")
    }

    pub fn read_stamp(&self) -> Option<Stamp> {
        fs::read_to_string(self.dir.join(STAMP))
            .ok()
            .and_then(|s| Stamp::decode(&s))
    }

    pub fn remove_stamp(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(STAMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn write_stamp(&self, stamp: &Stamp) -> io::Result<()> {
        self.write_atomic(STAMP, stamp.encode().as_bytes())
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(TMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        drop(f);
        fs::rename(&tmp, self.dir.join(name))
    }

    /// The addresses the index lists for `owner` (empty when it has no entry).
    pub fn read(&self, owner: &Owner) -> io::Result<Vec<IpAddr>> {
        let key = key(owner);
        let text = match fs::read_to_string(self.dir.join(file_name(&key))) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut lines = text.lines();
        if lines.next() != Some(key.as_str()) {
            return Ok(Vec::new());
        }
        Ok(lines.filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Writes (or, when `ips` is empty, removes) the entry of `owner`.
    pub fn write(&self, owner: &Owner, ips: &BTreeSet<IpAddr>) -> Result<(), WriteError> {
        let key = key(owner);
        let name = file_name(&key);
        if ips.is_empty() {
            return match fs::remove_file(self.dir.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(WriteError::Io(e)),
                _ => Ok(()),
            };
        }
        let mut data = key.clone();
        data.push('\n');
        for ip in ips {
            data.push_str(&ip.to_string());
            data.push('\n');
        }
        // Reading is much cheaper than replacing: a rebuild after one foreign change rewrites
        // only the entries that changed.
        if let Ok(existing) = fs::read_to_string(self.dir.join(&name)) {
            if existing == data {
                return Ok(());
            }
            if name != key && existing.lines().next() != Some(key.as_str()) {
                // A hashed name that is another owner's.
                return Err(WriteError::Collision(Collision));
            }
        }
        self.write_atomic(&name, data.as_bytes())
            .map_err(WriteError::Io)
    }

    /// Removes every entry whose file name is not in `keep` (rebuild).
    pub fn retain(&self, keep: &BTreeSet<String>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_entry = name.contains(':') || name.starts_with('#');
            if is_entry && !keep.contains(name) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// The file name an owner's entry has (for [`Index::retain`]).
    pub fn name_of(owner: &Owner) -> String {
        file_name(&key(owner))
    }
}

/// Why an entry could not be written.
#[derive(Debug)]
pub enum WriteError {
    Io(io::Error),
    Collision(Collision),
}

/// Opens a directory for reading its metadata and setting its times.
pub fn open_dir(path: &Path) -> io::Result<File> {
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_file_names() {
        assert_eq!(key(&Owner::new("abc-1.2_x", "eth0")), "abc-1.2_x:eth0");
        assert_eq!(key(&Owner::legacy("abc")), "abc:");
        assert_eq!(key(&Owner::new("a/b", "e:0")), "a%2Fb:e%3A0");
        assert_eq!(key(&Owner::new("..", "x")), "..:x");
        let long = "a".repeat(300);
        let name = file_name(&key(&Owner::new(&long, "eth0")));
        assert!(name.starts_with('#') && name.len() == 17, "{name}");
    }

    #[test]
    fn entries_and_stamps_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::open(d.path(), "net").unwrap();
        let o = Owner::new("c1", "eth0");
        assert!(idx.read(&o).unwrap().is_empty());
        let ips: BTreeSet<IpAddr> =
            ["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()].into();
        idx.write(&o, &ips).unwrap();
        assert_eq!(
            idx.read(&o).unwrap(),
            ips.iter().copied().collect::<Vec<_>>()
        );
        assert!(idx.read(&Owner::legacy("c1")).unwrap().is_empty());
        idx.write(&o, &BTreeSet::new()).unwrap();
        assert!(idx.read(&o).unwrap().is_empty());

        let long = Owner::new(&"b".repeat(300), "eth0");
        idx.write(&long, &ips).unwrap();
        assert_eq!(idx.read(&long).unwrap().len(), 2);

        assert!(idx.read_stamp().is_none());
        let s = Stamp {
            dev: 1,
            ino: 2,
            sec: 3,
            nsec: 4,
        };
        idx.write_stamp(&s).unwrap();
        assert_eq!(idx.read_stamp(), Some(s));
        idx.retain(&BTreeSet::new()).unwrap();
        assert!(idx.read(&long).unwrap().is_empty());
        assert_eq!(idx.read_stamp(), Some(s), "retain keeps the stamp");
        assert_eq!(Stamp::decode("v1 1 2 3"), None);
    }
}
