//! Shared by the interop tests: a network run by libcni's `cnitool` inside a host namespace
//! made for the test, with a plugin directory that mixes this project's binaries and the
//! reference ones, and the checks that a network left nothing behind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use testkit::{LibcniCache, Run, TestNs, run_args_in};

/// Where Debian's containernetworking-plugins (the reference, 1.1.1) install their binaries.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The cnitool to use when these tests can run here. Without root they are skipped (as every
/// test of the workspace is). Without cnitool or the reference plugins they fail under CI
/// (`CI=true`) and are skipped with a message elsewhere;
/// `scripts/install-deps.sh --interop` installs both.
pub fn ready() -> Option<PathBuf> {
    if !testkit::have_root() {
        return None;
    }
    let cnitool = ["/usr/local/bin/cnitool", "/usr/bin/cnitool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let missing_ref: Vec<&str> = ["bridge", "host-local", "portmap"]
        .into_iter()
        .filter(|p| !Path::new(REFERENCE_DIR).join(p).is_file())
        .collect();
    let why = match (&cnitool, missing_ref.is_empty()) {
        (Some(_), true) => return cnitool,
        (None, _) => "libcni's cnitool is not installed".to_string(),
        (Some(_), false) => {
            format!("the reference plugins {missing_ref:?} are missing in {REFERENCE_DIR}")
        }
    };
    testkit::cannot_run(&why);
    None
}

/// Which implementation of a plugin a chain uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Reference,
}

impl Side {
    pub fn dir(self) -> PathBuf {
        match self {
            Side::Ours => testkit::bin_dir(),
            Side::Reference => PathBuf::from(REFERENCE_DIR),
        }
    }
}

