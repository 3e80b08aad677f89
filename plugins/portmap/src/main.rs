//! `portmap`: host ports to container ports (nftables DNAT).

fn main() {
    common::skel::run(&cni_portmap::Portmap)
}
