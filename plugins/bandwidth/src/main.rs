//! `bandwidth`: traffic shaping of a veth attachment with tbf (ingress) and an ifb (egress).

fn main() {
    common::skel::run(&cni_bandwidth::Bandwidth)
}
