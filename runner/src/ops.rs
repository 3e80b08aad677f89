//! The verbs on a whole list, as libcni's `AddNetworkList`, `DelNetworkList`,
//! `CheckNetworkList`, `GCNetworkList` and `GetStatusNetworkList` run them.

use crate::base64;
use crate::cache::{self, CacheEntry};
use crate::conflist::ConfList;
use crate::request::{gc_config, plugin_config};
use common::exec::{PluginEnv, run_plugin};
use common::skel::Command;
use common::spec::config::{validate_container_id, validate_ifname, validate_network_name};
use common::spec::{Attachment, CniResult, Version};
use common::{Error, Result};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where plugins are found, where results are cached, how long a plugin may run.
#[derive(Debug, Clone)]
pub struct Runner {
    /// CNI_PATH directories, searched in order.
    pub path: Vec<String>,
    /// The results directory (libcni's `/var/lib/cni/results`).
    pub cache_dir: PathBuf,
    /// Limit per plugin execution; `None` waits forever.
    pub timeout: Option<Duration>,
}

/// One attachment's runtime arguments (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn validate(&self, list: &ConfList) -> Result<()> {
        validate_network_name(&list.name)?;
        validate_container_id(&self.container_id)?;
        validate_ifname(&self.ifname)
    }
}

impl Runner {
    fn path_env(&self) -> String {
        self.path.join(":")
    }

    fn env_for(&self, rt: Option<&RuntimeConf>) -> PluginEnv {
        match rt {
            Some(rt) => PluginEnv {
                container_id: rt.container_id.clone(),
                netns: rt.netns.clone(),
                ifname: rt.ifname.clone(),
                args: rt.cni_args(),
                path: self.path_env(),
            },
            None => PluginEnv {
                path: self.path_env(),
                ..PluginEnv::default()
            },
        }
    }

    /// Finds and runs one plugin of the list.
    fn exec(
        &self,
        plugin: &Map<String, Value>,
        command: Command,
        rt: Option<&RuntimeConf>,
        conf: &Value,
    ) -> Result<Vec<u8>> {
        let bin = common::ipam::find_plugin(
            ConfList::plugin_type(plugin),
            self.path.iter().map(String::as_str),
        )?;
        let stdin = serde_json::to_vec(conf)?;
        log::debug!("{} {}: {}", command.as_str(), bin.display(), conf);
        run_plugin(&bin, command, &self.env_for(rt), &stdin, self.timeout)
    }

    /// The cache file of this attachment.
    pub fn cache_file(&self, list: &ConfList, rt: &RuntimeConf) -> Result<PathBuf> {
        cache::path(&self.cache_dir, &list.name, &rt.container_id, &rt.ifname)
    }

    /// The cached result converted to the list's version (DEL and CHECK send it as
    /// prevResult), `None` when nothing is cached.
    pub fn cached_result(&self, file: &Path, version: Version) -> Result<Option<Value>> {
        let Some(raw) = cache::read_result(file)? else {
            return Ok(None);
        };
        let typed = CniResult::from_json(&raw, version)
            .map_err(|e| e.context(format!("cached result in {}", file.display())))?;
        typed.to_json(version).map(Some).map_err(|e| {
            e.context(format!(
                "failed to convert cached result to config version {version}"
            ))
        })
    }

