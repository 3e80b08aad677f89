//! nftables through the `nft` binary's JSON interface: one transaction per call.
