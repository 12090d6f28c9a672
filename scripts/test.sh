#!/usr/bin/env bash
# The whole test suite: installs what it needs (as root), builds the VMM and
# guests, runs `deno test`, and ends with a plain "N passed, N failed" line
# (CI reads that line; deno's own summary has another shape).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
bash scripts/deps.sh || exit 1
bash scripts/build.sh || { echo "0 passed, 1 failed"; exit 1; }
# The guest programs' hosted builds: tests run them as the VM's stand-in
# where /dev/kvm is not usable (tests/support/kvm.ts), and compare with them.
make -s -C guest/host || { echo "0 passed, 1 failed"; exit 1; }
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Two test files at a time (DENO_JOBS=2, the machine's two cores): most of a
# test's time is spent in qemu-img, qemu-io and guest processes it waits on.
# INSTAR_FULL_TESTS=1 (deno task test:full) runs the slow sweeps whole
# (tests/support/full.ts).
NO_COLOR=1 DENO_JOBS="${DENO_JOBS:-2}" scripts/deno.sh test -A --no-check=remote --parallel "$@" tests/ lib/ 2>&1 |
  tee "$log"
rc=${PIPESTATUS[0]}
# deno prints e.g. "ok | 12 passed (40 steps) | 0 failed (3s)".
summary="$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -1)"
passed="$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$summary")"
failed="$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$summary")"
[[ "$passed" =~ ^[0-9]+$ ]] || passed=0
[[ "$failed" =~ ^[0-9]+$ ]] || failed=$(( rc == 0 ? 0 : 1 ))
if (( rc != 0 && failed == 0 )); then failed=1; fi
echo "$passed passed, $failed failed"
exit "$rc"
