//! `cnirun`: runs a CNI network configuration list the way libcni does, from a shell or a
//! test. The modules are the pieces of libcni it reimplements:
//!
//! - [`conflist`]: loading a list (by file or by name in a directory) and its cniVersion;
//! - [`request`]: the config each plugin gets (name, cniVersion, prevResult, runtimeConfig);
//! - [`exec`]: running one plugin with the CNI environment and a time limit;
//! - [`cache`]: the result cache (`cniCacheV1`), with [`base64`] for its `config` field;
//! - [`ops`]: ADD, DEL, CHECK, GC, STATUS and VERSION over a list;
//! - [`capargs`] and [`cli`]: the command line.
//!
//! Where it differs from libcni on purpose:
//!
//! - A plugin's ADD result is passed on as printed (checked to parse as a result), not
//!   re-encoded through Go's typed result, so fields libcni does not know survive.
//! - DEL removes the cache file after success for every version (libcni keeps it below 0.4.0,
//!   where it reads no cached result), and fills a missing --netns, --cni-args and capability
//!   args from the cache (a shell user rarely repeats them).
//! - CHECK without a cached result fails with code 3 instead of sending no prevResult.
//! - GC with no cache directory still sends GC to the plugins (libcni returns early).
//! - Container ID, interface name and network name are validated for DEL and CHECK too, which
//!   also keeps cache paths inside the cache directory.
//! - A list without any cniVersion is sent "0.1.0" (libcni sends "").
//! - Each plugin execution has a time limit (libcni has only the caller's context).
//! - The default container ID is "cnirun-" + an FNV-1a hash of the netns path, not cnitool's
//!   SHA-512 one: give --container-id to act on an attachment cnitool made.

pub mod base64;
pub mod cache;
pub mod capargs;
pub mod cli;
pub mod conflist;
pub mod ops;
pub mod request;

use cli::{Cli, Cmd};
use common::spec::Version;
use common::{Error, Result};
use serde_json::Value;
use std::io::Write;

/// Runs the parsed command line. Writes the result (or the error object) to `stdout` and a
/// readable error line to `stderr`; returns the exit status (0 or 1).
pub fn execute(cli: &Cli, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let mut version = Version::LATEST;
    let outcome = run(cli, &mut version);
    let (code, value) = match outcome {
        Ok(None) => return 0,
        Ok(Some(v)) => (0, v),
        Err(e) => {
            let _ = writeln!(stderr, "cnirun: {e}");
            let json = e.to_json(version.as_str());
            (1, serde_json::to_value(&json).unwrap_or(Value::Null))
        }
    };
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    if writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 1;
    }
    code
}

/// The command itself; `version` is set to the list's version once it is known (the error
/// object is written in it).
fn run(cli: &Cli, version: &mut Version) -> Result<Option<Value>> {
    match &cli.command {
        Cmd::Add(a) | Cmd::Del(a) | Cmd::Check(a) => {
            let list = a.net.load()?;
            *version = list.version;
            let runner = a.net.runner();
            let mut rt = a.runtime_conf()?;
            match &cli.command {
                Cmd::Add(_) => {
                    if rt.netns.is_empty() {
                        return Err(Error::env("add needs --netns", ""));
                    }
                    runner.add(&list, &rt).map(Some).inspect_err(|_| {
                        log::warn!(
                            "ADD failed and was not rolled back: run `cnirun del` with the same arguments to clean up"
                        );
                    })
                }
                Cmd::Del(_) => {
                    a.fill_from_cache(&mut rt, &runner, &list);
                    runner.del(&list, &rt).map(|()| None)
                }
                _ => {
                    a.fill_from_cache(&mut rt, &runner, &list);
                    runner.check(&list, &rt).map(|()| None)
                }
            }
        }
        Cmd::Gc(g) => {
            let list = g.net.load()?;
            *version = list.version;
            g.net.runner().gc(&list, &g.valid).map(|()| None)
        }
        Cmd::Status(n) => {
            let list = n.load()?;
            *version = list.version;
            n.runner().status(&list).map(|()| None)
        }
        Cmd::Version(n) => {
            let list = n.load()?;
            *version = list.version;
            n.runner().version(&list).map(Some)
        }
    }
}
