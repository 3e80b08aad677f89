//! Sysctl keys: resolving a configured key to a path under /proc/sys/net, the operator's
//! allow-list, and reading and writing values (inside the container's namespace: the
//! functions that touch /proc must run in `NetNs::run`).

use common::error::{Error, Result};
use regex::Regex;
use std::io::ErrorKind;
use std::path::Path;

/// The operator's allow-list, as in the reference.
pub const DEFAULT_ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";

/// Environment variable naming another allow-list file (tests and operators; the network
/// config cannot move it, since it is what restricts the network config).
pub const ALLOWLIST_ENV: &str = "CNIRS_TUNING_ALLOWLIST";

const NET_ROOT: &str = "/proc/sys/net/";

/// One sysctl to set: the key as configured, its resolved path, the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub key: String,
    pub path: String,
    pub value: String,
}

/// Resolves a dotted (`net.ipv4.conf.IFNAME.arp_filter`) or slashed
/// (`net/ipv4/conf/IFNAME/arp_filter`) key, checks it against the allow-list, and checks
/// that it names something under /proc/sys/net. Code 7 otherwise; nothing is touched.
///
/// A key containing `/` is slashed and its dots are literal (so `net/ipv4/conf/eth0.10/...`
/// works), as sysctl(8) reads keys; otherwise every dot separates. The first component
/// `IFNAME` becomes the interface name (after splitting, so a name with dots stays whole).
/// Components `.` and `..` are refused rather than resolved.
pub fn resolve(key: &str, value: &str, ifname: &str, allowlist: &Allowlist) -> Result<Sysctl> {
    let bad = |why: &str| {
        Err(Error::config(format!(
            "invalid net sysctl key {key:?}: {why}"
        )))
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("it contains whitespace or control characters");
    }
    if value.contains(['\0', '\n']) {
        return Err(Error::config(format!(
            "invalid value for sysctl {key:?}: it contains a NUL or a newline"
        )));
    }
    let sep = if key.contains('/') { '/' } else { '.' };
    let mut parts: Vec<&str> = key.split(sep).filter(|p| !p.is_empty()).collect();
    if let Some(p) = parts.iter_mut().find(|p| **p == "IFNAME") {
        *p = ifname;
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return bad("it contains a . or .. component");
    }
    if parts.first() != Some(&"net") || parts.len() < 2 {
        return bad("only sysctls under /proc/sys/net may be set");
    }
    allowlist.check(key)?;
    Ok(Sysctl {
        key: key.to_string(),
        path: common::sysctl::path_from_parts(&parts),
        value: value.to_string(),
    })
}

/// The allow-list: regular expressions, one a line, each matched unanchored against the key
/// as configured. No file means every net sysctl is allowed.
#[derive(Debug, Clone)]
pub struct Allowlist {
    source: String,
    patterns: Option<Vec<Regex>>,
}

impl Allowlist {
    pub fn allow_all() -> Allowlist {
        Allowlist {
            source: String::new(),
            patterns: None,
        }
    }

    /// The file named by `CNIRS_TUNING_ALLOWLIST`, else `/etc/cni/tuning/allowlist.conf`.
    pub fn load() -> Result<Allowlist> {
        let path = std::env::var(ALLOWLIST_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_ALLOWLIST.to_string());
        Allowlist::from_file(Path::new(&path))
    }

    pub fn from_file(path: &Path) -> Result<Allowlist> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Allowlist::allow_all()),
            Err(e) => {
                return Err(Error::io(
                    format!("reading the sysctl allow-list {}", path.display()),
                    e,
                ));
            }
        };
        Allowlist::parse(&text, &path.display().to_string())
    }

    /// Lines are trimmed; empty lines and `#` comments are skipped (a comment as a regex
    /// could match no key anyway). An invalid expression is a config error (code 7).
    pub fn parse(text: &str, source: &str) -> Result<Allowlist> {
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let re = Regex::new(line).map_err(|e| {
                Error::config(format!(
                    "sysctl allow-list {source} line {}: invalid regular expression: {e}",
                    n + 1
                ))
            })?;
            patterns.push(re);
        }
        Ok(Allowlist {
            source: source.to_string(),
            patterns: Some(patterns),
        })
    }

    fn check(&self, key: &str) -> Result<()> {
        let Some(patterns) = &self.patterns else {
            return Ok(());
        };
        if patterns.iter().any(|re| re.is_match(key)) {
            return Ok(());
        }
        Err(Error::config(format!(
            "sysctl {key} is not allowed: it matches no line of the allow-list {}",
            self.source
        )))
    }
}

