//! `loopback`: sets `lo` up in the container's network namespace.

fn main() {
    common::skel::run(&cni_loopback::Loopback)
}
