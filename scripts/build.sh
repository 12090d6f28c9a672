#!/usr/bin/env bash
# Builds everything instar embeds: the VMM shared library, the guest
# binaries (plus test-only hostile guests), then the generated TS modules.
#   scripts/build.sh          (also: scripts/deno.sh task build)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
deno() { "$here/scripts/deno.sh" "$@"; }

"$here/scripts/deps.sh"

# 1. The ABI header must match lib/abi/spec.ts; regenerate it when stale.
if ! deno run --allow-read scripts/gen_abi.ts --check >/dev/null 2>&1; then
  echo "build: guest/include/abi.h is stale, regenerating" >&2
  deno run --allow-read --allow-write scripts/gen_abi.ts
  deno run --allow-read scripts/gen_abi.ts --check
fi

# 2. The VMM (vmm/*.c; vmm/serve.c is the service's socket side).
mkdir -p build
CC="${CC:-cc}"
"$CC" -D_GNU_SOURCE -O2 -fPIC -shared -Wall -Wextra -Werror -fstack-protector-strong \
  -D_FORTIFY_SOURCE=2 -fvisibility=hidden -Wl,-z,relro,-z,now -Wl,-z,noexecstack \
  -o build/libinstar_vmm.so.tmp vmm/*.c -lpthread
mv build/libinstar_vmm.so.tmp build/libinstar_vmm.so

# 2b. The thin client (`instar install-client` writes it; docs/service.md).
"$CC" -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -fstack-protector-strong -D_FORTIFY_SOURCE=2 -fPIE -pie \
  -Wl,-z,relro,-z,now -Wl,-z,noexecstack -s -o build/instar-client.tmp vmm/client/instar_client.c
mv build/instar-client.tmp build/instar-client

# 3. Guests (ops from guest/ops.mk, test guests from tests/guests/*.c).
make -s -C guest -j"$(nproc)" all

# 4. Embedded modules.
deno run --allow-read=. --allow-write=lib/embedded scripts/embed.ts
