#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, only those missing.
# As root: apt-get update once, then install. Otherwise: list what is
# missing and exit 1.
set -euo pipefail
want=(gcc make binutils libc6-dev zlib1g-dev libzstd-dev qemu-utils
  libvhdi-utils # vhdiinfo: an independent VHD/VHDX reader for tests/convert_vhd_test.ts
  libvmdk-utils # vmdkinfo: an independent VMDK reader (tests of convert -O vmdk)
  python3-vmdkstream # an independent streamOptimized VMDK writer (tests of VMDK reading)
  nettle-dev # libnettle.a: AES/XTS/SHA/PBKDF2 linked into the LUKS guests (guest/luks/)
  cryptsetup-bin # cryptsetup luksFormat: LUKS1 images made by an independent tool (tests/luks_test.ts)
  libargon2-dev # libargon2.a: LUKS2 Argon2 key slots, linked into convert_luks2/compare_luks2 (guest/luks2/)
  python3-cryptography # AES-XTS/CBC by an independent implementation: LUKS2 payloads in tests/luks2_test.ts
  genisoimage # real ISO 9660 images for tests/inspect_test.ts (inspect's iso and polyglot rows)
  clang libclang-rt-dev) # clang + its ASan/libFuzzer runtimes: fuzz/ (the fuzz targets)
missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "instar: missing Debian packages: ${missing[*]} (install them as root, e.g. apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "instar: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
