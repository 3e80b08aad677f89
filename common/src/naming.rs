//! Short, stable names derived from long ones: a hash that stays the same across builds,
//! versions and platforms (std's hasher does not), and cutting a string on a character
//! boundary. Used for nftables comments and table names, host-local's index buckets and
//! cnirun's container IDs: changing either function renames what is on disk and in the
//! kernel, so never change them. Also the reference plugins' SHA-512 names, so that objects
//! either implementation made are found by the other.

use sha2::{Digest, Sha512};
use std::fmt::Write;

/// 64-bit FNV-1a of `parts` (not for security). Parts are separated by a byte no valid name
/// contains, so `["a", "bc"]` and `["ab", "c"]` differ; one part is plain FNV-1a.
pub fn fnv1a64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The first `len` hex digits of SHA-512(`s`) (all 128 when `len` is larger).
pub fn sha512_hex(s: &str, len: usize) -> String {
    let mut hex = String::with_capacity(len.min(128));
    for b in Sha512::digest(s.as_bytes()) {
        if hex.len() >= len {
            break;
        }
        let _ = write!(hex, "{b:02x}");
    }
    hex.truncate(len);
    hex
}

/// The reference plugins' name of an attachment's object: `prefix` and the hex SHA-512 of
/// network name + container ID, `len` bytes in all (bandwidth's ifb `bwp…` has 15, the
/// iptables chains `CNI-…`, `CNI-DN-…` have 28).
pub fn reference_name(prefix: &str, network: &str, container_id: &str, len: usize) -> String {
    let hash = sha512_hex(
        &format!("{network}{container_id}"),
        len.saturating_sub(prefix.len()),
    );
    format!("{prefix}{hash}")
}

/// The longest prefix of `s` of at most `max` bytes, cut on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        // FNV-1a test vectors; one part is the plain hash.
        assert_eq!(fnv1a64(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&["foobar"]), 0x8594_4171_f739_67e8);
        assert_ne!(fnv1a64(&["a", "bc"]), fnv1a64(&["ab", "c"]));
    }

    #[test]
    fn reference_names() {
        // sha512("") starts cf83e135...; "mynet" + "abc123" as the reference hashes it.
        assert_eq!(sha512_hex("", 8), "cf83e135");
        assert_eq!(sha512_hex("", 500).len(), 128);
        let chain = reference_name("CNI-", "mynet", "abc123", 28);
        assert_eq!(chain.len(), 28);
        assert_eq!(&chain[4..], &sha512_hex("mynetabc123", 24));
        assert_eq!(reference_name("bwp", "mynet", "abc123", 15).len(), 15);
    }

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
