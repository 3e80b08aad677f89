//! Placeholder until the nftables rules land (same API).
use common::error::{Error, Result};
use common::spec::Attachment;
use ipnetwork::IpNetwork;

#[derive(Debug, Clone)]
pub struct SpoofCheck {
    pub host_veth: String,
    pub mac: String,
}

#[derive(Debug, Clone)]
pub struct AttachmentRules {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub masq: Vec<IpNetwork>,
    pub spoof: Option<SpoofCheck>,
}

pub fn add_rules(_r: &AttachmentRules) -> Result<()> {
    Err(Error::internal("nft rules not implemented yet"))
}
pub fn del_rules(_n: &str, _c: &str, _i: &str, _k: Option<&AttachmentRules>) -> Result<()> {
    Ok(())
}
pub fn check_rules(_r: &AttachmentRules) -> Result<()> {
    Ok(())
}
pub fn gc_rules(_n: &str, _v: &[Attachment]) -> Result<()> {
    Ok(())
}
