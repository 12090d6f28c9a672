#!/usr/bin/env bash
# One self-contained executable: `deno compile` bundles main.ts with the
# base64-embedded VMM and guests (lib/embedded/), so nothing is read from the
# repo at run time. deno compile needs the `denort` runtime; where it cannot
# be downloaded, point DENORT_BIN at a denort binary of the same version.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
[[ -f lib/embedded/index.ts ]] || bash scripts/build.sh
if [[ -n "${DENORT_BIN:-}" && ! -x "$DENORT_BIN" ]]; then
  echo "instar: DENORT_BIN=$DENORT_BIN is not an executable" >&2
  exit 1
fi
exec scripts/deno.sh compile --allow-read --allow-write --allow-ffi --allow-env --allow-run=qemu-img \
  --include lib/vmm/sandbox.ts --output build/instar main.ts
