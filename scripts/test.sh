#!/usr/bin/env bash
# test.sh -- every test of the suite, from a fresh Debian machine (run as root):
# installs the test dependencies (with the reference plugins and cnitool for the interop
# tests), checks formatting and lints, builds every binary (and the static release binaries,
# which runner/tests/release.rs runs in an empty root), and runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "test.sh: needs Rust >= 1.85 (cargo); install it with rustup" >&2; exit 1; }
scripts/install-deps.sh --interop
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
scripts/build-static.sh >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
CNI_REQUIRE_STATIC=1 cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo's last line is a crate's doc-test summary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
