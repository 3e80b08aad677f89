#!/usr/bin/env bash
# cri.sh -- pod sandbox latency as a kubelet sees it: RunPodSandbox, StopPodSandbox and
# RemovePodSandbox through Debian's containerd 1.6 over CRI, N pods with this project's
# plugins and N with the reference plugins (/usr/lib/cni), alternating on one containerd
# (cri/tests/bench.rs, an ignored test on the CRI test's harness). Each pod has TCP and UDP host ports
# and both bandwidth annotations, so it runs the six-plugin chain and containerd's loopback
# network. Prints medians, p95 and the ratio (ours / reference); it never passes or fails on
# time. The calls include containerd's own work (the sandbox container, its netns), which is
# the same on both sides.
#
# usage: bench/cri.sh [N]          (as root; N pods per side, default 30)
#
# "Ours" are the static release binaries (scripts/build-static.sh, built here first). Needs
# scripts/install-deps.sh --interop (containerd, runc, busybox-static, the reference plugins,
# protoc).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 2 ] || { echo "usage: bench/cri.sh [N>=2]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "cri.sh: run as root (containerd, namespaces)" >&2; exit 1; }
ours=$(scripts/build-static.sh --quiet | tail -1)
CNI_TEST_BIN_DIR=$(cd "$ours" && pwd) CRI_BENCH_PODS=$N \
  cargo test --release --locked --quiet -p cni-cri --test bench -- --ignored --nocapture
