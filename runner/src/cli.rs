//! The command line (clap derive) and its translation into a [`Runner`] and a
//! [`RuntimeConf`].

use crate::capargs::CapArgsInput;
use crate::conflist::ConfList;
use crate::ops::{Runner, RuntimeConf};
use clap::{Args, Parser, Subcommand};
use common::spec::Attachment;
use common::spec::parse_cni_args;
use common::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

const AFTER_HELP: &str = "\
Output: ADD prints the final result JSON on stdout and VERSION a JSON summary; DEL, CHECK, GC
and STATUS print nothing on success. On failure the exit status is 1, stdout holds one CNI
error object {\"cniVersion\",\"code\",\"msg\",\"details\"} (a plugin's code is kept), and stderr
a readable line. Set RUST_LOG=debug to see every plugin invocation on stderr.

Results are cached as libcni does (<cache-dir>/<network>-<container-id>-<ifname>), so DEL,
CHECK and GC find what ADD did; a runtime using libcni with the same directory shares it.";

/// Runs a CNI network configuration list (.conflist) the way libcni does.
#[derive(Debug, Parser)]
#[command(name = "cnirun", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Attach a container: ADD through every plugin in order, cache and print the result.
    Add(AttachArgs),
    /// Detach a container: DEL through every plugin in reverse order with the cached result.
    Del(AttachArgs),
    /// Verify an attachment: CHECK through every plugin with the cached result (0.4.0+).
    Check(AttachArgs),
    /// Garbage-collect: DEL stale cached attachments, then GC every plugin (1.1.0+).
    ///
    /// Every cached attachment of the network not listed with --valid-attachment gets a DEL
    /// (with the netns and arguments it was added with); then, for cniVersion 1.1.0 and
    /// later, every plugin gets GC with the valid list. Give at least one --valid-attachment,
    /// or --none-valid to tear down every attachment of the network. Errors do not stop it;
    /// they are reported together.
    Gc(GcArgs),
    /// Ask every plugin whether it can serve ADD now (1.1.0+); stops at the first error.
    Status(NetArgs),
    /// Ask every plugin type of the list which spec versions it speaks; prints a summary.
    Version(NetArgs),
}

/// Which network, where plugins and results live, how long a plugin may run.
#[derive(Debug, Args)]
pub struct NetArgs {
    #[command(flatten)]
    pub source: Source,

    /// Directory searched for --network: *.conflist, then *.conf and *.json files.
    #[arg(
        long,
        value_name = "DIR",
        env = "NETCONFPATH",
        default_value = "/etc/cni/net.d"
    )]
    pub conf_dir: PathBuf,

    /// Plugin directories, colon-separated (also passed to plugins as CNI_PATH).
    #[arg(
        long,
        value_name = "DIRS",
        env = "CNI_PATH",
        default_value = "/opt/cni/bin"
    )]
    pub cni_path: String,

    /// The result cache directory (libcni's).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/cni/results")]
    pub cache_dir: PathBuf,

    /// Seconds one plugin execution may take (fractions allowed; 0 = no limit). A plugin that
    /// takes longer is killed with its process group and the command fails.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// The network: a file, or a name looked up in --conf-dir.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// The network configuration file (.conflist, or a single-plugin .conf, which is wrapped
    /// into a one-plugin list).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub conflist: Option<PathBuf>,

    /// The network name, looked up in --conf-dir as libcni's LoadConfList does.
    #[arg(long, short = 'n', value_name = "NAME")]
    pub network: Option<String>,
}

