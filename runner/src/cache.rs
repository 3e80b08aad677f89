//! The libcni result cache: one JSON file per attachment, `<dir>/<network>-<containerID>-<ifname>`,
//! written after a successful ADD and read by CHECK, DEL and GC. Same format as libcni's
//! `cniCacheV1`, so a runtime built on libcni and this runner can share the directory.

use crate::base64;
use common::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The `kind` of every cache file this runner writes.
pub const KIND_V1: &str = "cniCacheV1";

/// One cache file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The conflist bytes, base64 (Go's encoding of `[]byte`).
    pub config: String,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// CNI_ARGS as `[[key, value], ...]`.
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl CacheEntry {
    /// The conflist bytes the attachment was made with.
    pub fn config_bytes(&self) -> Result<Vec<u8>> {
        base64::decode(&self.config).map_err(|e| Error::Decode(format!("cache config: {e}")))
    }
}

/// The cache file of one attachment. All three parts must be non-empty (as in libcni), and
/// none may contain `/` (the runner checks IDs before, this keeps the file inside `dir`).
pub fn path(dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<PathBuf> {
    let parts = [network, container_id, ifname];
    if parts.iter().any(|p| p.is_empty() || p.contains('/')) {
        return Err(Error::internal(format!(
            "cache file path requires network name ({network:?}), container ID ({container_id:?}) and interface name ({ifname:?})"
        )));
    }
    Ok(dir.join(format!("{network}-{container_id}-{ifname}")))
}

/// Writes `entry` to its file atomically: the directory is created 0700, the file written
/// 0600 under a temporary name in the same directory, synced, then renamed over the old one.
pub fn write(dir: &Path, entry: &CacheEntry) -> Result<PathBuf> {
    let target = path(dir, &entry.network_name, &entry.container_id, &entry.ifname)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating cache directory {}", dir.display()), e))?;
    let data = serde_json::to_vec(entry)?;
    let file_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cache");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(
            format!("writing cache file {}", target.display()),
            e,
        ));
    }
    Ok(target)
}

/// Reads one cache file. A missing file is `Ok(None)`; a file that is not a `cniCacheV1`
/// entry is an error.
pub fn read(file: &Path) -> Result<Option<CacheEntry>> {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    };
    let entry: CacheEntry = serde_json::from_slice(&data)
        .map_err(|e| Error::Decode(format!("cache file {}: {e}", file.display())))?;
    if entry.kind != KIND_V1 {
        return Err(Error::Decode(format!(
            "cache file {} has kind {:?}, expected {KIND_V1:?}",
            file.display(),
            entry.kind
        )));
    }
    Ok(Some(entry))
}

/// The cached result of one attachment: the `result` of a `cniCacheV1` file, or, for a file
/// in libcni's older format (the bare result), the whole file. `Ok(None)` when missing.
pub fn read_result(file: &Path) -> Result<Option<Value>> {
    match read(file) {
        Ok(Some(entry)) => Ok(entry.result),
        Ok(None) => Ok(None),
        Err(first) => {
            let legacy = std::fs::read(file)
                .ok()
                .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                .filter(|v| v.get("kind").is_none() && v.get("cniVersion").is_some());
            legacy.map(Some).ok_or(first)
        }
    }
}

/// Removes a cache file; a missing one is fine.
pub fn remove(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", file.display()), e)),
    }
}

/// Temporary files of [`write`] (`.<name>.tmp-<pid>`): never entries. One left by a killed
/// runner (its pid gone) is removed when the directory is listed.
fn is_temporary(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(pid) = name
        .strip_prefix('.')
        .and_then(|n| n.rsplit_once(".tmp-"))
        .map(|(_, pid)| pid)
    else {
        return false;
    };
    if pid
        .parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    {
        let _ = std::fs::remove_file(p);
    }
    true
}

