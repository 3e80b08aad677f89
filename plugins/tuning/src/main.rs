//! `tuning`: sysctls and link attributes of the container interface, restored on DEL.

fn main() {
    common::skel::run(&cni_tuning::Tuning)
}
