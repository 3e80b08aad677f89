//! Reading and writing sysctls under /proc/sys. Values under /proc/sys/net belong to the
//! network namespace of the calling thread: run these inside [`crate::netns::NetNs::run`]
//! to reach a container's.

use crate::error::{IoContext, Result};

fn path_of(key: &str) -> String {
    format!(
        "/proc/sys/{}",
        key.trim_start_matches('/').replace('.', "/")
    )
}

/// Path form of a sysctl key whose components may contain dots (e.g. an interface name):
/// `sysctl_path(&["net", "ipv4", "conf", "eth0.10", "arp_notify"])`.
pub fn path_from_parts(parts: &[&str]) -> String {
    format!("/proc/sys/{}", parts.join("/"))
}

/// Reads a sysctl (kernel state) by full path, trimmed.
pub fn read_path(path: &str) -> Result<String> {
    let v = std::fs::read_to_string(path).with_io_context(|| format!("reading {path}"))?;
    Ok(v.trim().to_string())
}

/// Writes a sysctl (kernel state) by full path, skipping the write if it already holds `value`.
pub fn write_path(path: &str, value: &str) -> Result<()> {
    if read_path(path).is_ok_and(|cur| cur == value) {
        return Ok(());
    }
    std::fs::write(path, value).with_io_context(|| format!("writing {value:?} to {path}"))
}

/// Reads a sysctl by dotted or slashed key (`net.ipv4.ip_forward`).
pub fn read(key: &str) -> Result<String> {
    read_path(&path_of(key))
}

/// Writes a sysctl by dotted or slashed key.
pub fn write(key: &str, value: &str) -> Result<()> {
    write_path(&path_of(key), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_forms() {
        assert_eq!(
            path_of("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            path_of("net/ipv4/ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            path_from_parts(&["net", "ipv4", "conf", "br0.10", "forwarding"]),
            "/proc/sys/net/ipv4/conf/br0.10/forwarding"
        );
        assert!(!read("kernel.ostype").unwrap().is_empty());
    }
}
