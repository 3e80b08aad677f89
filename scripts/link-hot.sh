#!/usr/bin/env bash
# link-hot.sh -- linker wrapper of scripts/build-static.sh: links with `cc`, placing the
# functions named in DIR/<binary>.txt first (lld's --symbol-ordering-file; DIR comes as the
# wrapper's own argument --hot-symbols=DIR); a binary with no list there is linked in the
# linker's order. Rust names end in a hash of the
# toolchain and the dependency versions ("17h<16 hex>E"); a listed name missing from this
# link's objects stands for every symbol of the same name without the hash, so a list made
# before a toolchain or Cargo.lock change still works.
set -euo pipefail
dir= out= prev= objs=() args=()
for a in "$@"; do
  [ "$prev" = -o ] && out=$a
  case $a in
    --hot-symbols=*) dir=${a#--hot-symbols=}; prev=$a; continue ;;
    *.o) [ -f "$a" ] && objs+=("$a") ;;
    @*)
      # rustc's response file (a very long command line): one argument per line. Drop our
      # own argument from a copy and link without the ordering.
      if [ -f "${a#@}" ]; then
        rsp=$(mktemp)
        grep -v '^--hot-symbols=' "${a#@}" >"$rsp" || true
        a=@$rsp dir=
      fi
      ;;
  esac
  args+=("$a")
  prev=$a
done
set -- "${args[@]}"
# cargo links deps/<binary>-<metadata hash>, with "-" in the binary's name turned into "_"
name=$(basename "$out"); name=${name%-*}; name=${name//_/-}
list=$dir/$name.txt
if [ -n "${rsp:-}" ]; then
  status=0
  cc "$@" || status=$?
  rm -f "$rsp"
  exit "$status"
fi
[ -n "$dir" ] && [ -n "$out" ] && [ -f "$list" ] || exec cc "$@"
order=$(mktemp)
trap 'rm -f "$order"' EXIT
{ [ ${#objs[@]} -eq 0 ] || nm --defined-only "${objs[@]}" 2>/dev/null; } |
  awk -v list="$list" '
    NF >= 3 { have[$3] = 1; k = $3; sub(/17h[0-9a-f]+E$/, "", k); if (k != $3) alias[k] = alias[k] " " $3 }
    END {
      while ((getline s <list) > 0) {
        if (s in have || !(s ~ /17h[0-9a-f]+E$/)) { print s; continue }
        k = s; sub(/17h[0-9a-f]+E$/, "", k); n = split(alias[k], a, " ")
        for (i = 1; i <= n; i++) print a[i]
      }
    }' >"$order"
cc "$@" -Wl,--symbol-ordering-file="$order" -Wl,--no-warn-symbol-ordering
