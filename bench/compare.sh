#!/usr/bin/env bash
# compare.sh -- this project's plugins against the reference plugins, back to back in one run,
# on the same machine. Prints figures and their ratio (ours / reference); it never passes or
# fails on time.
#
# usage: sudo bench/compare.sh [N]          (N containers per chain run, default 50)
#
#   1. the six-plugin chain (bridge + host-local, portmap, firewall, tuning, bandwidth) under
#      libcni's cnitool, every container with a port mapping, a sysctl and bandwidth limits:
#      ADD/DEL median and p95, N containers sequentially and 8 at a time; then once more
#      through a timing shim for each plugin's own ADD/DEL time within the chain; then a
#      short run (10 containers) with every plugin under `/usr/bin/time -f %M` for its peak
#      resident memory: the largest of any call, the first container's ADD (the first ADD of
#      a network creates its tables) and the median over the containers. The chain runs are
#      ../shared/bench/chain-bench.sh (beside the repository, as in CI; CHAIN_BENCH=path
#      overrides); without it those sections are skipped and the table says so.
#   2. the kernel's floor of DEL: the kernel work of one container's DEL (veth, ifb and nft
#      element deletes) timed alone in one process, in a throwaway namespace
#      (common/examples/kernel_floor.rs), and its ratio to the reference's DEL.
#   3. host-local ADD/DEL with 10, 1,000, 10,000 and 50,000 existing allocations
#      (plugins/host-local/examples/bench.rs, HL_RUNS calls per figure, default 21).
#   4. the size of each plugin binary (target/release, the static build, the reference).
#
# "Ours" are the binaries this project ships: the static build of scripts/build-static.sh
# (built here first); where it cannot be built (no static C library) target/release instead.
#
# Writes bench/results/<date>.md (machine, versions, tables), bench/results/host-local.csv
# and bench/results/host-local.png (latency against allocations, log x; needs gnuplot:
# scripts/install-deps.sh --bench), and prints the tables.
#   REF=/usr/lib/cni  PAR=8  HL_RUNS=21  OUT=bench/results
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 2 ] || { echo "usage: bench/compare.sh [N>=2]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "compare.sh: run as root (the chain creates namespaces, links, rules)" >&2; exit 1; }
REF=$(readlink -f "${REF:-/usr/lib/cni}")
PAR=${PAR:-8}
HL_RUNS=${HL_RUNS:-21}
OUT=${OUT:-bench/results}
CHAIN_BENCH=${CHAIN_BENCH:-../shared/bench/chain-bench.sh}
PLUGINS=(bridge host-local portmap firewall tuning bandwidth)
DATE=$(date -u +%F)
REPORT=$OUT/$DATE.md
mkdir -p "$OUT"
W=$(mktemp -d)
FLOOR_NS=cnirs-floor-$$
trap 'rm -rf "$W"; ip netns del "$FLOOR_NS" 2>/dev/null || true' EXIT
say() { echo "[compare] $*" >&2; }

say "building release binaries"
cargo build --release --workspace --locked --quiet
cargo build --release --locked --quiet -p cni-host-local --example bench
cargo build --release --locked --quiet -p common --example kernel_floor
DYN=$PWD/target/release
STATIC=""
if out=$(scripts/build-static.sh --quiet 2>"$W/static.err"); then
  STATIC=$(echo "$out" | tail -1)
else
  say "no static build (see below); measuring target/release"; cat "$W/static.err" >&2
fi
OURS=${STATIC:+$PWD/$STATIC}
OURS=${OURS:-$DYN}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "null" || b == "null" || b + 0 == 0) print "–"; else printf (a / b < 0.1 ? "%.3f" : "%.2f"), a / b }'; }
fmt_ms() { case $1 in ""|null) echo "–" ;; *) printf '%.1f ms' "$1" ;; esac; }
json() { sed -n 's/^RESULT //p' "$1" | jq -r ".$2 // \"null\""; }

