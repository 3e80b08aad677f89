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
#
# Resident memory: a plugin's is mostly the code pages it touches, and the kernel maps file
# pages 64 KiB around each fault. So the binaries are non-PIE (no start-up relocation pass
# over the tables of pointers) and, when the toolchain's lld is there (rustup's), linked with
# the functions that each plugin runs (scripts/hot-symbols/<binary>.txt, from
# scripts/hot-symbols.sh) placed together at the start of its code. HOT_SYMBOLS=DIR uses
# other lists, HOT_SYMBOLS=none none. Names carry a hash of the toolchain, the dependency
# versions and the profile (`strip` included): the binaries are linked with their symbols like
# scripts/hot-symbols.sh's and stripped afterwards (KEEP_SYMBOLS=1: not), and a name whose hash
# no longer matches stands for its namesakes (scripts/link-hot.sh).
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
dir=${CARGO_TARGET_DIR:-target}/$target/release
flags="-C target-feature=+crt-static -C relocation-model=static"

hot=${HOT_SYMBOLS:-scripts/hot-symbols}
gcc_ld=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld
if [ "$hot" != none ] && compgen -G "$hot/*.txt" >/dev/null && [ -x "$gcc_ld/ld.lld" ]; then
  # The lists are copied under their checksum and passed by that path in the flags, so that
  # new lists relink. scripts/link-hot.sh matches them against the link's own symbols.
  sum=$(cat "$hot"/*.txt | sha256sum | cut -c1-16)
  order=$(mkdir -p "$dir" && cd "$dir" && pwd)/hot-symbols-$sum
  mkdir -p "$order"
  cp "$hot"/*.txt "$order"/
  flags="$flags -C linker=$PWD/scripts/link-hot.sh -C link-arg=--hot-symbols=$order"
  flags="$flags -C link-arg=-fuse-ld=lld -C link-arg=-B$gcc_ld"
elif [ "$hot" != none ]; then
  echo "build-static.sh: no $hot or no lld in $gcc_ld: functions left in the linker's order" >&2
fi
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$flags" CARGO_PROFILE_RELEASE_STRIP=false \
  cargo build --release --locked --target "$target" "${bin_args[@]}" "$@"

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
if [ "${KEEP_SYMBOLS:-0}" != 1 ]; then
  for b in "${BINARIES[@]}"; do strip --strip-all "$dir/$b"; done
fi
echo "static binaries (${BINARIES[*]}) in:"
echo "$dir"
