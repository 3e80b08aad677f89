//! CNI spec types: versions, network configuration, results and their conversion.

pub mod config;
pub mod result;
pub mod version;

pub use config::{Attachment, Dns, IpamConf, NetConf, parse_cni_args};
pub use result::{CniResult, Interface, IpConfig, Route};
pub use version::Version;
