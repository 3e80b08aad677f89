#!/usr/bin/env bash
# install.sh -- install the static plugins where container runtimes look for them, cnirun on
# the PATH, and optionally a network configuration.
#
#   scripts/install.sh [--conflist FILE] [--no-build]
#
#   plugins   bridge host-local portmap bandwidth firewall tuning loopback
#             -> $DESTDIR$CNI_BIN_DIR       (CNI_BIN_DIR default /opt/cni/bin)
#   cnirun    -> $DESTDIR$PREFIX/bin        (PREFIX default /usr/local)
#   FILE      -> $DESTDIR$CNI_CONF_DIR/     (CNI_CONF_DIR default /etc/cni/net.d), mode 0644
#
# DESTDIR stages everything under another root (packaging); it is empty by default.
# Builds the static binaries first (scripts/build-static.sh, a no-op when they are up to
# date) when cargo is on the PATH, unless --no-build is given; otherwise installs those
# already built in target/<triple>/release. Under sudo, where cargo is often not on root's
# PATH, build as yourself first:  scripts/build-static.sh && sudo scripts/install.sh --no-build
#
# Each file is written beside its destination and renamed over it, so a runtime invoking a
# plugin during the upgrade runs either the old or the new binary, never half of one.
# Binaries of the same names already there (say, the reference plugins) are replaced.
# The plugins drive `nft` at run time: install nftables too (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PLUGINS=(bridge host-local portmap bandwidth firewall tuning loopback)
PREFIX=${PREFIX:-/usr/local}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
DESTDIR=${DESTDIR:-}

conflist=""
build=1
while [ $# -gt 0 ]; do
  case $1 in
    --conflist) [ $# -ge 2 ] || { echo "install.sh: --conflist needs a file" >&2; exit 2; }
                conflist=$2; shift ;;
    --conflist=*) conflist=${1#--conflist=} ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$conflist" ]; then
  [ -f "$conflist" ] || { echo "install.sh: $conflist: no such file" >&2; exit 1; }
  case $conflist in
    *.conflist|*.conf|*.json) ;;
    *) echo "install.sh: $conflist: runtimes read only *.conflist, *.conf and *.json files" >&2; exit 1 ;;
  esac
fi

say() { echo "[install] $*"; }

if [ "$build" = 1 ] && command -v cargo >/dev/null; then
  dir=$(scripts/build-static.sh | tail -n 1)
else
  target=${TARGET:-$(uname -m)-unknown-linux-gnu}
  dir=${CARGO_TARGET_DIR:-target}/$target/release
fi
for b in "${PLUGINS[@]}" cnirun; do
  [ -x "$dir/$b" ] || { echo "install.sh: $dir/$b is missing: run scripts/build-static.sh first" >&2; exit 1; }
done

# put SRC DIR NAME MODE: atomically replace DIR/NAME with a copy of SRC.
put() {
  local src=$1 dir=$2 name=$3 mode=$4 tmp
  mkdir -p "$dir"
  tmp=$(mktemp "$dir/.$name.XXXXXX")
  if ! install -m "$mode" "$src" "$tmp" || ! mv -f "$tmp" "$dir/$name"; then
    rm -f "$tmp"
    echo "install.sh: installing $dir/$name failed" >&2
    exit 1
  fi
}

for b in "${PLUGINS[@]}"; do put "$dir/$b" "$DESTDIR$CNI_BIN_DIR" "$b" 0755; done
say "plugins (${PLUGINS[*]}) -> $DESTDIR$CNI_BIN_DIR"
put "$dir/cnirun" "$DESTDIR$PREFIX/bin" cnirun 0755
say "cnirun -> $DESTDIR$PREFIX/bin"
if [ -n "$conflist" ]; then
  put "$conflist" "$DESTDIR$CNI_CONF_DIR" "$(basename "$conflist")" 0644
  say "$(basename "$conflist") -> $DESTDIR$CNI_CONF_DIR"
fi
command -v nft >/dev/null || say "note: nft is not installed here; the plugins need it at run time (nftables)"
