#!/usr/bin/env bash
# hot-symbols.sh -- regenerate scripts/hot-symbols/<binary>.txt: for each plugin, the functions
# it runs, which scripts/build-static.sh places together at the start of that binary's code
# (fewer code pages touched per call, so less resident memory: the kernel maps 64 KiB of a
# cached file around each page fault).
#
#   sudo scripts/hot-symbols.sh [N]     (N containers of the six-plugin chain, default 2)
#
# Builds the static binaries unstripped (target/hot-symbols), then runs every plugin natively
# under gdb with a one-shot breakpoint on each of its functions (scripts/trace-functions.py):
# VERSION of each, the six-plugin chain of ../shared/bench/chain-bench.sh (CHAIN_BENCH=path
# overrides: ADD, cnitool CHECK, DEL, the network's first ADD included), loopback's ADD,
# CHECK and DEL in a scratch namespace, and the child that bridge spawns to run host-local
# up to its exec (that child shares bridge's memory). Natively, so that glibc's string functions are the
# ones this CPU gets. Each list orders a binary's functions by how many of its calls ran them,
# then by the commands that did (ADD before CHECK before DEL), then by when they first ran:
# the code of every call first, then that of ADD, of DEL, and the rare paths last.
# Needs root, gdb and cnitool (scripts/install-deps.sh --interop --bench). Symbol names carry a hash of
# the toolchain and the dependency versions, not of the source, so rerun this after a
# toolchain or Cargo.lock change, or after changing what a plugin runs (stale names only cost
# memory: scripts/link-hot.sh skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2}
CHAIN_BENCH=${CHAIN_BENCH:-../shared/bench/chain-bench.sh}
CHAIN=(bridge host-local portmap firewall tuning bandwidth)
ALL=("${CHAIN[@]}" loopback)
[ "$(id -u)" = 0 ] || { echo "hot-symbols.sh: run as root (the chain makes namespaces)" >&2; exit 1; }
for c in gdb cnitool ip; do
  command -v "$c" >/dev/null || { echo "hot-symbols.sh: needs $c" >&2; exit 1; }
done
[ -x "$CHAIN_BENCH" ] || { echo "hot-symbols.sh: no $CHAIN_BENCH" >&2; exit 1; }
W=$(mktemp -d)
NS=hotsym-$$
trap 'ip netns del "$NS" 2>/dev/null; ip netns del "$NS-host" 2>/dev/null; rm -rf "$W"' EXIT

dir=$(CARGO_TARGET_DIR=target/hot-symbols KEEP_SYMBOLS=1 HOT_SYMBOLS=none \
  scripts/build-static.sh --quiet | tail -1)
dir=$(cd "$dir" && pwd)
trace=$PWD/scripts/trace-functions.py
mkdir -p "$W/shim" "$W/out"
for p in "${ALL[@]}"; do
  nm --defined-only "$dir/$p" | awk '$2 ~ /^[tTWi]$/ { print $1, $3 }' >"$W/$p.funcs"
  # The shim keeps the plugin's stdout clean of gdb's messages and passes on its exit code.
  # Trace files: <plugin>-<command>-<pid>.
  cat >"$W/shim/$p" <<EOF
#!/bin/sh
in=\$(mktemp) out=\$(mktemp)
cat >"\$in"
gdb -q -batch -ex "python FUNCS='$W/$p.funcs'; OUT='$W/out/$p-\$CNI_COMMAND-\$\$'" \\
  -x '$trace' -ex "run <\$in >\$out" -ex 'quit \$_exitcode' --args '$dir/$p' >/dev/null 2>&1
rc=\$?
cat "\$out"; rm -f "\$in" "\$out"
exit \$rc
EOF
  chmod +x "$W/shim/$p"
  CNI_COMMAND=VERSION "$W/shim/$p" </dev/null >/dev/null
done

CHECK=0 CNICHECK=1 TAG=hot-symbols "$CHAIN_BENCH" "$W/shim" "$N" 1 >"$W/chain.log" 2>&1 || {
  cat "$W/chain.log" >&2
  echo "hot-symbols.sh: the chain failed; lists not written" >&2
  exit 1
}
ip netns add "$NS"
for cmd in ADD CHECK DEL; do
  echo '{"cniVersion":"1.1.0","name":"hot-symbols","type":"loopback"}' |
    CNI_COMMAND=$cmd CNI_CONTAINERID=hot-symbols CNI_NETNS=/run/netns/$NS CNI_IFNAME=lo \
      CNI_PATH="$W/shim" "$W/shim/loopback" >/dev/null ||
    { echo "hot-symbols.sh: loopback $cmd failed; lists not written" >&2; exit 1; }
done

# bridge runs host-local through posix_spawn, whose child runs in bridge's address space
# until it execs: trace that child too, in scratch namespaces (the call is cut short there).
ip netns add "$NS-host"
mkdir -p "$W/ipam"
for cmd in ADD DEL; do
  printf '{"cniVersion":"1.0.0","name":"hotsym","type":"bridge","bridge":"hs0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"%s"}}' "$W/ipam" |
    ip netns exec "$NS-host" env CNI_COMMAND=$cmd CNI_CONTAINERID=hotsym CNI_NETNS=/run/netns/$NS \
      CNI_IFNAME=eth1 CNI_PATH="$dir" gdb -q -batch \
      -ex "python FUNCS='$W/bridge.funcs'; OUT='$W/out/bridge-$cmd-child'; FOLLOW_CHILD=1" \
      -x "$trace" -ex run -ex 'python write_out(None)' -ex kill --args "$dir/bridge" \
      >/dev/null 2>&1 || true
  # The child's own code ends in execve: without it, the child was not followed.
  grep -q execve "$W/out/bridge-$cmd-child" 2>/dev/null ||
    { echo "hot-symbols.sh: tracing bridge's spawn child ($cmd) failed" >&2; exit 1; }
done

# Written aside and moved in at the end, so a failure leaves the current lists in place.
mkdir -p "$W/lists"
for p in "${ALL[@]}"; do
  # key: calls that ran the function (descending), the commands that did, first line seen.
  awk '
    FNR == 1 { n = split(FILENAME, parts, "-"); cmd = parts[n - 1] }
    {
      calls[$0]++; ran[$0, cmd] = 1
      if (!($0 in first) || FNR < first[$0]) first[$0] = FNR
    }
    END {
      n = split("ADD CHECK DEL GC STATUS VERSION", cmds, " ")
      for (f in calls) {
        sig = ""
        for (i = 1; i <= n; i++) if ((f, cmds[i]) in ran) sig = sig cmds[i] "+"
        printf "%06d %s %06d %s\n", 999999 - calls[f], sig, first[f], f
      }
    }' "$W/out/$p"-* | LC_ALL=C sort | cut -d' ' -f4 >"$W/lists/$p.txt"
done
mkdir -p scripts/hot-symbols
rm -f scripts/hot-symbols/*.txt
mv "$W"/lists/*.txt scripts/hot-symbols/
echo "hot-symbols.sh: functions per binary in scripts/hot-symbols/:" \
  "$(cd scripts/hot-symbols && wc -l *.txt | sed '$d' | awk '{ printf "%s%s %s", s, $2, $1; s = ", " }');" \
  "rebuild with scripts/build-static.sh"
