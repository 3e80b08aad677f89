//! CNI spec versions and the verbs each one allows.

use crate::error::{Error, Result};
use std::fmt;

/// A CNI spec version this suite speaks (0.1.0 to 1.1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Every supported version, oldest first (Go's `version.All`).
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// The newest version: what VERSION reports as `cniVersion`.
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a version string; an empty one means 0.1.0, as in libcni.
    pub fn parse(s: &str) -> Result<Version> {
        if s.is_empty() {
            return Ok(Version::V0_1_0);
        }
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                Error::version(
                    "incompatible CNI versions",
                    format!(
                        "config is \"{s}\", plugin supports [{}]",
                        Version::ALL
                            .map(|v| format!("\"{}\"", v.as_str()))
                            .join(" ")
                    ),
                )
            })
    }

    /// Results carry interfaces and `ips[]` (and plugins can be chained) from 0.3.0.
    pub fn has_chaining(self) -> bool {
        self >= Version::V0_3_0
    }

    /// CHECK exists from 0.4.0, and DEL gets prevResult from then on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse("").unwrap(), Version::V0_1_0);
        assert_eq!(Version::parse("0.3.1").unwrap(), Version::V0_3_1);
        assert!(Version::parse("0.4.0").unwrap().has_check());
        assert!(!Version::parse("0.3.1").unwrap().has_check());
        assert!(Version::parse("1.1.0").unwrap().has_gc_and_status());
        let e = Version::parse("2.0.0").unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_json("").details.contains("\"1.1.0\""));
        assert!(Version::parse("1.0").is_err());
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()).unwrap(), v);
        }
    }
}