/// Checks that `path` is a sysctl file under /proc/sys/net in this thread's namespace.
/// `Ok(false)` when it does not exist; code 7 when it resolves elsewhere or is a directory.
pub fn exists(s: &Sysctl) -> Result<bool> {
    let real = match std::fs::canonicalize(&s.path) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("resolving {}", s.path), e)),
    };
    if !real.starts_with(NET_ROOT) {
        return Err(Error::config(format!(
            "invalid net sysctl key {:?}: {} resolves outside {NET_ROOT}",
            s.key, s.path
        )));
    }
    if !real.is_file() {
        return Err(Error::config(format!(
            "invalid net sysctl key {:?}: {} is not a sysctl",
            s.key, s.path
        )));
    }
    Ok(true)
}

/// The current value (trimmed); code 7 when the sysctl does not exist here. In the netns.
pub fn read(s: &Sysctl) -> Result<String> {
    if !exists(s)? {
        return Err(Error::config(format!(
            "unknown sysctl {:?}: {} does not exist in the container's network namespace",
            s.key, s.path
        )));
    }
    read_path(&s.path)
}

pub use common::sysctl::read_path;

/// Writes a value; a value the kernel refuses (EINVAL) is a config error. In the netns.
pub fn write_path(key: &str, path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            Error::config(format!(
                "sysctl {key}: the kernel refused the value {value:?}"
            ))
        } else {
            Error::io(format!("writing {value:?} to {path}"), e)
        }
    })
}

/// Sysctl values compare by their words: the kernel prints multi-value sysctls with tabs
/// (`tcp_rmem`), a config usually with spaces.
pub fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(key: &str, ifname: &str) -> Result<String> {
        resolve(key, "1", ifname, &Allowlist::allow_all()).map(|s| s.path)
    }

    #[test]
    fn key_forms() {
        assert_eq!(
            path("net.ipv4.conf.IFNAME.arp_filter", "eth0").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0/arp_filter"
        );
        assert_eq!(
            path("net/ipv4/conf/IFNAME/arp_filter", "eth0.10").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.10/arp_filter"
        );
        assert_eq!(
            path("net.ipv4.conf.IFNAME.arp_filter", "eth0.10").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.10/arp_filter"
        );
        assert_eq!(
            path("net/ipv4/conf/eth0.10/rp_filter", "x").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.10/rp_filter"
        );
        assert_eq!(
            path("net.core..somaxconn", "x").unwrap(),
            "/proc/sys/net/core/somaxconn"
        );
        // Only the first IFNAME is replaced, as in the reference.
        assert_eq!(
            path("net.IFNAME.IFNAME", "e").unwrap(),
            "/proc/sys/net/e/IFNAME"
        );
    }

    #[test]
    fn forbidden_keys() {
        for key in [
            "kernel.hostname",
            "kernel/hostname",
            "net",
            "network.x",
            "/proc/sys/net/core/somaxconn",
            "net/../kernel/hostname",
            "net/./core/somaxconn",
            "net/core/../../kernel/hostname",
            "net.core.somaxconn ",
            "",
            "net\0core",
        ] {
            let e = path(key, "eth0").unwrap_err();
            assert_eq!(e.code(), 7, "{key:?}: {e}");
        }
        let e = resolve("net.core.x", "1\n2", "eth0", &Allowlist::allow_all()).unwrap_err();
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn allowlist_is_unanchored() {
        let a = Allowlist::parse(
            "# comment\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.  \nsomaxconn\n",
            "t",
        )
        .unwrap();
        let ok = |k: &str| resolve(k, "1", "eth0", &a).is_ok();
        assert!(ok("net.ipv4.conf.IFNAME.arp_filter"));
        assert!(ok("net.core.somaxconn"));
        assert!(!ok("net.ipv4.ip_forward"));
        assert!(!ok("net.ipv4.conf.eth0.arp_filter"));
        let empty = Allowlist::parse("", "t").unwrap();
        assert_eq!(
            resolve("net.core.somaxconn", "1", "e", &empty)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(Allowlist::parse("(", "t").unwrap_err().code(), 7);
        let missing = Allowlist::from_file(Path::new("/nonexistent/allowlist.conf")).unwrap();
        assert!(missing.patterns.is_none());
    }

    #[test]
    fn values_compare_by_words() {
        assert!(same_value("4096\t16384\t4194304", "4096 16384  4194304"));
        assert!(!same_value("1", "10"));
    }
}
