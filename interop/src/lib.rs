//! Interoperability tests only (see `tests/`): this project's plugins and the reference Go
//! plugins (Debian's containernetworking-plugins under /usr/lib/cni) mixed in one chain, run
//! by libcni's `cnitool`. Nothing here is built into a plugin.
