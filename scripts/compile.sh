#!/usr/bin/env bash
# One self-contained executable: `deno compile` bundles main.ts with the
# base64-embedded VMM and guests (lib/embedded/), so nothing is read from the
# repo at run time. deno compile needs the `denort` runtime; where it cannot
# be downloaded, point DENORT_BIN at a denort binary of the same version.
#
# Modules imported at run time through specifiers that are not string
# literals (so `deno run` does not build their graphs at every start: the
# sandbox, each command, each embedded binary) are invisible to deno compile
# and named here with --include. `--print-includes` prints that list;
# tests/compile_includes_test.ts checks it covers every such import.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
[[ -f lib/embedded/index.ts ]] || bash scripts/build.sh
includes=(lib/vmm/sandbox.ts)
for f in lib/embedded/*.ts; do [[ "$f" == */index.ts ]] || includes+=("$f"); done
# The command modules lib/cli/run.ts loads with lazy("PATH", ...).
while read -r rel; do
  includes+=("$(realpath -m --relative-to=. "lib/cli/$rel")")
done < <(grep -o 'lazy("[^"]*"' lib/cli/run.ts | sed 's/^lazy("//; s/"$//')
if [[ "${1:-}" == "--print-includes" ]]; then
  printf '%s\n' "${includes[@]}"
  exit 0
fi
if [[ -n "${DENORT_BIN:-}" && ! -x "$DENORT_BIN" ]]; then
  echo "instar: DENORT_BIN=$DENORT_BIN is not an executable" >&2
  exit 1
fi
args=()
for f in "${includes[@]}"; do args+=(--include "$f"); done
exec scripts/deno.sh compile --allow-read --allow-write --allow-ffi --allow-env --allow-run=qemu-img \
  "${args[@]}" --output build/instar main.ts
