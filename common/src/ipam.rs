//! IPAM delegation: run the IPAM plugin named by `ipam.type` from CNI_PATH with the same
//! environment and stdin, as libcni's `invoke.Delegate*` does.

use crate::error::{Error, Result};
use crate::exec::{PluginEnv, run_plugin};
use crate::skel::{CmdArgs, Command};
use crate::spec::CniResult;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Finds an executable plugin called `name` in the CNI_PATH directories.
pub fn find_plugin<'a>(name: &str, dirs: impl IntoIterator<Item = &'a str>) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::config(format!("invalid plugin type {name:?}")));
    }
    let dirs: Vec<&str> = dirs.into_iter().collect();
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::internal(format!("failed to find plugin {name:?} in path {dirs:?}")))
}

/// The IPAM type of a config, or a code-7 error if there is none.
pub fn ipam_type(args: &CmdArgs) -> Result<&str> {
    crate::gojson::get(&args.conf, "ipam")
        .and_then(|i| crate::gojson::get(i, "type"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::config("missing ipam.type in the network config"))
}

/// How long a delegated IPAM plugin may run before it is killed and the operation fails with
/// "try again later" (host-local itself gives up on its lock sooner, with the same code).
pub const IPAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `plugin` for `command` with this invocation's environment and stdin. Returns its
/// stdout on success; its error object is passed on unchanged on failure.
pub fn exec(args: &CmdArgs, plugin: &str, command: Command) -> Result<Vec<u8>> {
    let bin = find_plugin(plugin, args.path_dirs())?;
    let env = PluginEnv {
        container_id: args.container_id.clone(),
        netns: args.netns.clone(),
        ifname: args.ifname.clone(),
        args: args.args.clone(),
        path: args.path.clone(),
    };
    run_plugin(&bin, command, &env, &args.stdin, Some(IPAM_TIMEOUT))
}

/// IPAM ADD: the allocation as a typed result.
pub fn exec_add(args: &CmdArgs) -> Result<CniResult> {
    let plugin = ipam_type(args)?;
    let out = exec(args, plugin, Command::Add)?;
    let v: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| Error::Decode(format!("decoding the result of {plugin}: {e}")))?;
    CniResult::from_json(&v, args.version)
}

/// IPAM DEL, CHECK, GC or STATUS.
pub fn exec_command(args: &CmdArgs, command: Command) -> Result<()> {
    let plugin = ipam_type(args)?;
    exec(args, plugin, command).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_cannot_escape_the_path() {
        for bad in ["../sh", "/bin/sh", "", ".."] {
            assert_eq!(find_plugin(bad, ["/bin"]).unwrap_err().code(), 7, "{bad}");
        }
        assert!(find_plugin("sh", ["/nonexistent", "/bin"]).is_ok());
        assert_eq!(
            find_plugin("no-such-plugin", ["/bin"]).unwrap_err().code(),
            999
        );
    }
}
