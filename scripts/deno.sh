#!/usr/bin/env bash
# Runs the pinned Deno from the npm registry. Resolves the binary once per
# machine (npx is slow to start) and caches its path under build/.
set -euo pipefail
DENO_VERSION=2.9.6
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="$here/build/.deno-path"
# The cache holds the binary's path and, on its second line, the version that
# binary reported when it was cached: asking it again (`deno --version`) cost
# every call ~17 ms. A cache of the old one-line shape is checked the slow way.
if [[ -f "$cache" ]]; then
  { read -r path; read -r version; } <"$cache" || true
  if [[ -x "$path" ]] && [[ "${version:-}" == "deno $DENO_VERSION"* ]]; then
    exec "$path" "$@"
  fi
  if [[ -x "$path" ]] && [[ "$("$path" --version 2>/dev/null | head -1)" == "deno $DENO_VERSION"* ]]; then
    printf '%s\n%s\n' "$path" "$("$path" --version | head -1)" >"$cache"
    exec "$path" "$@"
  fi
fi
mkdir -p "$here/build"
path="$(npx -y "deno@$DENO_VERSION" eval 'console.log(Deno.execPath())' 2>/dev/null | tail -1)"
if [[ ! -x "$path" ]]; then
  echo "instar: could not install deno@$DENO_VERSION from the npm registry" >&2
  exit 1
fi
printf '%s\n%s\n' "$path" "$("$path" --version | head -1)" >"$cache"
exec "$path" "$@"
