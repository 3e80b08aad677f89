//! Loading a network configuration list as libcni does (`NetworkConfFromBytes`,
//! `NetworkConfFromFile`, `LoadNetworkConf`), including the choice of the list's cniVersion.

use common::spec::Version;
use common::{Error, Result};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// A loaded `.conflist` (or a `.conf` wrapped into one).
#[derive(Debug, Clone)]
pub struct ConfList {
    pub name: String,
    /// The version every plugin is sent (`cniVersion`, or the best of `cniVersions`).
    pub version: Version,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// `loadOnlyInlinedPlugins`: do not append plugins from `<dir>/<name>/*.conf`.
    pub load_only_inlined: bool,
    /// Each plugin's object exactly as written (plus plugins appended from `<dir>/<name>/`).
    pub plugins: Vec<Map<String, Value>>,
    /// The bytes the list was parsed from: what the cache stores as `config`.
    pub bytes: Vec<u8>,
}

impl ConfList {
    /// A plugin's `type` (checked non-empty when the list was loaded).
    pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
        plugin.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// `type="bridge" name="x"`, as libcni names a plugin in its errors.
    pub fn describe(plugin: &Map<String, Value>) -> String {
        let mut out = format!("type={:?}", Self::plugin_type(plugin));
        if let Some(name) = plugin.get("name").and_then(Value::as_str) {
            if !name.is_empty() {
                out.push_str(&format!(" name={name:?}"));
            }
        }
        out
    }

    /// Parses a conflist. Plugins listed in `plugins` only; see [`ConfList::from_file`] for
    /// the ones libcni also loads from a directory named after the network.
    pub fn from_bytes(bytes: &[u8]) -> Result<ConfList> {
        let bad = |msg: String| Error::config(format!("error parsing configuration list: {msg}"));
        let raw: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let name = match raw.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(bad(format!("invalid name {other}"))),
            None => return Err(bad("no name".into())),
        };
        let cni_version = match raw.get("cniVersion") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(bad(format!("invalid cniVersion {other}"))),
        };
        let versions = match raw.get("cniVersions") {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| bad(format!("invalid cniVersions entry {v}")))
                    })
                    .collect::<Result<Vec<&str>>>()?,
            ),
            Some(other) => return Err(bad(format!("invalid cniVersions {other}"))),
        };
        let version = select_version(cni_version, versions.as_deref())?;
        let read_bool = |key: &str| -> Result<bool> {
            match raw.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(bad(format!("invalid value {s:?} for {key}"))),
                },
                Some(other) => Err(bad(format!("invalid value {other} for {key}"))),
            }
        };
        let disable_check = read_bool("disableCheck")?;
        let disable_gc = read_bool("disableGC")?;
        let inlined_only = read_bool("loadOnlyInlinedPlugins")?;
        let plugins = match raw.get("plugins") {
            None if inlined_only => {
                return Err(bad(
                    "`loadOnlyInlinedPlugins` is true, and no 'plugins' key".into(),
                ));
            }
            None => Vec::new(),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(bad("no plugins in list".into()));
            }
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, p)| plugin_object(p).map_err(|e| e.context(format!("plugin {i}"))))
                .collect::<Result<_>>()?,
            Some(other) => return Err(bad(format!("invalid 'plugins' {other}"))),
        };
        Ok(ConfList {
            name,
            version,
            disable_check,
            disable_gc,
            load_only_inlined: inlined_only,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// Reads a conflist file. Unless `loadOnlyInlinedPlugins` is true, plugin configs in
    /// `<dir of file>/<network name>/*.conf` are appended (sorted by file name), as libcni
    /// does. A file holding a single plugin config (no `plugins`, but a `type`) is wrapped.
    pub fn from_file(path: &Path) -> Result<ConfList> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let raw: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::config(format!("error parsing {}: {e}", path.display())))?;
        if raw.get("plugins").is_none() && raw.get("type").is_some() {
            return ConfList::from_single(&bytes);
        }
        let mut list =
            ConfList::from_bytes(&bytes).map_err(|e| e.context(path.display().to_string()))?;
        if !list.load_only_inlined {
            let dir = path.parent().unwrap_or(Path::new(".")).join(&list.name);
            for file in conf_files(&dir, &["conf"])? {
                let b = std::fs::read(&file)
                    .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
                let v: Value = serde_json::from_slice(&b)
                    .map_err(|e| Error::config(format!("error parsing {}: {e}", file.display())))?;
                list.plugins
                    .push(plugin_object(&v).map_err(|e| e.context(file.display().to_string()))?);
            }
        }
        if list.plugins.is_empty() {
            return Err(Error::config(format!(
                "{}: no plugin configs found",
                path.display()
            )));
        }
        Ok(list)
    }

    /// Wraps a single-plugin config (the deprecated `.conf` format) into a one-plugin list,
    /// with the list's name and cniVersion taken from it (libcni's `ConfListFromConf`).
    pub fn from_single(bytes: &[u8]) -> Result<ConfList> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::config(format!("error parsing configuration: {e}")))?;
        let plugin = plugin_object(&raw)?;
        let field = |k: &str| {
            plugin
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let wrapped = serde_json::json!({
            "name": field("name"),
            "cniVersion": field("cniVersion"),
            "plugins": [Value::Object(plugin.clone())],
        });
        ConfList::from_bytes(&serde_json::to_vec(&wrapped)?)
    }

    /// Finds the network called `name` in `dir` as libcni's `LoadConfList` does: first the
    /// `*.conflist` files in name order, then the single-plugin `*.conf` and `*.json` files
    /// (wrapped into a list). A file that fails to parse is an error, as in libcni.
    pub fn load(dir: &Path, name: &str) -> Result<ConfList> {
        for file in conf_files(dir, &["conflist"])? {
            let list = ConfList::from_file(&file)?;
            if list.name == name {
                return Ok(list);
            }
        }
        for file in conf_files(dir, &["conf", "json"])? {
            let bytes = std::fs::read(&file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            let list =
                ConfList::from_single(&bytes).map_err(|e| e.context(file.display().to_string()))?;
            if list.name == name {
                return Ok(list);
            }
        }
        Err(Error::config(format!(
            "no net configuration with name {name:?} in {}",
            dir.display()
        )))
    }
}

