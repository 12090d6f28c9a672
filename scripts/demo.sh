#!/usr/bin/env bash
# instar's main job on a fresh machine: install what is missing (as root),
# build the VMM and guest programs, make a small qcow2 with qemu-img and show
# `instar info` and `instar check` for it, parsed inside the KVM sandbox.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
bash scripts/deps.sh
bash scripts/build.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
qemu-img create -q -f qcow2 "$work/demo.qcow2" 64M
qemu-io -f qcow2 -c "write -P 0xab 0 1M" -c "write -z 8M 1M" "$work/demo.qcow2" >/dev/null
cd "$work"
echo "\$ instar info demo.qcow2"
"$here/scripts/deno.sh" run -A "$here/main.ts" info demo.qcow2
echo
echo "\$ instar check demo.qcow2"
"$here/scripts/deno.sh" run -A "$here/main.ts" check demo.qcow2
