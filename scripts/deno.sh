#!/usr/bin/env bash
# Runs the pinned Deno from the npm registry. Resolves the binary once per
# machine (npx is slow to start) and caches its path under build/.
set -euo pipefail
DENO_VERSION=2.9.6
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="$here/build/.deno-path"
if [[ -f "$cache" ]] && [[ -x "$(cat "$cache")" ]] && [[ "$("$(cat "$cache")" --version 2>/dev/null | head -1)" == "deno $DENO_VERSION"* ]]; then
  exec "$(cat "$cache")" "$@"
fi
mkdir -p "$here/build"
path="$(npx -y "deno@$DENO_VERSION" eval 'console.log(Deno.execPath())' 2>/dev/null | tail -1)"
if [[ ! -x "$path" ]]; then
  echo "instar: could not install deno@$DENO_VERSION from the npm registry" >&2
  exit 1
fi
echo "$path" > "$cache"
exec "$path" "$@"