/// Every readable `cniCacheV1` entry in `dir` with a network name and an interface name, in
/// file name order (libcni's `GetCachedAttachments`). Other files are skipped; a missing
/// directory has none.
pub fn list(dir: &Path) -> Result<Vec<CacheEntry>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| !is_temporary(p))
        .collect();
    files.sort();
    Ok(files
        .iter()
        .filter_map(|f| read(f).ok().flatten())
        .filter(|e| !e.ifname.is_empty() && !e.network_name.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn entry() -> CacheEntry {
        let conflist = br#"{"name":"net1","cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#;
        CacheEntry {
            kind: KIND_V1.into(),
            container_id: "c1".into(),
            config: base64::encode(conflist),
            ifname: "eth0".into(),
            network_name: "net1".into(),
            netns: "/run/netns/a".into(),
            cni_args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: json!({"mac": "00:11:22:33:44:55"})
                .as_object()
                .unwrap()
                .clone(),
            result: Some(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]})),
        }
    }

    #[test]
    fn file_format_matches_libcni() {
        let v = serde_json::to_value(entry()).unwrap();
        assert_eq!(
            v,
            json!({
                "kind": "cniCacheV1",
                "containerId": "c1",
                "config": "eyJuYW1lIjoibmV0MSIsImNuaVZlcnNpb24iOiIxLjAuMCIsInBsdWdpbnMiOlt7InR5cGUiOiJ4In1dfQ==",
                "ifName": "eth0",
                "networkName": "net1",
                "netns": "/run/netns/a",
                "cniArgs": [["IgnoreUnknown", "1"]],
                "capabilityArgs": {"mac": "00:11:22:33:44:55"},
                "result": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
            })
        );
        let mut bare = entry();
        bare.netns.clear();
        bare.cni_args.clear();
        bare.capability_args.clear();
        let v = serde_json::to_value(bare).unwrap();
        for k in ["netns", "cniArgs", "capabilityArgs"] {
            assert!(v.get(k).is_none(), "{k} should be omitted when empty");
        }
    }

    #[test]
    fn write_read_roundtrip_with_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/results");
        let e = entry();
        let file = write(&dir, &e).unwrap();
        assert_eq!(file, dir.join("net1-c1-eth0"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        let back = read(&file).unwrap().unwrap();
        assert_eq!(back, e);
        assert_eq!(
            back.config_bytes().unwrap(),
            br#"{"name":"net1","cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#
        );
        // Only the final file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(list(&dir).unwrap(), vec![e.clone()]);
        assert_eq!(read_result(&file).unwrap(), e.result);
        remove(&file).unwrap();
        remove(&file).unwrap();
        assert_eq!(read(&file).unwrap(), None);
    }

    #[test]
    fn unreadable_and_legacy_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("bad"), "{not json").unwrap();
        std::fs::write(
            d.join("other"),
            r#"{"kind":"v2","containerId":"c","config":"","ifName":"e","networkName":"n"}"#,
        )
        .unwrap();
        std::fs::write(d.join("legacy"), r#"{"cniVersion":"0.4.0","ips":[]}"#).unwrap();
        assert!(read(&d.join("bad")).is_err());
        assert!(read(&d.join("other")).is_err());
        assert!(read_result(&d.join("bad")).is_err());
        assert_eq!(
            read_result(&d.join("legacy")).unwrap().unwrap()["cniVersion"],
            "0.4.0"
        );
        assert!(list(d).unwrap().is_empty());
        assert!(list(&d.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn path_refuses_empty_or_escaping_parts() {
        let d = Path::new("/x");
        assert!(path(d, "", "c", "e").is_err());
        assert!(path(d, "n", "../c", "e").is_err());
        assert_eq!(path(d, "n", "c", "e").unwrap(), Path::new("/x/n-c-e"));
    }

    #[test]
    fn temporary_files_are_never_entries_and_dead_ones_go() {
        let d = tempfile::tempdir().unwrap();
        let e = entry();
        write(d.path(), &e).unwrap();
        let body = std::fs::read(path(d.path(), "net1", "c1", "eth0").unwrap()).unwrap();
        let live = d
            .path()
            .join(format!(".net1-c2-eth0.tmp-{}", std::process::id()));
        let dead = d.path().join(".net1-c3-eth0.tmp-4194304999");
        std::fs::write(&live, &body).unwrap();
        std::fs::write(&dead, &body).unwrap();
        let listed = list(d.path()).unwrap();
        assert_eq!(listed.len(), 1, "only the real entry");
        assert!(live.exists(), "a running writer's file is left alone");
        assert!(!dead.exists(), "a killed writer's file is removed");
    }
}