    /// ADD: each plugin in order, each given the previous one's result. On a failure the
    /// error is returned as is and nothing is undone (libcni leaves that to the runtime's
    /// DEL); no cache is written then. On success the cache is written and the last result
    /// returned.
    pub fn add(&self, list: &ConfList, rt: &RuntimeConf) -> Result<Value> {
        rt.validate(list)?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let what = || format!("plugin {} failed (add)", ConfList::describe(plugin));
            let conf = plugin_config(
                plugin,
                &list.name,
                list.version,
                prev.as_ref(),
                Some(&rt.capability_args),
            );
            let out = self
                .exec(plugin, Command::Add, Some(rt), &conf)
                .map_err(|e| e.context(what()))?;
            let result: Value = serde_json::from_slice(&out)
                .map_err(|e| Error::Decode(format!("{}: decoding its result: {e}", what())))?;
            CniResult::from_json(&result, list.version).map_err(|e| e.context(what()))?;
            prev = Some(result);
        }
        let result = prev.ok_or_else(|| Error::config("the list has no plugins"))?;
        let entry = CacheEntry {
            kind: cache::KIND_V1.into(),
            container_id: rt.container_id.clone(),
            config: base64::encode(&list.bytes),
            ifname: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: Some(result.clone()),
        };
        cache::write(&self.cache_dir, &entry).map_err(|e| {
            e.context(format!(
                "failed to set network {:?} cached result",
                list.name
            ))
        })?;
        Ok(result)
    }

    /// DEL: each plugin in reverse order. From 0.4.0 each gets the cached result (in the
    /// list's version) as prevResult; an unreadable cache is removed and DEL goes on
    /// without one. The cache file is removed once every plugin succeeded.
    pub fn del(&self, list: &ConfList, rt: &RuntimeConf) -> Result<()> {
        rt.validate(list)?;
        let file = self.cache_file(list, rt)?;
        let prev = if list.version.has_check() {
            match self.cached_result(&file, list.version) {
                Ok(v) => v,
                Err(e) => {
                    log::warn!("ignoring unreadable cache {}: {e}", file.display());
                    cache::remove(&file)?;
                    None
                }
            }
        } else {
            None
        };
        for plugin in list.plugins.iter().rev() {
            let conf = plugin_config(
                plugin,
                &list.name,
                list.version,
                prev.as_ref(),
                Some(&rt.capability_args),
            );
            self.exec(plugin, Command::Del, Some(rt), &conf)
                .map_err(|e| {
                    e.context(format!(
                        "plugin {} failed (delete)",
                        ConfList::describe(plugin)
                    ))
                })?;
        }
        cache::remove(&file)
    }

    /// CHECK (0.4.0+): each plugin in order with the cached result as prevResult; skipped
    /// when the list says `disableCheck`. Without a cached result it fails (code 3).
    pub fn check(&self, list: &ConfList, rt: &RuntimeConf) -> Result<()> {
        if !list.version.has_check() {
            return Err(Error::version(
                format!(
                    "configuration version {:?} does not support the CHECK command",
                    list.version.as_str()
                ),
                "CHECK needs cniVersion 0.4.0 or later",
            ));
        }
        if list.disable_check {
            log::info!("network {:?} has disableCheck: CHECK skipped", list.name);
            return Ok(());
        }
        rt.validate(list)?;
        let file = self.cache_file(list, rt)?;
        let prev = self
            .cached_result(&file, list.version)
            .map_err(|e| e.context(format!("failed to get network {:?} cached result", list.name)))?
            .ok_or_else(|| {
                Error::UnknownContainer(format!(
                    "no cached result for network {:?}, container {:?}, interface {:?} ({}): was ADD run?",
                    list.name,
                    rt.container_id,
                    rt.ifname,
                    file.display()
                ))
            })?;
        for plugin in &list.plugins {
            let conf = plugin_config(
                plugin,
                &list.name,
                list.version,
                Some(&prev),
                Some(&rt.capability_args),
            );
            self.exec(plugin, Command::Check, Some(rt), &conf)
                .map_err(|e| {
                    e.context(format!(
                        "plugin {} failed (check)",
                        ConfList::describe(plugin)
                    ))
                })?;
        }
        Ok(())
    }

    /// GC: skipped when the list says `disableGC`. First a DEL for every cached attachment
    /// of this network that is not in `valid` (with the netns and arguments it was added
    /// with); then, from 1.1.0, GC to every plugin with the valid attachments. Errors do not
    /// stop it; they are reported together at the end.
    pub fn gc(&self, list: &ConfList, valid: &[Attachment]) -> Result<()> {
        if list.disable_gc {
            log::info!("network {:?} has disableGC: GC skipped", list.name);
            return Ok(());
        }
        let keep: BTreeSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let mut errs = Vec::new();
        match cache::list(&self.cache_dir) {
            Err(e) => errs.push(e.context("listing cached attachments")),
            Ok(entries) => {
                for entry in entries.iter().filter(|e| e.network_name == list.name) {
                    if keep.contains(&(entry.container_id.as_str(), entry.ifname.as_str())) {
                        continue;
                    }
                    let rt = RuntimeConf {
                        container_id: entry.container_id.clone(),
                        netns: entry.netns.clone(),
                        ifname: entry.ifname.clone(),
                        args: entry.cni_args.clone(),
                        capability_args: entry.capability_args.clone(),
                    };
                    if let Err(e) = self.del(list, &rt) {
                        errs.push(e.context(format!(
                            "failed to delete stale attachment {} {}",
                            rt.container_id, rt.ifname
                        )));
                    }
                }
            }
        }
        if list.version.has_gc_and_status() {
            for plugin in &list.plugins {
                let conf = gc_config(plugin, &list.name, list.version, valid);
                if let Err(e) = self.exec(plugin, Command::Gc, None, &conf) {
                    errs.push(e.context(format!(
                        "failed to GC plugin {}",
                        ConfList::describe(plugin)
                    )));
                }
            }
        }
        common::error::join(errs)
    }

    /// STATUS (1.1.0+; a no-op before, as in libcni): each plugin in order, stopping at the
    /// first error so its code (50, 51, ...) comes back unchanged.
    pub fn status(&self, list: &ConfList) -> Result<()> {
        if !list.version.has_gc_and_status() {
            log::warn!(
                "network {:?} has cniVersion {}: STATUS needs 1.1.0, nothing asked",
                list.name,
                list.version
            );
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = plugin_config(plugin, &list.name, list.version, None, None);
            self.exec(plugin, Command::Status, None, &conf)
                .map_err(|e| {
                    e.context(format!(
                        "plugin {} failed (status)",
                        ConfList::describe(plugin)
                    ))
                })?;
        }
        Ok(())
    }

    /// VERSION: asks each plugin type of the list once and sums up what they speak.
    pub fn version(&self, list: &ConfList) -> Result<Value> {
        let mut seen = BTreeSet::new();
        let mut plugins = Vec::new();
        for plugin in &list.plugins {
            let ty = ConfList::plugin_type(plugin);
            if !seen.insert(ty.to_string()) {
                continue;
            }
            let what = || format!("plugin {} failed (version)", ConfList::describe(plugin));
            let conf = json!({"cniVersion": Version::LATEST.as_str()});
            let out = self
                .exec(plugin, Command::Version, None, &conf)
                .map_err(|e| e.context(what()))?;
            let answer: Value = serde_json::from_slice(&out)
                .map_err(|e| Error::Decode(format!("{}: decoding its answer: {e}", what())))?;
            let supported: Vec<String> = answer
                .get("supportedVersions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let speaks = supported.iter().any(|v| v == list.version.as_str());
            plugins.push(json!({
                "type": ty,
                "cniVersion": answer.get("cniVersion").cloned().unwrap_or(Value::Null),
                "supportedVersions": supported,
                "supportsListVersion": speaks,
            }));
        }
        Ok(json!({
            "network": list.name,
            "cniVersion": list.version.as_str(),
            "plugins": plugins,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_errors_keep_a_shared_code() {
        assert!(common::error::join(vec![]).is_ok());
        let one = common::error::join(vec![Error::config("a")]).unwrap_err();
        assert_eq!((one.code(), one.to_string()), (7, "a".to_string()));
        let same = common::error::join(vec![Error::config("a"), Error::config("b")]).unwrap_err();
        assert_eq!((same.code(), same.to_string()), (7, "a; b".to_string()));
        let mixed = common::error::join(vec![Error::config("a"), Error::NotAvailable("b".into())])
            .unwrap_err();
        assert_eq!(mixed.code(), 999);
    }

    #[test]
    fn cni_args_are_joined() {
        let rt = RuntimeConf {
            args: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
            ..Default::default()
        };
        assert_eq!(rt.cni_args(), "A=1;B=x=y");
    }
}