/// One attachment: container, namespace, interface and the runtime's arguments.
#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub net: NetArgs,

    /// Path of the container's network namespace (made absolute). Required for add and
    /// check unless cached; del falls back to the cached one.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// The container ID. Default: "cnirun-" + a hash of the absolute --netns path, so that
    /// the same namespace always gets the same ID (del, check then need only --netns).
    #[arg(long, value_name = "ID")]
    pub container_id: Option<String>,

    /// Interface name inside the container.
    #[arg(long, value_name = "NAME", env = "CNI_IFNAME", default_value = "eth0")]
    pub ifname: String,

    /// CNI_ARGS for the plugins, "K=V;K2=V2". del and check default to the cached ones.
    #[arg(long, value_name = "K=V;...", env = "CNI_ARGS")]
    pub cni_args: Option<String>,

    #[arg(
        long = "port-mapping",
        short = 'p',
        value_name = "MAPPING",
        help = "Port mapping capability (portMappings), repeatable: HOST:CONTAINER[/tcp|udp|sctp][@HOSTIP]"
    )]
    pub port_mappings: Vec<String>,

    /// Bandwidth capability: ingressRate=BITS_PER_S,ingressBurst=BITS,egressRate=..,egressBurst=..
    #[arg(long, value_name = "K=V,...")]
    pub bandwidth: Option<String>,

    /// Static IP capability (ips), repeatable: ADDR[/PREFIX].
    #[arg(long = "ip", value_name = "ADDR[/PREFIX]")]
    pub ips: Vec<String>,

    /// MAC address capability (mac).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,

    /// Raw capability args, a JSON object merged under the options above (which win on the
    /// same key). Only keys a plugin declares in "capabilities" reach it, as runtimeConfig.
    /// del and check default to the cached capability args when none are given.
    #[arg(long, value_name = "JSON", env = "CAP_ARGS")]
    pub capability_args: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("validity").required(true).args(["valid", "none_valid"])))]
pub struct GcArgs {
    #[command(flatten)]
    pub net: NetArgs,

    /// An attachment to keep, repeatable: CONTAINER_ID:IFNAME.
    #[arg(long = "valid-attachment", value_name = "CID:IFNAME", value_parser = parse_attachment)]
    pub valid: Vec<Attachment>,

    /// Declare that no attachment of the network is valid: every one is torn down. Required
    /// instead of --valid-attachment, so that a bare `cnirun gc` cannot cut off every pod.
    #[arg(long = "none-valid", conflicts_with = "valid")]
    pub none_valid: bool,
}

fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_attachment(s: &str) -> std::result::Result<Attachment, String> {
    match s.rsplit_once(':') {
        Some((cid, ifname)) if !cid.is_empty() && !ifname.is_empty() => Ok(Attachment {
            container_id: cid.to_string(),
            ifname: ifname.to_string(),
        }),
        _ => Err(format!("{s:?}: expected CONTAINER_ID:IFNAME")),
    }
}

/// The container ID derived from a namespace path: "cnirun-" + 16 hex digits of the 64-bit
/// FNV-1a hash of the path.
pub fn container_id_for(netns: &str) -> String {
    format!("cnirun-{:016x}", common::naming::fnv1a64(&[netns]))
}

impl NetArgs {
    pub fn load(&self) -> Result<ConfList> {
        match (&self.source.conflist, &self.source.network) {
            (Some(file), _) => ConfList::from_file(file),
            (None, Some(name)) => ConfList::load(&self.conf_dir, name),
            (None, None) => Err(Error::config("give --conflist FILE or --network NAME")),
        }
    }

    pub fn runner(&self) -> Runner {
        Runner {
            path: self
                .cni_path
                .split(':')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
            cache_dir: self.cache_dir.clone(),
            timeout: Some(self.timeout).filter(|t| !t.is_zero()),
        }
    }
}

fn absolute(p: &Path) -> Result<String> {
    std::path::absolute(p)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Error::io(format!("resolving {}", p.display()), e))
}

impl AttachArgs {
    fn cap_input(&self) -> CapArgsInput {
        CapArgsInput {
            port_mappings: self.port_mappings.clone(),
            bandwidth: self.bandwidth.clone(),
            ips: self.ips.clone(),
            mac: self.mac.clone(),
            raw: self.capability_args.clone(),
        }
    }

    /// The runtime arguments as given. `netns` is empty and `args`/`capability_args` are
    /// `None`-like when not given; see [`AttachArgs::fill_from_cache`].
    pub fn runtime_conf(&self) -> Result<RuntimeConf> {
        let netns = match &self.netns {
            Some(p) => absolute(p)?,
            None => String::new(),
        };
        let container_id = match (&self.container_id, netns.is_empty()) {
            (Some(id), _) => id.clone(),
            (None, false) => container_id_for(&netns),
            (None, true) => {
                return Err(Error::env(
                    "give --container-id or --netns (the ID is derived from the netns path)",
                    "",
                ));
            }
        };
        let args = match &self.cni_args {
            Some(s) => parse_cni_args(s)?,
            None => Vec::new(),
        };
        Ok(RuntimeConf {
            container_id,
            netns,
            ifname: self.ifname.clone(),
            args,
            capability_args: self.cap_input().build()?,
        })
    }

