#!/usr/bin/env bash
# Builds fuzz targets with clang, AddressSanitizer + UndefinedBehaviorSanitizer
# and SanitizerCoverage:
#   fuzz/out/<target>            the target + fuzz/runner (driven by `deno task fuzz`)
#   fuzz/out/<target>.libfuzzer  the same target linked with clang's libFuzzer
# usage: fuzz/build.sh [--libfuzzer] [TARGET...]   (default: every fuzz/targets/*.c)
# Each target names the guest sources it links in a "FUZZ_SOURCES:" line of
# its header comment (paths under guest/) and libraries in "FUZZ_LIBS:".
# A binary is rebuilt only when one of its inputs is newer.
# FUZZ_CFLAGS adds compiler flags (e.g. to build a scratch copy with a bug).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GUEST=${FUZZ_GUEST_DIR:-$ROOT/guest}
OUT=${FUZZ_OUT:-$ROOT/fuzz/out}
CC=${FUZZ_CC:-clang}
libfuzzer=0
if [[ ${1:-} == --libfuzzer ]]; then libfuzzer=1; shift; fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in "$ROOT"/fuzz/targets/*.c; do targets+=("$(basename "$f" .c)"); done
fi
command -v "$CC" >/dev/null || { echo "fuzz/build.sh: $CC not found (scripts/deps.sh installs clang)" >&2; exit 1; }
mkdir -p "$OUT"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-sanitize=alignment"
COMMON="-std=gnu11 -g -O1 -fno-omit-frame-pointer -DINSTAR_HOSTED -I$GUEST/include -I$GUEST -I$ROOT/fuzz/shim ${FUZZ_CFLAGS:-}"
COV="-fsanitize-coverage=inline-8bit-counters,pc-table"

newer() { # newer OUT INPUT... : true when OUT is missing or older than an input
  local out=$1; shift
  [[ -e $out ]] || return 0
  for f in "$@"; do [[ $f -nt $out ]] && return 0; done
  return 1
}

for t in "${targets[@]}"; do
  src=$ROOT/fuzz/targets/$t.c
  [[ -f $src ]] || { echo "fuzz/build.sh: no target $t (fuzz/targets/$t.c)" >&2; exit 1; }
  read -r -a gsrcs <<<"$(sed -n 's/^ \* FUZZ_SOURCES: *//p' "$src")"
  read -r -a libs <<<"$(sed -n 's/^ \* FUZZ_LIBS: *//p' "$src")"
  srcs=("$src")
  for g in "${gsrcs[@]}"; do srcs+=("$GUEST/$g"); done
  deps=("${srcs[@]}" "$ROOT/fuzz/shim/rt_fuzz.c" "$GUEST/rt/common.c" "$ROOT/fuzz/shim/fuzz_rt.h" "$ROOT/fuzz/build.sh" "$GUEST"/include/*.h "$GUEST"/*/*.h)
  largs=()
  for l in "${libs[@]}"; do largs+=("-l$l"); done
  if [[ $libfuzzer -eq 0 ]] && newer "$OUT/$t" "${deps[@]}" "$ROOT/fuzz/runner/runner.c"; then
    tmp=$(mktemp -d)
    # The runner and the runtime shim are not coverage-instrumented: only
    # the target and the guest code count.
    $CC $COMMON $SAN -c "$ROOT/fuzz/runner/runner.c" -o "$tmp/runner.o"
    $CC $COMMON $SAN -c "$ROOT/fuzz/shim/rt_fuzz.c" -o "$tmp/rt_fuzz.o"
    $CC $COMMON $SAN -c "$GUEST/rt/common.c" -o "$tmp/rt_common.o"
    $CC $COMMON $SAN $COV "${srcs[@]}" "$tmp/runner.o" "$tmp/rt_fuzz.o" "$tmp/rt_common.o" "${largs[@]}" -o "$OUT/$t.tmp$$"
    mv "$OUT/$t.tmp$$" "$OUT/$t" # atomic: a concurrent run may be starting this binary
    rm -rf "$tmp"
  fi
  if [[ $libfuzzer -eq 1 ]] && newer "$OUT/$t.libfuzzer" "${deps[@]}"; then
    $CC $COMMON $SAN -fsanitize=fuzzer "${srcs[@]}" "$ROOT/fuzz/shim/rt_fuzz.c" "$GUEST/rt/common.c" "${largs[@]}" -o "$OUT/$t.libfuzzer.tmp$$"
    mv "$OUT/$t.libfuzzer.tmp$$" "$OUT/$t.libfuzzer"
  fi
done
