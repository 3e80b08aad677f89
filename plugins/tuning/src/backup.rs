//! Backup files: `<dataDir>/<containerID>_<ifname>.json`, holding the values ADD changed so
//! that DEL can put them back.
//!
//! The reference's keys (`mac`, `promisc`, `mtu`, `allmulti`, `txQLen`) keep their meaning, so
//! either binary restores the other's file. What the reference does not have lives under
//! `cnirs`: the owner (network, container ID, ifname, so GC can tell whose a file is), the
//! link's identity (netns inode, ifindex: a backup never applies to a re-created interface)
//! and the original sysctl values.
//!
//! Files are written whole to `.<name>.tmp` and renamed over, so a reader sees the old file
//! or the new one, never a part.

use common::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What ADD found before changing it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allmulti: Option<bool>,
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    pub txqlen: Option<u32>,
    /// Absent in files the reference plugin wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnirs: Option<Owner>,
}

/// Who a backup belongs to, and the sysctls it saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The inode of the container's network namespace.
    pub netns_inode: u64,
    pub ifindex: u32,
    /// Resolved path (`/proc/sys/net/...`) → value before ADD wrote it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
}

impl Owner {
    /// True when both describe the same interface in the same namespace.
    pub fn same_link(&self, other: &Owner) -> bool {
        self.network == other.network
            && self.container_id == other.container_id
            && self.ifname == other.ifname
            && self.netns_inode == other.netns_inode
            && self.ifindex == other.ifindex
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// File name of an attachment's backup (the reference's).
pub fn file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}_{ifname}.json")
}

fn tmp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// A backup file's raw bytes; None when there is none.
pub fn read_raw(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading backup {}", path.display()), e)),
    }
}

pub fn parse(bytes: &[u8], path: &Path) -> Result<Backup> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Decode(format!("backup {}: {e}", path.display())))
}

/// Writes `bytes` as `dir/name` atomically (temporary file, fsync, rename), creating `dir`
/// (0700) if needed. The file is 0600.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_io_context(|| format!("creating backup directory {}", dir.display()))?;
    let tmp = dir.join(tmp_name(name));
    let ctx = || format!("writing backup {}", tmp.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_io_context(ctx)?;
    f.write_all(bytes).with_io_context(ctx)?;
    f.sync_all().with_io_context(ctx)?;
    drop(f);
    let dest = dir.join(name);
    std::fs::rename(&tmp, &dest)
        .with_io_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    // The rename itself reaches the disk with the directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Serialises and writes a backup.
#[cfg(test)]
pub fn save(dir: &Path, name: &str, b: &Backup) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(b)
        .map_err(|e| Error::internal(format!("encoding backup: {e}")))?;
    write_atomic(dir, name, &bytes)
}

/// Removes an attachment's backup and any temporary file of it; a missing file is fine.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    for p in [dir.join(tmp_name(name)), dir.join(name)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }
    Ok(())
}

/// One entry of the data dir, as GC sees it.
#[derive(Debug)]
pub enum Entry {
    Backup {
        path: PathBuf,
        backup: Result<Backup>,
    },
    /// A temporary file and its age in seconds (left by an ADD that died mid-write).
    Temp { path: PathBuf, age_secs: u64 },
}

/// Everything in the data dir that this plugin writes (empty if the dir does not exist).
pub fn list(dir: &Path) -> Result<Vec<Entry>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_io_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') && name.ends_with(".json.tmp") {
            let age_secs = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_secs());
            out.push(Entry::Temp { path, age_secs });
        } else if !name.starts_with('.') && name.ends_with(".json") {
            let backup = read_raw(&path).and_then(|b| match b {
                Some(bytes) => parse(&bytes, &path),
                None => Err(Error::io(
                    format!("reading {}", path.display()),
                    std::io::Error::from(ErrorKind::NotFound),
                )),
            });
            out.push(Entry::Backup { path, backup });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_files_read_and_ours_keep_reference_keys() {
        let go = br#"{"mac":"aa:bb:cc:dd:ee:ff","promisc":false,"mtu":1500,"allmulti":true}"#;
        let b = parse(go, Path::new("x")).unwrap();
        assert_eq!(b.mac, "aa:bb:cc:dd:ee:ff");
        assert_eq!(
            (b.promisc, b.mtu, b.allmulti),
            (Some(false), 1500, Some(true))
        );
        assert!(b.cnirs.is_none());

        let ours = Backup {
            mtu: 1500,
            txqlen: Some(1000),
            cnirs: Some(Owner {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
                netns_inode: 7,
                ifindex: 2,
                sysctl: [(
                    "/proc/sys/net/core/somaxconn".to_string(),
                    "4096".to_string(),
                )]
                .into(),
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&ours).unwrap();
        assert_eq!(v["mtu"], 1500);
        assert_eq!(v["txQLen"], 1000);
        assert!(v.get("mac").is_none() && v.get("promisc").is_none());
        assert_eq!(v["cnirs"]["containerID"], "c");
        assert_eq!(v["cnirs"]["sysctl"]["/proc/sys/net/core/somaxconn"], "4096");
        assert_eq!(serde_json::from_value::<Backup>(v).unwrap(), ours);
    }

    #[test]
    fn atomic_write_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sub");
        assert!(list(&dir).unwrap().is_empty());
        let name = file_name("c_1", "eth0");
        save(
            &dir,
            &name,
            &Backup {
                mtu: 9000,
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::write(dir.join(".x_eth1.json.tmp"), "{").unwrap();
        std::fs::write(dir.join("broken.json"), "{").unwrap();
        let listed = list(&dir).unwrap();
        assert_eq!(listed.len(), 3);
        let good = listed.iter().find_map(|e| match e {
            Entry::Backup {
                path,
                backup: Ok(b),
            } if path.ends_with(&name) => Some(b.mtu),
            _ => None,
        });
        assert_eq!(good, Some(9000));
        assert!(
            listed
                .iter()
                .any(|e| matches!(e, Entry::Temp { age_secs: 0, .. }))
        );
        assert!(
            listed
                .iter()
                .any(|e| matches!(e, Entry::Backup { backup: Err(_), .. }))
        );
        remove(&dir, &name).unwrap();
        remove(&dir, &name).unwrap();
        assert!(!dir.join(&name).exists());
    }
}