    /// For DEL and CHECK: what the command line left out (netns, CNI_ARGS, capability args)
    /// is taken from this attachment's cache entry, if there is one.
    pub fn fill_from_cache(&self, rt: &mut RuntimeConf, runner: &Runner, list: &ConfList) {
        let Ok(file) = runner.cache_file(list, rt) else {
            return;
        };
        let Ok(Some(entry)) = crate::cache::read(&file) else {
            return;
        };
        if self.netns.is_none() {
            rt.netns = entry.netns;
        }
        if self.cni_args.is_none() {
            rt.args = entry.cni_args;
        }
        if self.cap_input().is_empty() {
            rt.capability_args = entry.capability_args;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_full_add() {
        let cli = Cli::try_parse_from([
            "cnirun",
            "add",
            "--conflist",
            "x.conflist",
            "--netns",
            "/run/netns/a",
            "-p",
            "8080:80",
            "-p",
            "53:53/udp@127.0.0.1",
            "--bandwidth",
            "ingressRate=1,ingressBurst=2",
            "--ip",
            "10.0.0.2/24",
            "--mac",
            "00:11:22:33:44:55",
            "--cni-args",
            "A=1;B=2",
            "--timeout",
            "0.5",
            "--ifname",
            "net1",
            "--cni-path",
            "/a:/b",
        ])
        .unwrap();
        let Cmd::Add(a) = cli.command else { panic!() };
        let rt = a.runtime_conf().unwrap();
        assert_eq!(rt.netns, "/run/netns/a");
        assert_eq!(rt.container_id, container_id_for("/run/netns/a"));
        assert_eq!(rt.ifname, "net1");
        assert_eq!(
            rt.args,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(
            rt.capability_args["portMappings"].as_array().unwrap().len(),
            2
        );
        assert_eq!(rt.capability_args["bandwidth"]["ingressBurst"], 2);
        assert_eq!(a.net.runner().timeout, Some(Duration::from_millis(500)));
        assert_eq!(a.net.runner().path, vec!["/a", "/b"]);
    }

    #[test]
    fn network_source_is_exactly_one() {
        assert!(Cli::try_parse_from(["cnirun", "status"]).is_err());
        assert!(Cli::try_parse_from(["cnirun", "status", "-c", "f", "-n", "x"]).is_err());
        let cli = Cli::try_parse_from(["cnirun", "status", "-n", "x", "--timeout", "0"]).unwrap();
        let Cmd::Status(n) = cli.command else {
            panic!()
        };
        assert_eq!(n.runner().timeout, None);
    }

    #[test]
    fn container_id_needs_netns_or_flag() {
        let cli = Cli::try_parse_from(["cnirun", "del", "-n", "x"]).unwrap();
        let Cmd::Del(a) = cli.command else { panic!() };
        assert_eq!(a.runtime_conf().unwrap_err().code(), 4);
        let id = container_id_for("/run/netns/a");
        assert!(id.starts_with("cnirun-") && id.len() == 23);
        assert_ne!(id, container_id_for("/run/netns/b"));
    }

    #[test]
    fn valid_attachments() {
        let cli = Cli::try_parse_from([
            "cnirun",
            "gc",
            "-n",
            "x",
            "--valid-attachment",
            "c1:eth0",
            "--valid-attachment",
            "c2:net1",
        ])
        .unwrap();
        let Cmd::Gc(g) = cli.command else { panic!() };
        assert_eq!(g.valid.len(), 2);
        assert_eq!(g.valid[1].ifname, "net1");
        assert!(
            Cli::try_parse_from(["cnirun", "gc", "-n", "x", "--valid-attachment", "c1"]).is_err()
        );
        // A bare gc would tear the whole network down: it must be asked for explicitly.
        assert!(Cli::try_parse_from(["cnirun", "gc", "-n", "x"]).is_err());
        let cli = Cli::try_parse_from(["cnirun", "gc", "-n", "x", "--none-valid"]).unwrap();
        let Cmd::Gc(g) = cli.command else { panic!() };
        assert!(g.none_valid && g.valid.is_empty());
        assert!(
            Cli::try_parse_from([
                "cnirun",
                "gc",
                "-n",
                "x",
                "--none-valid",
                "--valid-attachment",
                "c:e"
            ])
            .is_err()
        );
    }
}
