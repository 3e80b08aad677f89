fn main() {
    common::skel::run(&cni_host_local::HostLocal)
}
