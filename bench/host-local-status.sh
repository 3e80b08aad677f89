#!/bin/sh
# host-local STATUS latency (median, p95) with 10 and 10,000 existing allocations, in a free
# pool and in a full one, for our release binary (and any other host-local given as
# arguments, e.g. an older build). Prints a table; never fails on the figures.
# Usage: bench/host-local-status.sh [OTHER_BINARY ...]   (BENCH_RUNS=N calls per row)
set -eu
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p cni-host-local --bin host-local --example status
exec target/release/examples/status "$PWD/target/release/host-local" "$@"
