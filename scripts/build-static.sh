#!/usr/bin/env bash
# build-static.sh -- statically linked release binaries of every plugin and of cnirun, for
# copying onto hosts of any Linux distribution (they need no shared library, not even libc).
#
#   scripts/build-static.sh            # -> target/<triple>/release/{bridge,host-local,...}
#   TARGET=aarch64-unknown-linux-gnu scripts/build-static.sh   # another glibc target
#
# Static glibc: the crt-static target feature with an explicit --target, so the flag applies
# to the binaries but not to build scripts and proc-macros (which must stay dynamic). Needs
# the static C library (libc6-dev on Debian, which build-essential brings). Each binary is
# checked afterwards: the script fails if any of them still wants a dynamic loader.
# Extra arguments go to `cargo build`. Prints the output directory on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

case ${1:-} in
  -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
esac
command -v cargo >/dev/null || { echo "build-static.sh: needs Rust >= 1.85 (cargo); install it with rustup" >&2; exit 1; }

BINARIES=(bridge host-local portmap bandwidth firewall tuning loopback cnirun)

target=${TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
case $target in
  *-linux-gnu*) ;;
  *) echo "build-static.sh: $target: only *-linux-gnu targets are handled here (static glibc)" >&2; exit 1 ;;
esac

bin_args=()
for b in "${BINARIES[@]}"; do bin_args+=(--bin "$b"); done
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" "${bin_args[@]}" "$@"

dir=${CARGO_TARGET_DIR:-target}/$target/release
status=0
for b in "${BINARIES[@]}"; do
  f=$dir/$b
  # A dynamic executable names its loader in a PT_INTERP header ("Requesting program
  # interpreter"); a static(-pie) one has none.
  if [ ! -x "$f" ]; then
    echo "build-static.sh: $f was not built" >&2; status=1
  elif LC_ALL=C readelf -lW "$f" 2>/dev/null | grep -q 'program interpreter'; then
    echo "build-static.sh: $f is dynamically linked" >&2; status=1
  fi
done
[ "$status" = 0 ] || exit "$status"
echo "static binaries (${BINARIES[*]}) in:"
echo "$dir"
