#!/bin/sh
# host-local ADD/DEL latency with 10, 1,000, 10,000 and 50,000 existing allocations, for our
# release binary and the reference one (/usr/lib/cni/host-local, or $REFERENCE). Prints a table;
# never fails on the figures. Usage: bench/host-local.sh [RUNS]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --workspace --locked --quiet
cargo build --release --locked --quiet -p cni-host-local --example bench
exec target/release/examples/bench "$PWD/target/release/host-local" \
    "${REFERENCE:-/usr/lib/cni/host-local}" "${1:-21}"
