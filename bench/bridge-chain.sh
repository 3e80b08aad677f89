#!/usr/bin/env bash
# bridge-chain.sh -- time a bridge + host-local chain under libcni's cnitool, this project's
# binaries and the reference plugins back to back on the same machine. Prints figures; it
# never passes or fails on time. Everything runs inside a private "host" network namespace,
# so the machine's own network is untouched and nothing is left behind.
#
# usage: bench/bridge-chain.sh [N]        (as root; N containers per plugin set, default 50)
#   OURS=target/release   REF=/usr/lib/cni   CNI_VERSION=1.0.0
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
[ -n "${OURS:-}" ] || cargo build --release --workspace --locked --quiet
OURS=$(readlink -f "${OURS:-target/release}")
REF=${REF:-/usr/lib/cni}
CNI_VERSION=${CNI_VERSION:-1.0.0}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v cnitool >/dev/null || { echo "cnitool missing: scripts/install-deps.sh --interop" >&2; exit 1; }

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOSTNS=cbench-$ID
RUN=$(mktemp -d)
cleanup() {
  set +e
  for ns in $(ip netns list | awk '{print $1}' | grep "^cb$ID-"); do ip netns del "$ns"; done
  ip netns del "$HOSTNS" 2>/dev/null
  rm -rf "$RUN" /var/lib/cni/results/cbench-"$ID"-* 2>/dev/null
}
trap cleanup EXIT
ip netns add "$HOSTNS"
ip -n "$HOSTNS" link set lo up

stats() { sort -g | awk '{a[NR]=$1} END {n=NR; m=(n%2)?a[(n+1)/2]:(a[n/2]+a[n/2+1])/2; k=int(0.95*n+0.999); printf "%.2f %.2f\n", m, a[k]}'; }

bench_one() {   # $1 tag, $2 plugin dir
  local tag=$1 dir=$2 net=cbench-$ID-$1 br=cb${1:0:1}$ID i t0 t1
  mkdir -p "$RUN/$tag/conf"
  cat >"$RUN/$tag/conf/$net.conflist" <<CONF
{"cniVersion": "$CNI_VERSION", "name": "$net", "plugins": [
  {"type": "bridge", "bridge": "$br", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "dataDir": "$RUN/$tag/ipam",
            "ranges": [[{"subnet": "10.99.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
CONF
  : >"$RUN/$tag/add"; : >"$RUN/$tag/del"
  for ((i = 1; i <= N; i++)); do ip netns add "cb$ID-$tag-$i"; done
  for ((i = 1; i <= N; i++)); do
    t0=${EPOCHREALTIME//[.,]/}
    ip netns exec "$HOSTNS" env NETCONFPATH="$RUN/$tag/conf" CNI_PATH="$dir" \
      cnitool add "$net" "/var/run/netns/cb$ID-$tag-$i" >/dev/null
    t1=${EPOCHREALTIME//[.,]/}
    echo "$(( t1 - t0 ))" >>"$RUN/$tag/add"
  done
  # one reachability check: container 1 pings container 2's address through the bridge
  a2=$(ip -n "cb$ID-$tag-2" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
  ip netns exec "cb$ID-$tag-1" ping -c1 -W2 "$a2" >/dev/null && reach=ok || reach=FAIL
  for ((i = 1; i <= N; i++)); do
    t0=${EPOCHREALTIME//[.,]/}
    ip netns exec "$HOSTNS" env NETCONFPATH="$RUN/$tag/conf" CNI_PATH="$dir" \
      cnitool del "$net" "/var/run/netns/cb$ID-$tag-$i" >/dev/null
    t1=${EPOCHREALTIME//[.,]/}
    echo "$(( t1 - t0 ))" >>"$RUN/$tag/del"
    ip netns del "cb$ID-$tag-$i"
  done
  read -r am ap < <(awk '{print $1/1000}' "$RUN/$tag/add" | stats)
  read -r dm dp < <(awk '{print $1/1000}' "$RUN/$tag/del" | stats)
  printf '%-10s ADD median %7s ms  p95 %7s ms   DEL median %7s ms  p95 %7s ms   ping %s\n' "$tag" "$am" "$ap" "$dm" "$dp" "$reach"
  echo "$am $dm" >"$RUN/$tag/medians"
}

echo "bridge + host-local via cnitool, N=$N, cniVersion $CNI_VERSION, $(nproc) cores, kernel $(uname -r)"
bench_one ours "$OURS"
bench_one reference "$REF"
read -r oa od <"$RUN/ours/medians"; read -r ra rd <"$RUN/reference/medians"
awk -v oa="$oa" -v od="$od" -v ra="$ra" -v rd="$rd" 'BEGIN {printf "ratio ours/reference: ADD %.2f  DEL %.2f\n", oa/ra, od/rd}'
