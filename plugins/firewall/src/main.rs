//! `firewall`: lets forwarded traffic reach and leave container addresses (nftables).

fn main() {
    common::skel::run(&cni_firewall::Firewall)
}
