#!/usr/bin/env bash
# demo.sh -- build the suite, install what it needs at run time (nftables), and run a live
# demo: two "containers" (network namespaces) join one bridge through Podman's default chain
# (bridge + host-local, portmap, firewall, tuning), get their addresses, exchange a TCP
# message, answer on a published port, and are deleted again, leaving nothing behind. Run as root on Debian. The demo's "host" is a network
# namespace of its own, so the machine's own network is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
command -v cargo >/dev/null || { echo "demo.sh: needs Rust >= 1.85 (cargo); install it with rustup" >&2; exit 1; }

scripts/install-deps.sh
cargo build --release --workspace --locked
BIN=$PWD/target/release

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST=cnirs-host-$ID C1=cnirs-ctr1-$ID C2=cnirs-ctr2-$ID
TMP=$(mktemp -d)
cleanup() {
  set +e
  for ns in "$C1" "$C2" "$HOST"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cnirun() { ip netns exec "$HOST" "$BIN/cnirun" "$@" --conflist "$TMP/demo.conflist" \
             --cache-dir "$TMP/cache" --cni-path "$BIN"; }

step "namespaces: host $HOST, containers $C1 and $C2"
for ns in "$HOST" "$C1" "$C2"; do ip netns add "$ns"; done
ip -n "$HOST" link set lo up
jq --arg dd "$TMP/ipam" '.plugins[0].ipam.dataDir = $dd' conflists/podman-default.conflist >"$TMP/demo.conflist"
cat "$TMP/demo.conflist"

step "cnirun add $C1, publishing host port 8080 -> container port 8080"
cnirun add --netns "/run/netns/$C1" --container-id "$C1" --port-mapping 8080:8080/tcp | tee "$TMP/$C1.json"
step "cnirun add $C2"
cnirun add --netns "/run/netns/$C2" --container-id "$C2" | tee "$TMP/$C2.json"
A1=$(jq -r '.ips[0].address' "$TMP/$C1.json" | cut -d/ -f1)
A2=$(jq -r '.ips[0].address' "$TMP/$C2.json" | cut -d/ -f1)

step "addresses"
ip -n "$C1" -br addr show dev eth0
ip -n "$C2" -br addr show dev eth0
ip -n "$HOST" -br addr show dev cni-podman0

step "TCP: $C2 ($A2) -> $C1 ($A1):8080"
ip netns exec "$C1" timeout 10 nc -l 8080 >"$TMP/received" &
for _ in $(seq 50); do ip netns exec "$C1" ss -ltn | grep -q ':8080 ' && break; sleep 0.1; done
echo "hello from $C2" | ip netns exec "$C2" nc -N -w 3 "$A1" 8080
wait
echo "$C1 received: $(cat "$TMP/received")"
grep -q "hello from $C2" "$TMP/received"

step "published port: the host -> 127.0.0.1:8080 -> $C1:8080"
ip netns exec "$C1" timeout 10 nc -l 8080 >"$TMP/received" &
for _ in $(seq 50); do ip netns exec "$C1" ss -ltn | grep -q ':8080 ' && break; sleep 0.1; done
echo "hello from the host" | ip netns exec "$HOST" nc -N -w 3 127.0.0.1 8080
wait
echo "$C1 received: $(cat "$TMP/received")"
grep -q "hello from the host" "$TMP/received"
ip netns exec "$HOST" nft list ruleset | grep -E 'table|dnat|elements' | sed 's/^/  /'

step "CHECK and DEL"
for c in "$C1" "$C2"; do
  cnirun check --netns "/run/netns/$c" --container-id "$c" && echo "check $c: ok"
  cnirun del --netns "/run/netns/$c" --container-id "$c" && echo "del $c: ok"
done

step "what is left after DEL"
left_veths=$(ip -n "$HOST" -o link show type veth | wc -l)
left_allocs=$(find "$TMP/ipam" -type f -name '10.*' | wc -l)
# (cnirs_setup is not an attachment's: it records the version of each table's rules)
left_elems=$(ip netns exec "$HOST" nft -j list ruleset | jq '[.nftables[] | (.set // .map // empty) | select(.name != "cnirs_setup") | .elem // [] | length] | add // 0')
left_cache=$(ls "$TMP/cache" 2>/dev/null | wc -l)
echo "veths in the host namespace: $left_veths"
echo "allocations: $left_allocs"
echo "nftables set/map elements: $left_elems"
echo "cache entries: $left_cache"
if [ "$((left_veths + left_allocs + left_elems + left_cache))" != 0 ]; then
  echo "demo: DEL left something behind (above)" >&2
  exit 1
fi
step "removing the demo namespaces (the bridge lived in the demo host namespace)"
