//! Shared library of the suite: spec types and version conversion, the entrypoint that reads
//! the CNI environment, the error type, netlink, network namespaces, nftables and IPAM
//! delegation.

pub mod conntrack;
pub mod error;
pub mod exec;
pub mod ipam;
pub mod lock;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod skel;
pub mod spec;
pub mod sysctl;

pub use error::{Error, Result};
