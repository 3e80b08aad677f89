#!/usr/bin/env bash
# hot-symbols.sh -- regenerate scripts/hot-symbols.txt, the functions that the plugins run,
# which scripts/build-static.sh places together at the start of the code (fewer code pages
# touched per call, so less resident memory).
#
#   sudo scripts/hot-symbols.sh [N]     (N containers of the six-plugin chain, default 3)
#
# Builds the static binaries unstripped (target/hot-symbols), runs VERSION of every plugin and
# the six-plugin chain of ../shared/bench/chain-bench.sh (CHAIN_BENCH=path overrides: ADD,
# cnitool CHECK, DEL) with every plugin under valgrind's callgrind, and writes the names of
# the functions that ran: those of start-up first, then by how many calls ran them. Needs
# root, valgrind, cnitool (scripts/install-deps.sh --interop). Symbol names carry a hash of
# the toolchain and the dependency versions, not of the source, so rerun this after a
# toolchain or Cargo.lock change (stale names only cost memory, they are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}
CHAIN_BENCH=${CHAIN_BENCH:-../shared/bench/chain-bench.sh}
PLUGINS=(bridge host-local portmap firewall tuning bandwidth)
[ "$(id -u)" = 0 ] || { echo "hot-symbols.sh: run as root (the chain makes namespaces)" >&2; exit 1; }
for c in valgrind cnitool; do
  command -v "$c" >/dev/null || { echo "hot-symbols.sh: needs $c" >&2; exit 1; }
done
[ -x "$CHAIN_BENCH" ] || { echo "hot-symbols.sh: no $CHAIN_BENCH" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

dir=$(CARGO_TARGET_DIR=target/hot-symbols KEEP_SYMBOLS=1 HOT_SYMBOLS=none \
  scripts/build-static.sh --quiet | tail -1)
dir=$(cd "$dir" && pwd)
mkdir -p "$W/shim" "$W/out"
for p in "${PLUGINS[@]}"; do
  # One callgrind file per call: <plugin>-<command>-<pid>.
  printf '#!/bin/sh\nexec valgrind -q --tool=callgrind --demangle=no --log-file=/dev/null --callgrind-out-file=%s/%s-"$CNI_COMMAND"-%%p %s "$@"\n' \
    "$W/out" "$p" "$dir/$p" >"$W/shim/$p"
  chmod +x "$W/shim/$p"
  CNI_COMMAND=VERSION "$W/shim/$p" </dev/null >/dev/null
done
CHECK=0 CNICHECK=1 TAG=hot-symbols "$CHAIN_BENCH" "$W/shim" "$N" 1 >"$W/chain.log" 2>&1 || {
  cat "$W/chain.log" >&2
  echo "hot-symbols.sh: the chain failed; list not written" >&2
  exit 1
}

# callgrind names a function once as "fn=(id) name" (or cfn=), then by "(id)" alone.
awk '
  FNR == 1 { file++; delete ids; startup = (FILENAME ~ /-VERSION-/) }
  /^c?fn=/ {
    s = $0; sub(/^c?fn=/, "", s); id = ""
    if (s ~ /^\([0-9]+\)/) { id = s; sub(/\).*/, ")", id); s = substr(s, length(id) + 1); sub(/^ /, "", s) }
    if (s == "") s = ids[id]; else if (id != "") ids[id] = s
    if (s !~ /^[A-Za-z_.$][A-Za-z0-9_.$]*$/ || seen[file, s]++) next
    calls[s]++; if (startup) first[s] = 1
  }
  END { for (s in calls) printf "%d %d %s\n", (s in first) ? 0 : 1, -calls[s], s }
' "$W"/out/* | sort -k1,1n -k2,2n -k3,3 | cut -d' ' -f3 >scripts/hot-symbols.txt
echo "hot-symbols.sh: $(wc -l <scripts/hot-symbols.txt) functions in scripts/hot-symbols.txt;" \
  "rebuild with scripts/build-static.sh"
