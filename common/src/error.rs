//! The one error type of the suite, and its mapping to CNI error codes.
//!
//! Every failure a runtime can see goes through [`Error`]; [`Error::code`] gives the CNI code
//! (spec section "Error"), [`Error::to_json`] the object printed on stdout.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;

/// CNI error codes (spec 1.1.0, plus the Go library's 8 and 999).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    pub const INTERNAL: u32 = 999;
}

/// The CNI error object as it travels on stdout (and as a delegated plugin printed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// Every error a plugin can return.
#[derive(Debug)]
pub enum Error {
    /// 1: the config's cniVersion is not one this plugin speaks, or the verb needs a newer one.
    IncompatibleVersion { msg: String, details: String },
    /// 2: a field the plugin cannot honour.
    UnsupportedField(String),
    /// 3: the container is unknown or gone; the runtime needs no DEL.
    UnknownContainer(String),
    /// 4: a CNI_* variable is missing or malformed.
    InvalidEnvironment { msg: String, details: String },
    /// 5: a file or device operation failed.
    Io { context: String, source: io::Error },
    /// 6: stdin or a result could not be decoded.
    Decode(String),
    /// 7: the network configuration is invalid.
    InvalidConfig(String),
    /// 8: CNI_NETNS is not a usable network namespace.
    InvalidNetns(String),
    /// 11: transient; the runtime should try again later (e.g. a lock wait timed out).
    TryAgainLater(String),
    /// 50: STATUS: the plugin cannot serve ADD now.
    NotAvailable(String),
    /// A netlink request failed; `errno` is the kernel's (positive) errno.
    Netlink { op: String, errno: i32, msg: String },
    /// An `nft` invocation failed.
    Nft(String),
    /// A delegated plugin (IPAM) failed; its error object is passed on unchanged.
    Delegated(ErrorJson),
    /// 999: anything else (the reference plugins' code for a plain error).
    Internal(String),
    /// Another error with a sentence of context in front of it.
    Context { context: String, source: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::InvalidConfig(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn env(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::InvalidEnvironment {
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn version(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::IncompatibleVersion {
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A netlink failure from a negative or positive errno value.
    pub fn netlink(op: impl Into<String>, errno: i32) -> Self {
        let errno = errno.abs();
        Error::Netlink {
            op: op.into(),
            errno,
            msg: io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// Adds a sentence of context in front of this error, keeping its code.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The innermost error (below every [`Error::Context`]).
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }

    /// The kernel errno of a netlink or I/O failure, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self.root() {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the failure means "no such object" (ENOENT, ENODEV, ESRCH, ENXIO).
    pub fn is_not_found(&self) -> bool {
        if let Error::Io { source, .. } = self.root() {
            if source.kind() == io::ErrorKind::NotFound {
                return true;
            }
        }
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::ENXIO)
        )
    }

    /// True when the kernel said the object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Error::UnsupportedField(_) => code::UNSUPPORTED_FIELD,
            Error::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
            Error::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            Error::Io { .. } => code::IO,
            Error::Decode(_) => code::DECODE,
            Error::InvalidConfig(_) => code::INVALID_CONFIG,
            Error::InvalidNetns(_) => code::INVALID_NETNS,
            Error::TryAgainLater(_) => code::TRY_AGAIN_LATER,
            Error::NotAvailable(_) => code::NOT_AVAILABLE,
            Error::Delegated(e) => e.code,
            Error::Netlink { .. } | Error::Nft(_) | Error::Internal(_) => code::INTERNAL,
            Error::Context { source, .. } => source.code(),
        }
    }

    /// The `details` field of the error object.
    fn details(&self) -> String {
        match self {
            Error::IncompatibleVersion { details, .. }
            | Error::InvalidEnvironment { details, .. } => details.clone(),
            Error::Delegated(e) => e.details.clone(),
            Error::Context { source, .. } => source.details(),
            _ => String::new(),
        }
    }

    /// The error object for stdout, in the given cniVersion.
    pub fn to_json(&self, cni_version: &str) -> ErrorJson {
        ErrorJson {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::IncompatibleVersion { msg, .. } | Error::InvalidEnvironment { msg, .. } => {
                f.write_str(msg)
            }
            Error::UnsupportedField(m)
            | Error::UnknownContainer(m)
            | Error::Decode(m)
            | Error::InvalidConfig(m)
            | Error::InvalidNetns(m)
            | Error::TryAgainLater(m)
            | Error::NotAvailable(m)
            | Error::Nft(m)
            | Error::Internal(m) => f.write_str(m),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Netlink { op, msg, .. } => write!(f, "{op}: {msg}"),
            Error::Delegated(e) => f.write_str(&e.msg),
            Error::Context { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Decode(e.to_string())
    }
}

/// Several errors as one (teardown goes on past failures and reports them together): the
/// shared code if they all have one, else 999; the messages joined with "; ".
pub fn join(mut errors: Vec<Error>) -> Result<()> {
    if errors.len() <= 1 {
        return errors.pop().map_or(Ok(()), Err);
    }
    let first = errors.first().map(Error::code).unwrap_or(code::INTERNAL);
    let shared = if errors.iter().all(|e| e.code() == first) {
        first
    } else {
        code::INTERNAL
    };
    let msg = errors
        .iter()
        .map(Error::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::Delegated(ErrorJson {
        cni_version: String::new(),
        code: shared,
        msg,
        details: String::new(),
    }))
}

/// `.context("...")` on any `Result<_, Error>` (and on io results via [`IoContext`]).
pub trait ResultExt<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

/// Turns an `io::Result` into a code-5 error with a sentence saying what was being done.
pub trait IoContext<T> {
    fn io_context(self, context: impl Into<String>) -> Result<T>;
    fn with_io_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::io(context, e))
    }
    fn with_io_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Error::config("x").code(), 7);
        assert_eq!(Error::env("x", "").code(), 4);
        assert_eq!(Error::version("x", "").code(), 1);
        assert_eq!(Error::Decode("x".into()).code(), 6);
        assert_eq!(Error::TryAgainLater("x".into()).code(), 11);
        assert_eq!(Error::NotAvailable("x".into()).code(), 50);
        assert_eq!(Error::netlink("add link", -libc::EEXIST).code(), 999);
        assert_eq!(
            Error::io("x", io::Error::from_raw_os_error(libc::EACCES)).code(),
            5
        );
    }

    #[test]
    fn context_keeps_code_and_errno() {
        let e = Error::netlink("create veth", -libc::EEXIST).context("setting up eth0");
        assert_eq!(e.code(), 999);
        assert!(e.is_exists());
        assert_eq!(
            e.to_string(),
            "setting up eth0: create veth: File exists (os error 17)"
        );
        let nf = Error::netlink("get link", libc::ENODEV).context("x");
        assert!(nf.is_not_found());
    }

    #[test]
    fn joined_errors_keep_a_shared_code() {
        assert!(join(vec![]).is_ok());
        assert_eq!(join(vec![Error::config("a")]).unwrap_err().to_string(), "a");
        let same = join(vec![Error::config("a"), Error::config("b")]).unwrap_err();
        assert_eq!((same.code(), same.to_string()), (7, "a; b".to_string()));
        let mixed = join(vec![Error::config("a"), Error::internal("b")]).unwrap_err();
        assert_eq!(mixed.code(), 999);
    }

    #[test]
    fn delegated_error_passes_through() {
        let inner = ErrorJson {
            cni_version: "1.0.0".into(),
            code: 11,
            msg: "busy".into(),
            details: "lock".into(),
        };
        let e = Error::Delegated(inner);
        let j = e.to_json("0.4.0");
        assert_eq!(
            (j.code, j.msg.as_str(), j.details.as_str()),
            (11, "busy", "lock")
        );
        assert_eq!(
            serde_json::to_value(&j).unwrap(),
            serde_json::json!({"cniVersion":"0.4.0","code":11,"msg":"busy","details":"lock"})
        );
    }
}
