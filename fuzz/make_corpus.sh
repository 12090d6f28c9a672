#!/usr/bin/env bash
# Seed corpora for the C fuzz targets, from images qemu-img and qemu-io make
# (small cluster sizes keep each image a few KiB, so mutations hit
# metadata rather than data):
#   fuzz/corpus/<target>/<sha1>   (generated, not committed)
# usage: fuzz/make_corpus.sh [OUT_DIR]     (default fuzz/corpus)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/fuzz/corpus}
command -v qemu-img >/dev/null || { echo "make_corpus.sh: qemu-img not found (scripts/deps.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p imgs

q() { qemu-img "$@" >/dev/null; }
io() { qemu-io "$@" >/dev/null; }

# qcow2 images: every header feature qemu-img can write, with some data,
# zero and compressed clusters, and small clusters so tables stay small.
n=0
mk() { # mk NAME SIZE OPTIONS [qemu-io commands...]
  local name=$1 size=$2 opts=$3; shift 3
  q create -f qcow2 ${opts:+-o "$opts"} "imgs/$name.qcow2" "$size"
  local cmds=()
  for c in "$@"; do cmds+=(-c "$c"); done
  if [[ ${#cmds[@]} -gt 0 ]]; then io -f qcow2 "${cmds[@]}" "imgs/$name.qcow2"; fi
  n=$((n + 1))
}
mk empty512 64K cluster_size=512
mk data512 64K cluster_size=512 "write -P 0x11 0 4k" "write -z 8k 1k" "write -P 0x22 32k 512"
mk comp512 64K cluster_size=512 "write -c -P 0x33 0 512" "write -c 4k 512" "write -P 1 8k 512"
mk zstd512 64K cluster_size=512,compression_type=zstd "write -c -P 0x44 0 512" "write -c -P 0x45 1k 512"
mk v2 64K cluster_size=512,compat=0.10 "write -P 5 0 1k" "write -z 2k 512"
mk rc1 64K cluster_size=512,refcount_bits=1 "write -P 6 0 1k"
mk rc2 64K cluster_size=512,refcount_bits=2 "write -P 6 0 1k"
mk rc4 64K cluster_size=512,refcount_bits=4 "write -P 6 0 1k"
mk rc8 64K cluster_size=512,refcount_bits=8 "write -P 6 0 1k"
mk rc32 64K cluster_size=512,refcount_bits=32 "write -P 6 0 1k"
mk rc64 64K cluster_size=512,refcount_bits=64 "write -P 6 0 1k"
mk lazy 64K cluster_size=512,lazy_refcounts=on "write -P 7 0 1k"
mk extl2 256K cluster_size=16K,extended_l2=on "write -P 8 0 2k" "write -z 4k 1k" "write -P 9 32k 16k"
mk big1k 1M cluster_size=1024 "write -P 1 0 1k" "write -P 2 512k 2k" "write -z 768k 1k"
head -c 65536 /dev/zero > imgs/base.raw
mk backing 64K cluster_size=512,backing_file=base.raw,backing_fmt=raw "write -P 3 0 512"
q create -f qcow2 -o cluster_size=512,data_file=imgs/ext.data imgs/datafile.qcow2 64K
q create -f qcow2 -o cluster_size=512,data_file=imgs/ext2.data,data_file_raw=on imgs/datafile_raw.qcow2 64K
mk snap 64K cluster_size=512 "write -P 1 0 1k"
q snapshot -c first imgs/snap.qcow2
io -f qcow2 -c "write -P 2 0 512" imgs/snap.qcow2
q snapshot -c second imgs/snap.qcow2
mk bitmap 64K cluster_size=512 "write -P 1 0 1k"
q bitmap --add imgs/bitmap.qcow2 b0
q bitmap --add --granularity 512 imgs/bitmap.qcow2 b1
# qemu benchmarks PBKDF iterations from CPU time and can fail on a busy
# machine ("Unable to get accurate CPU usage"); a short iter-time and a
# retry keep the seed, and a seed corpus may go without it if both fail.
for try in 1 2 3; do
  qemu-img create -q -f qcow2 -o cluster_size=512,encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
    --object secret,id=s0,data=pw imgs/luks.qcow2 64K && break
done || true
# The legacy AES method (passphrase "pw"), with data written through the key.
q create -f qcow2 -o cluster_size=512,encrypt.format=aes,encrypt.key-secret=s0 --object secret,id=s0,data=pw \
  imgs/aes.qcow2 64K
qemu-io --object secret,id=s0,data=pw --image-opts driver=qcow2,encrypt.key-secret=s0,file.filename=imgs/aes.qcow2 \
  -c "write -P 1 0 1k" -c "write -P 2 2048 700" >/dev/null
q create -f qcow2 -o cluster_size=512,preallocation=metadata imgs/prealloc.qcow2 16K
q create -f qcow2 imgs/default64k.qcow2 1M

# Raw inputs for probing/partition detection: an empty file, zeroes, an
# MBR, a protective MBR + GPT header, other formats' heads.
python3 - <<'PY'
import struct
def mbr(entries, sig=True):
    b = bytearray(1024)
    for i, (status, typ, lba, count) in enumerate(entries):
        e = 446 + 16 * i
        b[e] = status; b[e + 4] = typ
        b[e + 8:e + 16] = struct.pack('<II', lba, count)
    if sig: b[510:512] = b'\x55\xaa'
    return b
open('imgs/zero.raw', 'wb').write(bytes(2048))
open('imgs/mbr.raw', 'wb').write(mbr([(0x80, 0x83, 2048, 4096)]))
g = mbr([(0, 0xee, 1, 0xffffffff)]); g[512:520] = b'EFI PART'
open('imgs/gpt.raw', 'wb').write(g)
open('imgs/nosig.raw', 'wb').write(mbr([(0, 0x83, 1, 1)], sig=False))
open('imgs/badstatus.raw', 'wb').write(mbr([(0x12, 0x83, 1, 1)]))
t = bytearray(2048); t[1536:1544] = b'conectix'
open('imgs/vpc_tail.raw', 'wb').write(t)
t = bytearray(2048); t[1536:1540] = b'koly'
open('imgs/dmg_tail.raw', 'wb').write(t)
PY
for f in vmdk vpc vhdx; do q create -f $f imgs/fmt.$f 1M; head -c 4096 imgs/fmt.$f > imgs/head_$f.raw; done
: > imgs/empty.raw

# Compressed clusters for qcow2_decompress: each compressed L2 entry of
# the images above, as "type, cluster_bits selector, descriptor, stream".
mkdir -p dec
python3 - <<'PY'
import glob, struct
for path in glob.glob('imgs/*.qcow2'):
    d = open(path, 'rb').read()
    if d[:4] != b'QFI\xfb': continue
    ver, = struct.unpack('>I', d[4:8])
    cb, = struct.unpack('>I', d[20:24])
    l1_size, = struct.unpack('>I', d[36:40]); l1_off, = struct.unpack('>Q', d[40:48])
    hl = struct.unpack('>I', d[100:104])[0] if ver == 3 else 72
    ctype = d[104] if hl > 104 else 0
    incompat = struct.unpack('>Q', d[72:80])[0] if ver == 3 else 0
    ent = 16 if incompat & 16 else 8
    shift = 62 - (cb - 8); mask = (1 << (cb - 8)) - 1
    for i in range(l1_size):
        l2 = struct.unpack('>Q', d[l1_off + 8 * i:l1_off + 8 * i + 8])[0] & 0x00fffffffffffe00
        if not l2: continue
        for j in range((1 << cb) // ent):
            e, = struct.unpack('>Q', d[l2 + ent * j:l2 + ent * j + 8])
            if not e & (1 << 62): continue
            off = e & ((1 << shift) - 1); n = (((e >> shift) & mask) + 1) * 512 - (off & 511)
            blob = bytes([ctype, cb - 9]) + struct.pack('>Q', e) + d[off:off + n]
            open('dec/%s_%d_%d' % (path.split('/')[-1], i, j), 'wb').write(blob)
PY
# And a few made by the zstd tool and zlib (raw deflate, 4 KiB window).
head -c 512 /dev/urandom > rnd; for t in rnd; do
  printf '\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00' > dec/zstd_cli; zstd -q -c rnd >> dec/zstd_cli; done
python3 -c "
import zlib
c = zlib.compressobj(6, zlib.DEFLATED, -12)
open('dec/zlib_py', 'wb').write(bytes([0, 0]) + bytes(8) + c.compress(b'instar' * 100) + c.flush())
"

# The LUKS payload area is 2 MiB of nothing useful to the parsers.
[ -f imgs/luks.qcow2 ] && truncate -s 64K imgs/luks.qcow2

# vpc: dynamic (2 MiB blocks, no data), force_size, fixed, and dynamic
# images whose block size is patched to 4 KiB before qemu-io writes (qemu
# allocates blocks of the header's size), so data blocks stay small.
mkdir -p vhd
q create -f vpc vhd/dyn.vhd 64M
q create -f vpc -o force_size=on vhd/force.vhd 65M
q create -f vpc -o subformat=fixed vhd/fixed.vhd 16K
for bs in 512 4096; do
  q create -f vpc "vhd/small$bs.vhd" 32K
  # dynamic header at 512: max_table_entries (+28) 128, block_size (+32)
  python3 -c "
import struct, sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
struct.pack_into('>II', b, 512 + 28, 128, int(sys.argv[2]))
open(p, 'wb').write(b)
" "vhd/small$bs.vhd" "$bs"
  io -f vpc -c "write -P 0x5a 0 1k" -c "write -P 0xa5 8k 512" -c "write -z 16k 512" "vhd/small$bs.vhd"
done

put() { # put TARGET FILE...
  local dir=$OUT/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do cp "$f" "$dir/$(sha1sum "$f" | cut -d' ' -f1)"; done
}
put qcow2_header imgs/*.qcow2
put qcow2_l1l2 imgs/*.qcow2
put qcow2_read imgs/*.qcow2 imgs/*.raw
put qcow2_refcount imgs/*.qcow2 imgs/*.raw
put raw_partition imgs/*.raw imgs/*.qcow2
put qcow2_decompress dec/*
put vpc vhd/*
# vhdx: images qemu-img makes, in fuzz/shim/vhdx_sparse.h's compact form.
mkdir -p vhdx
q create -f vhdx -o block_size=1M vhdx/dyn1m.vhdx 64M
io -f vhdx -c "write -P 0x11 0 1M" -c "write -z 8M 1M" -c "write -P 0x22 63M 4k" vhdx/dyn1m.vhdx
q create -f vhdx -o block_size=32M,log_size=2M vhdx/dyn32m.vhdx 1G
io -f vhdx -c "write -P 0x33 40M 1M" vhdx/dyn32m.vhdx
q create -f vhdx -o subformat=fixed,block_size=1M vhdx/fixed.vhdx 8M
q create -f vhdx vhdx/big.vhdx 64T
"$ROOT/scripts/deno.sh" run -A "$ROOT/fuzz/vhdx_seed.ts" vhdxc vhdx/*.vhdx
put vhdx vhdxc/*

# vmdk: every subformat qemu-img writes in one file, with data, zeroed
# grains and compressed grains; descriptors of the multi-file subformats.
mkdir -p vmdk vmdkd
q create -f vmdk vmdk/sparse.vmdk 1M
io -f vmdk -c "write -P 0x11 0 64k" -c "write -P 0x22 512k 4k" vmdk/sparse.vmdk
q create -f vmdk -o zeroed_grain=on,compat6=on vmdk/zeroed.vmdk 1M
io -f vmdk -c "write -P 0x33 64k 64k" -c "write -z 128k 128k" vmdk/zeroed.vmdk
q convert -O vmdk -o subformat=streamOptimized vmdk/sparse.vmdk vmdk/stream.vmdk
/usr/bin/python3 "$ROOT/fuzz/vmdk_seed.py" vmdk # small hand-made sparse and stream files
for s in monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
  q create -f vmdk -o subformat=$s vmdkd/$s.vmdk 3G
done
# the descriptors only (their extent files are gigabytes of holes)
put vmdk_desc vmdkd/monolithicFlat.vmdk vmdkd/twoGbMaxExtentSparse.vmdk vmdkd/twoGbMaxExtentFlat.vmdk
put vmdk_sparse vmdk/*
put vmdk_stream vmdk/stream.vmdk vmdk/stream_small.vmdk vmdk/sparse_small.vmdk
# the one-pass stdin reader (guest/vmdk/stream.c)
put vmdk_onepass vmdk/stream.vmdk vmdk/stream_small.vmdk
# seSparse extent files (qemu-img cannot create them: the tests' builder writes them)
mkdir -p sesparse
"$ROOT/scripts/deno.sh" run -A "$ROOT/fuzz/sesparse_seed.ts" sesparse
put vmdk_sesparse sesparse/*

# measure_scan: a format byte (0 qcow2, 1 raw, 2 vpc, 3 vhdx, 4 vmdk) and a target
# cluster_bits byte (7: 64 KiB) first.
mkdir -p scan
for f in imgs/*.qcow2; do { printf '\x00\x07'; cat "$f"; } > "scan/$(basename "$f")"; done
for f in imgs/*.raw; do { printf '\x01\x07'; cat "$f"; } > "scan/$(basename "$f")"; done
for f in vhd/*; do { printf '\x02\x07'; cat "$f"; } > "scan/vpc_$(basename "$f")"; done
for f in vhdxc/*; do { printf '\x03\x07'; cat "$f"; } > "scan/vhdx_$(basename "$f")"; done
for f in vmdk/*; do { printf '\x04\x07'; cat "$f"; } > "scan/vmdk_$(basename "$f")"; done
put measure_scan scan/*
# inspect: every image above that is small (the gate's checks over any format)
put inspect imgs/*.qcow2 imgs/*.raw vhd/* vmdk/* vmdkd/monolithicFlat.vmdk vmdkd/twoGbMaxExtentSparse.vmdk
# qcow2_crypt: the encrypted qcow2 images and a plain one.
put qcow2_crypt imgs/aes.qcow2 imgs/data512.qcow2 imgs/comp512.qcow2 $([ -f imgs/luks.qcow2 ] && echo imgs/luks.qcow2)
# luks: small LUKS1 images by cryptsetup (1000 PBKDF2 iterations, passphrase "pw",
# the payload right after the key slots), when cryptsetup is there.
mkdir -p luks
if command -v cryptsetup >/dev/null; then
  lk() { # lk NAME SIZE ALIGN CRYPTSETUP-OPTIONS...
    local name=$1 size=$2 align=$3; shift 3
    truncate -s "$size" "luks/$name"
    printf pw | cryptsetup luksFormat --batch-mode --type luks1 --pbkdf-force-iterations 1000 --key-file - \
      --align-payload "$align" "$@" "luks/$name" >/dev/null 2>&1
  }
  lk cbc128 560K 1048 --cipher aes-cbc-essiv:sha256 --key-size 128 --hash sha1
  lk xts256 1100K 2056 --cipher aes-xts-plain64 --key-size 256
  put luks luks/*
  # luks2: LUKS2 images (PBKDF2 and a small Argon2id key slot), their data 1 MiB in.
  mkdir -p luks2
  lk2() { # lk2 NAME CRYPTSETUP-OPTIONS...
    local name=$1; shift
    truncate -s 1100K "luks2/$name"
    printf pw | cryptsetup luksFormat --batch-mode --type luks2 --offset 2048 --key-file - "$@" "luks2/$name" \
      >/dev/null 2>&1
  }
  lk2 pbkdf2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  lk2 argon2id --pbkdf argon2id --pbkdf-memory 64 --pbkdf-force-iterations 4 --pbkdf-parallel 1
  put luks2 luks2/*
fi
for t in qcow2_header qcow2_l1l2 qcow2_read qcow2_refcount raw_partition qcow2_decompress measure_scan vpc vhdx \
  vmdk_desc vmdk_sparse vmdk_stream vmdk_sesparse inspect luks luks2 qcow2_crypt; do
  echo "$t: $(ls "$OUT/$t" | wc -l) inputs in $OUT/$t"
done
