//! `bridge`: a Linux bridge and a veth pair into the container.

fn main() {
    common::skel::run(&cni_bridge::Bridge)
}
