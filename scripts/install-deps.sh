#!/usr/bin/env bash
# install-deps.sh -- install what the plugins need at run time, and what the tests and the
# demo use, on Debian (run as root; idempotent; non-interactive).
#
#   run time:  nftables (the plugins drive `nft`)
#   tests:     iproute2 (assertions), iputils-ping, netcat-openbsd (demo traffic), jq,
#              iptables (iptables-nft: the firewall tests check iptables still reads its chains)
#   --interop: the reference plugins (containernetworking-plugins, /usr/lib/cni) and
#              libcni's cnitool, built from Debian's source package of libcni; for the CRI
#              tests (cri/): containerd (1.6, with its runc shim and ctr), runc,
#              busybox-static (the test image is built from its /bin/busybox) and
#              protobuf-compiler (protoc: the CRI client's gRPC code is generated at build time)
#   --bench:   what bench/compare.sh needs besides --interop: gnuplot (gnuplot-nox, the PNG plot),
#              time (/usr/bin/time, peak memory), busybox-static and curl (chain-bench's checks);
#              and gdb for scripts/hot-symbols.sh
set -euo pipefail

interop=0
bench=0
for a in "$@"; do
  case $a in
    --interop) interop=1 ;;
    --bench) bench=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

say() { echo "[install-deps] $*"; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }

pkgs=(nftables iproute2 iputils-ping netcat-openbsd jq ca-certificates iptables procps)
[ "$interop" = 1 ] && pkgs+=(containernetworking-plugins golang-go golang-github-appc-cni-dev dpkg-dev xz-utils
  containerd runc busybox-static protobuf-compiler)
[ "$bench" = 1 ] && pkgs+=(gnuplot-nox time busybox-static curl gdb)

# libcni's cnitool is not in a binary package; its source package is, which needs deb-src.
srclist=/etc/apt/sources.list.d/cni-rs-debsrc.sources
need_update=0
if [ "$interop" = 1 ] && ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src ' /etc/apt/sources.list; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  cat >"$srclist" <<SRC
Types: deb-src
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ "$need_update" = 1 ]; then
  say "apt-get update"
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cnitool_works() { local out; out=$(cnitool 2>&1 || true); grep -q 'cnitool add' <<<"$out"; }
if [ "$interop" = 1 ] && ! { command -v cnitool >/dev/null && cnitool_works; }; then
  say "building cnitool from Debian's libcni source package"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get source --download-only golang-github-appc-cni >/dev/null 2>&1)
  tar -C "$work" -xf "$(ls "$work"/golang-github-appc-cni_*.orig.tar.* | head -1)"
  src=$(ls -d "$work"/golang-github-appc-cni-*/cnitool | head -1)
  mkdir -p "$work/gopath/src/cnitool"
  cp "$src"/*.go "$work/gopath/src/cnitool/"
  (cd "$work/gopath/src/cnitool" &&
    GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOCACHE="$work/cache" GOFLAGS='' \
      CGO_ENABLED=0 go build -o /usr/local/bin/cnitool .)
fi

command -v nft >/dev/null || { echo "nft is still missing" >&2; exit 1; }
say "ok"