# ------------------------------------------------------------------ machine
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }
machine=$(
  echo "- date: $(date -u '+%F %H:%M UTC'), N=$N containers per chain run, $PAR at a time for the parallel run"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)"
  echo "- load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes figures noisy; compare ratios)"
  echo "- kernel $(uname -r), Debian $(cat /etc/debian_version 2>/dev/null || echo '?'), $(rustc -V)"
  echo "- reference: $REF (containernetworking-plugins $(pkgver containernetworking-plugins)); runtime: $(command -v cnitool || echo 'no cnitool') (libcni $(pkgver golang-github-appc-cni-dev))"
)

# ------------------------------------------------------------------ chain
chain_md=""
if [ -x "$CHAIN_BENCH" ] && command -v cnitool >/dev/null && [ -x "$REF/bridge" ]; then
  run_chain() {  # tag plugin_dir parallel outfile [env...]
    local tag=$1 dir=$2 par=$3 out=$4; shift 4
    say "chain: $tag, $N containers, $par at a time ${*:-}"
    env TAG="$tag" "$@" "$CHAIN_BENCH" "$dir" "$N" "$par" >"$out" 2>&1 ||
      say "chain run $tag reported a failure (see below); figures kept"
    grep -E '^  (ADD|DEL|check|wall|LEFTOVER|add|del) ' "$out" | sed 's/^/    /' >&2 || true
  }
  declare -A dirs=([ours]=$OURS [ref]=$REF)
  # Peak RSS: every plugin behind a shim that runs it under /usr/bin/time. A process's
  # figure counts its children, so for bridge's own a second set of shims leaves
  # host-local unwrapped (else the shim's sh and time, 1.5 MiB each, would count as
  # bridge's children; host-local itself still does).
  for set in ours ref; do
    for kind in rss rssb; do
      mkdir -p "$W/$kind-$set"
      for p in "${PLUGINS[@]}"; do
        if [ "$kind" = rssb ] && [ "$p" = host-local ]; then
          ln -s "${dirs[$set]}/$p" "$W/$kind-$set/$p"
          continue
        fi
        printf '#!/bin/sh\nexec /usr/bin/time -a -o %s -f "$CNI_COMMAND %s %%M" %s "$@"\n' \
          "$W/$kind-$set.log" "$p" "${dirs[$set]}/$p" >"$W/$kind-$set/$p"
        chmod +x "$W/$kind-$set/$p"
      done
    done
  done
  # Ours and the reference alternate run by run, so a slow spell of the machine hits both.
  for set in ours ref; do run_chain "$set" "${dirs[$set]}" 1 "$W/seq-$set"; done
  for set in ours ref; do run_chain "$set" "${dirs[$set]}" "$PAR" "$W/par-$set"; done
  for set in ours ref; do run_chain "$set" "${dirs[$set]}" 1 "$W/prof-$set" PROFILE=1 CHECK=0; done
  if [ -x /usr/bin/time ]; then
    N_SAVE=$N; N=10
    for set in ours ref; do
      for kind in rss rssb; do run_chain "$set" "$W/$kind-$set" 1 "$W/${kind}run-$set" CHECK=0; done
    done
    N=$N_SAVE
  fi
  row() {  # label file-ours file-ref
    local am ap dm dp ram rap rdm rdp
    am=$(json "$2" add_median_ms); ap=$(json "$2" add_p95_ms)
    dm=$(json "$2" del_median_ms); dp=$(json "$2" del_p95_ms)
    ram=$(json "$3" add_median_ms); rap=$(json "$3" add_p95_ms)
    rdm=$(json "$3" del_median_ms); rdp=$(json "$3" del_p95_ms)
    echo "| $1 | ADD median | $(fmt_ms "$am") | $(fmt_ms "$ram") | $(ratio "$am" "$ram") |"
    echo "| $1 | ADD p95 | $(fmt_ms "$ap") | $(fmt_ms "$rap") | $(ratio "$ap" "$rap") |"
    echo "| $1 | DEL median | $(fmt_ms "$dm") | $(fmt_ms "$rdm") | $(ratio "$dm" "$rdm") |"
    echo "| $1 | DEL p95 | $(fmt_ms "$dp") | $(fmt_ms "$rdp") | $(ratio "$dp" "$rdp") |"
  }
  okline() {  # file -> "ADD a/N, DEL d/N ok, checks ok|failed, host clean|not"
    echo "$(json "$1" add_ok)/$N ADD, $(json "$1" del_ok)/$N DEL ok, checks $(json "$1" checks_ok), host clean $(json "$1" clean)"
  }
  # per-plugin: "    ADD bridge     calls=50 ok=50 median=  x ms  p95=  y ms ..."
  prof() {  # file cmd plugin field(median|p95)
    awk -v c="$2" -v p="$3" -v f="$4=" '$1 == c && $2 == p {
        for (i = 3; i <= NF; i++) if ($i == f) { print $(i + 1); exit }
        for (i = 3; i <= NF; i++) if (index($i, f) == 1) { v = substr($i, length(f) + 1); if (v != "") { print v; exit } } }' "$1"
  }
  rss() {  # log cmd plugin [max|first|median] -> KiB
    awk -v c="$2" -v p="$3" -v w="${4:-max}" '$1 == c && $2 == p { v[++n] = $3 + 0 }
      END { if (!n) exit
        if (w == "first") { print v[1]; exit }
        if (w == "max") { m = 0; for (i = 1; i <= n; i++) if (v[i] > m) m = v[i]; print m; exit }
        for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }' "$1" 2>/dev/null
  }
  chain_md=$(
    echo "### Six-plugin chain under cnitool"
    echo
    echo "bridge (isGateway, ipMasq, hairpin) + host-local, portmap (one hostPort per container),"
    echo "firewall, tuning (net.core.somaxconn), bandwidth (ingress and egress limits); wall time"
    echo "per container of \`cnitool add|del\` (cnitool's own start-up included)."
    echo
    echo "| run | figure | ours | reference | ratio |"
    echo "| --- | --- | ---: | ---: | ---: |"
    row "$N sequential" "$W/seq-ours" "$W/seq-ref"
    row "$N, $PAR at a time" "$W/par-ours" "$W/par-ref"
    echo
    echo "Runs: ours sequential $(okline "$W/seq-ours"); reference sequential $(okline "$W/seq-ref");"
    echo "ours parallel $(okline "$W/par-ours"); reference parallel $(okline "$W/par-ref")."
    echo
    echo "Each plugin's own time within the chain ($N containers sequentially, medians (p95); a"
    echo "timing shim around every plugin adds ~2 ms to each figure; host-local is called by"
    echo "bridge, so bridge's figure includes it):"
    echo
    echo "| plugin | ours ADD | reference ADD | ratio | ours DEL | reference DEL | ratio |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for p in "${PLUGINS[@]}"; do
      oa=$(prof "$W/prof-ours" ADD "$p" median); ra=$(prof "$W/prof-ref" ADD "$p" median)
      od=$(prof "$W/prof-ours" DEL "$p" median); rd=$(prof "$W/prof-ref" DEL "$p" median)
      oap=$(prof "$W/prof-ours" ADD "$p" p95); rap=$(prof "$W/prof-ref" ADD "$p" p95)
      odp=$(prof "$W/prof-ours" DEL "$p" p95); rdp=$(prof "$W/prof-ref" DEL "$p" p95)
      echo "| $p | $(fmt_ms "$oa") ($(fmt_ms "$oap")) | $(fmt_ms "$ra") ($(fmt_ms "$rap")) | $(ratio "$oa" "$ra") | $(fmt_ms "$od") ($(fmt_ms "$odp")) | $(fmt_ms "$rd") ($(fmt_ms "$rdp")) | $(ratio "$od" "$rd") |"
    done
  )
  rss_log() {  # plugin set -> the log its figures come from (see the shims above)
    if [ "$1" = bridge ]; then echo "$W/rssb-$2.log"; else echo "$W/rss-$2.log"; fi
  }
  rss_rows() {
    for p in "${PLUGINS[@]}"; do
      oa=$(rss "$(rss_log "$p" ours)" ADD "$p"); ra=$(rss "$(rss_log "$p" ref)" ADD "$p")
      od=$(rss "$(rss_log "$p" ours)" DEL "$p"); rd=$(rss "$(rss_log "$p" ref)" DEL "$p")
      echo "$p ${oa:-} ${ra:-} ${od:-} ${rd:-}"
    done >"$W/rss.txt"
    for p in "${PLUGINS[@]}"; do
      line=$p
      for f in "ADD first" "ADD median" "DEL median"; do
        for set in ours ref; do
          # shellcheck disable=SC2086 # $f is "CMD WHICH"
          v=$(rss "$(rss_log "$p" "$set")" ${f% *} "$p" ${f#* }); line="$line ${v:-null}"
        done
      done
      echo "$line"
    done >"$W/rss-steady.txt"
  }
  rss_rows
else
  chain_md="### Six-plugin chain: not run

$CHAIN_BENCH (the shared chain benchmark, kept beside the repository in CI), cnitool
(scripts/install-deps.sh --interop) or the reference plugins in $REF are missing here, so the
chain, per-plugin and memory figures were skipped."
  : >"$W/rss.txt"; : >"$W/rss-steady.txt"
fi

# ------------------------------------------------------------------ host-local
say "host-local with 10 .. 50,000 existing allocations, $HL_RUNS calls per figure"
hl_ref=$REF/host-local
BENCH_CSV=$OUT/host-local.csv target/release/examples/bench "$OURS/host-local" "$hl_ref" "$HL_RUNS" >"$W/hl.txt"
hl_md=$(
  echo "### host-local with existing allocations"
  echo
  echo "One process per call as a runtime makes them, median of $HL_RUNS calls, N allocations"
  echo "already in the data directory:"
  echo
  echo "| existing allocations | ours ADD | reference ADD | ratio | ours DEL | reference DEL | ratio |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  tail -n +2 "$OUT/host-local.csv" | sort -t, -k2,2n -s | awk -F, '
    function f(v) { return (v == "") ? "–" : sprintf("%.2f ms", v) }
    function r(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "–" : sprintf(a / b < 0.1 ? "%.3f" : "%.2f", a / b) }
    !($2 in seen) { seen[$2] = 1; order[++n] = $2 }
    { a[$1, $2] = $3; d[$1, $2] = $4 }
    END { for (i = 1; i <= n; i++) { e = order[i]
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", e, f(a["rust", e]), f(a["reference", e]),
          r(a["rust", e], a["reference", e]), f(d["rust", e]), f(d["reference", e]),
          r(d["rust", e], d["reference", e]) } }'
  echo
  echo "![host-local latency against existing allocations](host-local.png)"
)

# ------------------------------------------------------------------ plot
if command -v gnuplot >/dev/null; then
  say "plotting $OUT/host-local.png"
  awk -F, 'NR > 1 && $1 == "rust"' "$OUT/host-local.csv" | tr , ' ' >"$W/ours.dat"
  awk -F, 'NR > 1 && $1 == "reference"' "$OUT/host-local.csv" | tr , ' ' >"$W/ref.dat"
  gnuplot <<GP
set terminal pngcairo size 900,560 font "sans,11"
set output "$OUT/host-local.png"
set title "host-local: one ADD / DEL call against existing allocations ($DATE, $(nproc) CPUs)"
set logscale xy
set xlabel "existing allocations in the data directory"
set ylabel "median wall time per call (ms)"
set xrange [5:100000]
set key top left
set grid
plot "$W/ours.dat" using 2:3 with linespoints lw 2 pt 7 title "cni-rs ADD", \
     "$W/ours.dat" using 2:4 with linespoints lw 2 pt 5 dt 2 title "cni-rs DEL", \
     "$W/ref.dat" using 2:3 with linespoints lw 2 pt 7 title "reference ADD", \
     "$W/ref.dat" using 2:4 with linespoints lw 2 pt 5 dt 2 title "reference DEL"
GP
else
  say "gnuplot missing (scripts/install-deps.sh --bench): no PNG"
fi

# ------------------------------------------------------------------ sizes + RSS
kib() { [ -n "${1:-}" ] && [ "$1" != null ] && awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }' || echo "–"; }
size_of() { [ -f "$1" ] && stat -c %s "$1" || true; }
mib() { [ -n "${1:-}" ] && awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }' || echo "–"; }
res_md=$(
  echo "### Binary size and peak resident memory"
  echo
  shipped=${STATIC:+the static build}; shipped=${shipped:-target/release}
  echo "Size on disk of target/release${STATIC:+ and of the static build ($STATIC)} against $REF"
  echo "(the ratio is $shipped's); peak resident set of each plugin's ADD and DEL in the chain"
  echo "($shipped), the largest over 10 containers (\`/usr/bin/time -f %M\`: the largest single"
  echo "process of the call, children such as \`nft\`, \`iptables\` or bridge's host-local included;"
  echo "bridge's from a run where its host-local is not behind the measuring shim, whose \`sh\`"
  echo "and \`time\` would count as bridge's children)."
  echo
  echo "| plugin | size ours | ${STATIC:+size ours static | }size reference | ratio | peak RSS ADD ours | reference | ratio | peak RSS DEL ours | reference | ratio |"
  echo "| --- | ---: | ${STATIC:+---: | }---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for p in "${PLUGINS[@]}"; do
    so=$(size_of "$DYN/$p"); sr=$(size_of "$REF/$p")
    ss=""; [ -n "$STATIC" ] && ss="$(mib "$(size_of "$STATIC/$p")") | "
    read -r _ oa ra od rd < <(grep "^$p " "$W/rss.txt" || echo "$p")
    echo "| $p | $(mib "$so") | $ss$(mib "$sr") | $(ratio "$(size_of "$OURS/$p")" "$sr") | $(kib "$oa") | $(kib "$ra") | $(ratio "$oa" "$ra") | $(kib "$od") | $(kib "$rd") | $(ratio "$od" "$rd") |"
  done
  if [ -s "$W/rss-steady.txt" ]; then
    echo
    echo "The same calls split: the first container's ADD (the first ADD of the network creates its"
    echo "tables) and the median over the 10 containers (steady state):"
    echo
    echo "| plugin | first ADD ours | reference | ratio | median ADD ours | reference | ratio | median DEL ours | reference | ratio |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    while read -r p fa fr ma mr da dr; do
      echo "| $p | $(kib "$fa") | $(kib "$fr") | $(ratio "$fa" "$fr") | $(kib "$ma") | $(kib "$mr") | $(ratio "$ma" "$mr") | $(kib "$da") | $(kib "$dr") | $(ratio "$da" "$dr") |"
    done <"$W/rss-steady.txt"
  fi
)

# ------------------------------------------------------------------ kernel floor
say "kernel floor: the kernel work of one DEL alone (common/examples/kernel_floor.rs)"
floor_md=""
if ip netns add "$FLOOR_NS" 2>/dev/null; then
  floor_out=$(ip netns exec "$FLOOR_NS" target/release/examples/kernel_floor 21 2>&1) || true
  ip netns del "$FLOOR_NS" 2>/dev/null || true
  floor=$(echo "$floor_out" | awk '/^DEL floor/ {print $3}')
  ref_del=""
  [ -f "$W/seq-ref" ] && ref_del=$(json "$W/seq-ref" del_median_ms)
  floor_md=$(
    echo "### The kernel's share: the floor of DEL"
    echo
    echo "The kernel work behind one container's DEL, timed in one process with no process"
    echo "start-up (\`common/examples/kernel_floor.rs\`, medians of 21): removing a network device"
    echo "waits for an RCU grace period (\`rcu_barrier\` in \`netdev_run_todo\`), and so does"
    echo "closing an nf_tables socket after a transaction that deleted set elements (the kernel"
    echo "flushes its destroy work). The chain's DEL removes a veth (bridge), an ifb (bandwidth)"
    echo "and set elements in two more processes (portmap, firewall; bridge's overlap its veth)."
    echo
    echo '```text'
    echo "$floor_out"
    echo '```'
    echo
    echo "Against the reference's sequential DEL median above ($(fmt_ms "$ref_del")), that floor alone"
    echo "is a ratio of $(ratio "$floor" "$ref_del")."
  )
fi

{
  echo "## cni-rs against the reference plugins, $DATE"
  echo
  echo "Produced by \`sudo bench/compare.sh $N\`; ratio = ours / reference (below 1: ours is"
  echo "faster or smaller). Figures, never a pass/fail."
  echo
  echo "$machine"
  echo
  echo "$chain_md"
  echo
  echo "$floor_md"
  echo
  echo "$hl_md"
  echo
  echo "$res_md"
} >"$REPORT"
cat "$REPORT"
say "wrote $REPORT, $OUT/host-local.csv${OUT:+ and $OUT/host-local.png}"
