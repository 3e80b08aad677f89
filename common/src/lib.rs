//! Shared library of the suite: spec types and version conversion, the entrypoint that reads
//! the CNI environment, the error type, netlink, network namespaces, nftables and IPAM
//! delegation, and the logs and metrics every plugin gets from `skel` without code of its own.
//!
//! Logs and metrics (any plugin's config, or the environment, which wins):
//!
//! | key | environment | default | meaning |
//! | --- | --- | --- | --- |
//! | `logLevel` | `CNI_LOG_LEVEL` | `warn` (or `RUST_LOG` if a plain level) | `off`, `error`, `warn`, `info`, `debug`, `trace` |
//! | `logFile` | `CNI_LOG_FILE` | stderr | file the logfmt lines are appended to (0600) |
//! | `metricsFile` | `CNI_METRICS_FILE` | none | Prometheus text file updated per operation (0644) |
//!
//! See [`logging`] and [`metrics`]. Nothing is ever written to stdout but the CNI answer.

pub mod conntrack;
pub mod error;
pub mod exec;
pub mod gojson;
pub mod ipam;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod naming;
pub mod netlink;
pub mod netns;
pub(crate) mod nfnetlink;
pub mod nft;
pub mod skel;
pub mod spec;
pub mod sysctl;

pub use error::{Error, Result};
