//! CRI tests only (see `tests/`): Debian's containerd 1.6, started by the test in a network
//! namespace of its own, driven over its gRPC socket as a kubelet drives it, with this
//! project's plugins and with the reference plugins as its CNI. Nothing here is built into a
//! plugin.