/// One plugin entry: an object with a non-empty string `type`.
fn plugin_object(v: &Value) -> Result<Map<String, Value>> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config("error parsing configuration: not a JSON object"))?;
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => Ok(obj.clone()),
        _ => Err(Error::config("error parsing configuration: missing 'type'")),
    }
}

/// The regular files in `dir` whose extension is one of `exts`, sorted by name. A missing
/// directory has none.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if exts.contains(&ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `major.minor.patch` as numbers, for ordering versions this suite may not know.
fn semver(s: &str) -> Result<(u64, u64, u64)> {
    let bad = || {
        Error::version(
            format!("invalid version {s:?}"),
            "expected major.minor.patch",
        )
    };
    let mut parts = s.split('.').map(|p| p.parse::<u64>().map_err(|_| bad()));
    let major = parts.next().ok_or_else(bad)??;
    let minor = parts.next().ok_or_else(bad)??;
    let patch = parts.next().ok_or_else(bad)??;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((major, minor, patch))
}

/// The list's version: with `cniVersions`, the highest entry of `cniVersions` ∪ {`cniVersion`}
/// that is not newer than 1.1.0 (newer ones are skipped); otherwise `cniVersion` (absent means
/// 0.1.0, as in libcni). The result must be a version this suite speaks (code 1 otherwise).
pub fn select_version(cni_version: Option<&str>, cni_versions: Option<&[&str]>) -> Result<Version> {
    let chosen = match cni_versions {
        None => cni_version.unwrap_or("").to_string(),
        Some(list) => {
            let latest = semver(Version::LATEST.as_str())?;
            let mut best: Option<((u64, u64, u64), &str)> = None;
            let candidates = list
                .iter()
                .copied()
                .chain(cni_version.filter(|v| !v.is_empty()));
            for v in candidates {
                let sv = semver(v)?;
                if sv.cmp(&latest) == Ordering::Greater {
                    continue;
                }
                if best.is_none_or(|(b, _)| sv > b) {
                    best = Some((sv, v));
                }
            }
            best.map(|(_, v)| v.to_string())
                .or_else(|| cni_version.map(str::to_string))
                .unwrap_or_default()
        }
    };
    Version::parse(&chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, v: &Value) {
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    #[test]
    fn version_from_cni_version_or_versions() {
        assert_eq!(
            select_version(Some("0.4.0"), None).unwrap(),
            Version::V0_4_0
        );
        assert_eq!(select_version(None, None).unwrap(), Version::V0_1_0);
        assert_eq!(
            select_version(None, Some(&["0.3.1", "1.0.0", "0.4.0"])).unwrap(),
            Version::V1_0_0
        );
        // Newer than 1.1.0 is skipped, not chosen.
        assert_eq!(
            select_version(None, Some(&["1.0.0", "1.2.0", "2.0.0"])).unwrap(),
            Version::V1_0_0
        );
        // cniVersion takes part in the choice.
        assert_eq!(
            select_version(Some("1.1.0"), Some(&["1.0.0"])).unwrap(),
            Version::V1_1_0
        );
        assert_eq!(
            select_version(Some("0.3.1"), Some(&["1.0.0"])).unwrap(),
            Version::V1_0_0
        );
        // Numeric, not lexical, ordering.
        assert_eq!(
            select_version(None, Some(&["0.10.0", "0.4.0"]))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(select_version(None, Some(&["x"])).unwrap_err().code(), 1);
        assert_eq!(select_version(Some("9.9.9"), None).unwrap_err().code(), 1);
    }

    #[test]
    fn parses_list_fields() {
        let l = ConfList::from_bytes(
            br#"{"name":"n","cniVersion":"1.1.0","disableCheck":"TRUE","disableGC":true,
                 "plugins":[{"type":"a"},{"type":"b","name":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(l.name, "n");
        assert_eq!(l.version, Version::V1_1_0);
        assert!(l.disable_check && l.disable_gc);
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(ConfList::describe(&l.plugins[1]), r#"type="b" name="x""#);
        for bad in [
            &br#"{"cniVersion":"1.0.0","plugins":[{"type":"a"}]}"#[..],
            br#"{"name":"n","plugins":[]}"#,
            br#"{"name":"n","plugins":[{"name":"no-type"}]}"#,
            br#"{"name":"n","disableCheck":"maybe","plugins":[{"type":"a"}]}"#,
            br#"{"name":"n","loadOnlyInlinedPlugins":true}"#,
        ] {
            assert_eq!(ConfList::from_bytes(bad).unwrap_err().code(), 7);
        }
    }

    #[test]
    fn wraps_a_single_plugin_conf() {
        let l = ConfList::from_single(
            br#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"b0"}"#,
        )
        .unwrap();
        assert_eq!(l.name, "single");
        assert_eq!(l.version, Version::V0_4_0);
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0]["bridge"], "b0");
        let again: Value = serde_json::from_slice(&l.bytes).unwrap();
        assert_eq!(again["plugins"][0]["type"], "bridge");
    }

    #[test]
    fn finds_network_by_name_in_conf_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "10-a.conflist",
            &json!({"name":"a","cniVersion":"1.0.0","plugins":[{"type":"p1"}]}),
        );
        write(
            d,
            "20-b.conflist",
            &json!({"name":"b","cniVersion":"1.0.0","plugins":[{"type":"p2"}]}),
        );
        write(
            d,
            "30-c.conf",
            &json!({"name":"c","cniVersion":"0.3.1","type":"p3"}),
        );
        write(
            d,
            "40-d.json",
            &json!({"name":"d","cniVersion":"0.4.0","type":"p4"}),
        );
        std::fs::write(d.join("README"), "not a config").unwrap();
        // Extra plugins for "b" from b/*.conf, appended in name order.
        std::fs::create_dir(d.join("b")).unwrap();
        write(&d.join("b"), "2.conf", &json!({"type":"late"}));
        write(&d.join("b"), "1.conf", &json!({"type":"early"}));

        assert_eq!(ConfList::load(d, "a").unwrap().plugins.len(), 1);
        let b = ConfList::load(d, "b").unwrap();
        let types: Vec<&str> = b.plugins.iter().map(ConfList::plugin_type).collect();
        assert_eq!(types, ["p2", "early", "late"]);
        let c = ConfList::load(d, "c").unwrap();
        assert_eq!(
            (c.version, ConfList::plugin_type(&c.plugins[0])),
            (Version::V0_3_1, "p3")
        );
        assert_eq!(ConfList::load(d, "d").unwrap().version, Version::V0_4_0);
        let e = ConfList::load(d, "nope").unwrap_err();
        assert!(
            e.to_string()
                .contains("no net configuration with name \"nope\"")
        );
        // A .conf given directly is wrapped too.
        assert_eq!(ConfList::from_file(&d.join("30-c.conf")).unwrap().name, "c");
    }

    #[test]
    fn inlined_only_skips_the_plugin_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "n.conflist",
            &json!({"name":"n","cniVersion":"1.0.0","loadOnlyInlinedPlugins":true,"plugins":[{"type":"p"}]}),
        );
        std::fs::create_dir(d.join("n")).unwrap();
        write(&d.join("n"), "x.conf", &json!({"type":"extra"}));
        assert_eq!(
            ConfList::from_file(&d.join("n.conflist"))
                .unwrap()
                .plugins
                .len(),
            1
        );
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The example lists in `conflists/` load, speak 1.0.0 and name a valid bridge.
    #[test]
    fn example_conflists_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conflists");
        for (file, name, ranges) in [
            ("bridge-host-local.conflist", "rs-bridge", 1),
            ("bridge-dual-stack.conflist", "rs-dual", 2),
        ] {
            let l = ConfList::from_file(&dir.join(file)).unwrap();
            assert_eq!((l.name.as_str(), l.version), (name, Version::V1_0_0));
            let p = &l.plugins[0];
            assert_eq!(ConfList::plugin_type(p), "bridge");
            assert!(p["bridge"].as_str().unwrap().len() <= 15);
            assert_eq!(p["ipam"]["ranges"].as_array().unwrap().len(), ranges);
            assert_eq!(ConfList::load(&dir, name).unwrap().name, name);
        }
    }
}