/// The container ID cnitool derives from the netns path: `cnitool-` and the first 10 bytes of
/// its SHA-512, in hex.
pub fn container_id(ns: &TestNs) -> String {
    let digest = Sha512::digest(ns.path().as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
}

pub use testkit::result_addresses as addresses;

/// One network of one test: its host namespace, its conflist in a NETCONFPATH directory of
/// its own, its CNI_PATH directory of symlinks (ours and the reference's mixed), and its
/// state directories (IPAM dataDir, tuning dataDir), all in a temporary directory.
pub struct Network {
    pub host: TestNs,
    pub tmp: TempDir,
    pub name: String,
    pub list: Value,
    cnitool: PathBuf,
    _cache: LibcniCache,
}

impl Network {
    /// `plugins` is the conflist's plugin list; `sides` says which binary each plugin type
    /// (including the IPAM type) resolves to on CNI_PATH.
    pub fn new(
        cnitool: &Path,
        prefix: &str,
        version: &str,
        plugins: Value,
        sides: &[(&str, Side)],
    ) -> Network {
        Network::in_host(TestNs::new(), cnitool, prefix, version, plugins, sides)
    }

    /// [`Network::new`] in a given host namespace.
    pub fn in_host(
        host: TestNs,
        cnitool: &Path,
        prefix: &str,
        version: &str,
        plugins: Value,
        sides: &[(&str, Side)],
    ) -> Network {
        let tmp = tempfile::tempdir().unwrap();
        let name = testkit::unique_name(prefix);
        let _cache = LibcniCache(name.clone());
        for d in ["net.d", "bin", "data", "tuning"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let mut list = json!({"cniVersion": version, "name": name, "plugins": plugins});
        for p in list["plugins"].as_array_mut().unwrap() {
            if p.get("ipam").is_some_and(|i| i.get("type").is_some()) {
                p["ipam"]["dataDir"] = json!(tmp.path().join("data"));
            }
            if p["type"] == "tuning" {
                p["dataDir"] = json!(tmp.path().join("tuning"));
            }
        }
        std::fs::write(
            tmp.path().join("net.d").join(format!("{name}.conflist")),
            serde_json::to_string_pretty(&list).unwrap(),
        )
        .unwrap();
        for (plugin, side) in sides {
            let target = side.dir().join(plugin);
            assert!(target.is_file(), "{} is missing", target.display());
            std::os::unix::fs::symlink(&target, tmp.path().join("bin").join(plugin)).unwrap();
        }
        Network {
            host,
            tmp,
            name,
            list,
            cnitool: cnitool.to_path_buf(),
            _cache,
        }
    }

    /// The CNI_PATH directory.
    pub fn bin_dir(&self) -> PathBuf {
        self.tmp.path().join("bin")
    }

    /// Points a plugin type at the other implementation (a live swap of the binary).
    pub fn swap(&self, plugin: &str, side: Side) {
        let link = self.bin_dir().join(plugin);
        let staged = self.bin_dir().join(format!(".{plugin}.new"));
        std::os::unix::fs::symlink(side.dir().join(plugin), &staged).unwrap();
        std::fs::rename(staged, link).unwrap();
    }

    /// host-local's directory for this network.
    pub fn alloc_dir(&self) -> PathBuf {
        self.tmp.path().join("data").join(&self.name)
    }

    /// Allocation files (named by address) and their contents.
    pub fn allocations(&self) -> BTreeMap<IpAddr, String> {
        std::fs::read_dir(self.alloc_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let ip = e.file_name().to_string_lossy().parse::<IpAddr>().ok()?;
                        Some((ip, std::fs::read_to_string(e.path()).unwrap()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The content of `last_reserved_ip.<set>` (the round-robin position), if any.
    pub fn last_reserved(&self, set: usize) -> Option<String> {
        std::fs::read_to_string(self.alloc_dir().join(format!("last_reserved_ip.{set}"))).ok()
    }

    /// `cnitool VERB <net> <ctr netns>` inside the host namespace, with CAP_ARGS if given.
    pub fn cnitool(&self, verb: &str, ctr: &TestNs, cap_args: Option<&Value>) -> Run {
        self.cnitool_with(verb, ctr, cap_args, None)
    }

    /// [`Network::cnitool`] with CNI_ARGS.
    pub fn cnitool_with(
        &self,
        verb: &str,
        ctr: &TestNs,
        cap_args: Option<&Value>,
        cni_args: Option<&str>,
    ) -> Run {
        let netconf = self.tmp.path().join("net.d");
        let bin = self.bin_dir();
        let caps = cap_args.map(Value::to_string);
        let mut env = vec![
            ("NETCONFPATH", netconf.to_str().unwrap()),
            ("CNI_PATH", bin.to_str().unwrap()),
        ];
        if let Some(c) = &caps {
            env.push(("CAP_ARGS", c.as_str()));
        }
        if let Some(a) = cni_args {
            env.push(("CNI_ARGS", a));
        }
        run_args_in(
            &self.host,
            &self.cnitool,
            &[verb, &self.name, ctr.path()],
            &env,
            "",
        )
    }

    /// ADD through cnitool; panics with its output unless it succeeded. Returns the result.
    pub fn add(&self, ctr: &TestNs, cap_args: Option<&Value>) -> Value {
        self.add_with(ctr, cap_args, None)
    }

    /// [`Network::add`] with CNI_ARGS.
    pub fn add_with(
        &self,
        ctr: &TestNs,
        cap_args: Option<&Value>,
        cni_args: Option<&str>,
    ) -> Value {
        let r = self.cnitool_with("add", ctr, cap_args, cni_args);
        assert_eq!(
            r.code, 0,
            "{}: cnitool add: {} {}",
            self.name, r.stdout, r.stderr
        );
        r.json()
    }

    /// CHECK through cnitool; panics with its output unless it succeeded.
    pub fn check(&self, ctr: &TestNs, cap_args: Option<&Value>) {
        let r = self.cnitool("check", ctr, cap_args);
        assert_eq!(
            r.code, 0,
            "{}: cnitool check: {} {}",
            self.name, r.stdout, r.stderr
        );
    }

    /// DEL through cnitool; panics with its output unless it succeeded.
    pub fn del(&self, ctr: &TestNs, cap_args: Option<&Value>) {
        self.del_with(ctr, cap_args, None)
    }

    /// [`Network::del`] with CNI_ARGS.
    pub fn del_with(&self, ctr: &TestNs, cap_args: Option<&Value>, cni_args: Option<&str>) {
        let r = self.cnitool_with("del", ctr, cap_args, cni_args);
        assert_eq!(
            r.code, 0,
            "{}: cnitool del: {} {}",
            self.name, r.stdout, r.stderr
        );
    }

    /// The host namespace's `nft -j list ruleset` and `iptables-save` + `ip6tables-save`.
    pub fn rules(&self) -> (String, String) {
        let ruleset = self.host.nft_ruleset().to_string();
        let mut tables = String::new();
        for save in ["iptables-save", "ip6tables-save"] {
            let out = self.host.exec(save, &[]);
            assert!(out.status.success(), "{save}: {out:?}");
            tables.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        (ruleset, tables)
    }

    /// Everything the attachments of `ctrs` (with addresses `ips`) made is gone: no veth or
    /// ifb in the host namespace, no interface but `lo` in the containers, no nftables set or
    /// map element and no iptables rule naming a container ID or address (tables and the
    /// reference's chains may remain), no allocation file, no tuning backup, no libcni cache
    /// file.
    pub fn assert_nothing_left(&self, ctrs: &[&TestNs], ips: &[IpAddr]) {
        let links = self.host.ip_json(&["-d", "link", "show"]);
        let kinds: Vec<String> = links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| {
                matches!(
                    l["linkinfo"]["info_kind"].as_str(),
                    Some("veth") | Some("ifb")
                )
            })
            .map(|l| l["ifname"].as_str().unwrap_or("?").to_string())
            .collect();
        assert!(kinds.is_empty(), "{}: links left: {kinds:?}", self.name);
        for c in ctrs {
            let names: Vec<String> = c
                .ip_json(&["link", "show"])
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["ifname"].as_str().unwrap().to_string())
                .filter(|n| n != "lo")
                .collect();
            assert!(names.is_empty(), "{}: container keeps {names:?}", self.name);
        }
        let (ruleset, tables) = self.rules();
        for c in ctrs {
            let cid = container_id(c);
            assert!(
                !ruleset.contains(&cid),
                "{}: nft keeps {cid}: {ruleset}",
                self.name
            );
            assert!(
                !tables.contains(&cid),
                "{}: iptables keeps {cid}: {tables}",
                self.name
            );
        }
        for ip in ips {
            let quoted = format!("\"{ip}\"");
            assert!(
                !ruleset.contains(&quoted),
                "{}: nft keeps {ip}: {ruleset}",
                self.name
            );
            let re = regex::Regex::new(&format!(
                r"(^|[^0-9a-f:.]){}([^0-9a-f:.]|$)",
                regex::escape(&ip.to_string())
            ))
            .unwrap();
            assert!(
                !re.is_match(&tables),
                "{}: iptables keeps {ip}: {tables}",
                self.name
            );
        }
        let allocs = self.allocations();
        assert!(
            allocs.is_empty(),
            "{}: allocations left: {allocs:?}",
            self.name
        );
        let backups: Vec<_> = std::fs::read_dir(self.tmp.path().join("tuning"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            backups.is_empty(),
            "{}: tuning backups left: {backups:?}",
            self.name
        );
        let cached = LibcniCache::files(&self.name);
        assert!(
            cached.is_empty(),
            "{}: libcni cache left: {cached:?}",
            self.name
        );
    }
}
