# Operation programs and the sources each links (paths relative to guest/).
# guest/Makefile builds the freestanding binaries from this list;
# guest/host/Makefile builds the hosted test executables from it.
GUEST_OPS := info check map convert convert_zlib convert_zstd compare resize_scan inspect rebase_diff copy_runs snapshot_scan bitmap_scan convert_luks compare_luks convert_qcrypt compare_qcrypt convert_luks2 compare_luks2 luks_write qcow2_encrypt vmdk_stream convert_crypt_zlib convert_qcrypt_zstd convert_luks2_zstd luks_write_luks2 qcow2_encrypt_luks2 compare_luks_other convert_crypt_other convert_crypt_other_zlib convert_crypt_other_zstd
# The format-independent chain (guest/chain/) and the formats it opens
# (each format's layer.c fills one row of guest/chain/formats.c).
CHAIN_SRCS := chain/open.c chain/formats.c
VPC_SRCS := vpc/vpc.c
VHDX_SRCS := vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c
VMDK_SRCS := vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c
FORMAT_SRCS := qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c raw/layer.c probe/probe.c raw/partition.c \
               $(VPC_SRCS) vpc/layer.c $(VHDX_SRCS) vhdx/layer.c $(VMDK_SRCS) vmdk/layer.c
# Reading a chain (convert, compare): also qcow2's compressed clusters.
# LUKS2's header and JSON metadata (guest/luks2/), for info and the LUKS2 readers.
LUKS2_HDR_SRCS := luks2/header.c luks2/meta.c luks2/json.c
READ_SRCS := $(CHAIN_SRCS) chain/read.c chain/status.c chain/extents.c qcow2/compressed.c qcow2/compress.c vmdk/grain.c \
             $(FORMAT_SRCS)
info_SRCS := ops/info.c luks/header.c $(LUKS2_HDR_SRCS) luks/nettle_shim.c qcow2/crypt_header.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c $(VPC_SRCS) $(VHDX_SRCS) $(VMDK_SRCS)
# nettle: SHA-256 for the LUKS2 header checksum.
info_LIBS := nettle
check_SRCS := ops/check.c qcow2/check.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c $(VHDX_SRCS) \
              $(VMDK_SRCS) vmdk/check.c
check_LIBS :=
map_SRCS := ops/map.c $(CHAIN_SRCS) chain/map_status.c qcow2/prealloc.c $(FORMAT_SRCS)
map_LIBS :=
convert_SRCS := ops/convert.c $(READ_SRCS)
convert_LIBS := z zstd
convert_zlib_SRCS := ops/convert_zlib.c $(filter-out ops/convert.c,$(convert_SRCS))
convert_zlib_LIBS := z zstd
# convert_zstd: every reader, libzstd and zlib trimmed to fit 384 KiB
# (guest/compress/zstd_trim.c, zlib_trim.c).
convert_zstd_SRCS := ops/convert_zstd.c compress/zstd_trim.c compress/zlib_trim.c \
                     $(filter-out ops/convert.c,$(convert_SRCS))
# zstd_min: libzstd.a trimmed to fit 384 KiB (guest/compress/zstd_trim.c).
convert_zstd_LIBS := z zstd_min
resize_scan_SRCS := ops/resize_scan.c qcow2/resize_scan.c qcow2/refscan.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c \
                    vpc/resize_scan.c $(VPC_SRCS) vhdx/resize_scan.c $(VHDX_SRCS) vmdk/resize_scan.c $(VMDK_SRCS)
resize_scan_LIBS :=
compare_SRCS := ops/compare.c $(READ_SRCS)
compare_LIBS := z zstd
rebase_diff_SRCS := ops/rebase_diff.c $(READ_SRCS)
rebase_diff_LIBS := z zstd
copy_runs_SRCS := ops/copy_runs.c $(READ_SRCS)
copy_runs_LIBS := z zstd
# inspect: every header parser plus guest/inspect/ (an upload gate's checks).
INSPECT_SRCS := inspect/core.c inspect/qcow2.c inspect/vmdk.c inspect/vhd.c inspect/disk.c
inspect_SRCS := ops/inspect.c $(INSPECT_SRCS) qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c \
                $(VPC_SRCS) $(VHDX_SRCS) $(VMDK_SRCS)
inspect_LIBS :=
snapshot_scan_SRCS := ops/snapshot_scan.c qcow2/snapshot_scan.c qcow2/refscan.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
snapshot_scan_LIBS :=
bitmap_scan_SRCS := ops/bitmap_scan.c qcow2/bitmap_scan.c qcow2/resize_scan.c qcow2/refscan.c qcow2/header.c qcow2/tables.c probe/probe.c \
                    raw/partition.c $(VPC_SRCS) $(VHDX_SRCS) $(VMDK_SRCS)
bitmap_scan_LIBS :=
# Reading LUKS1 (guest/luks/): convert and compare with the LUKS layer and
# Debian's libnettle.a (its libc wants in luks/nettle_shim.c); the host runs
# these only for a chain with an encrypted input, the only runs that get a
# passphrase (params.secret).
LUKS_SRCS := luks/header.c luks/crypto.c luks/layer.c luks/nettle_shim.c
# A LUKS source has no backing file: convert_luks reads nothing but it.
# compare_luks compares it with a raw or qcow2 image (vpc/vhdx/vmdk left
# out to stay under 384 KiB; the host refuses that pairing).
LUKS_READ_SRCS := $(CHAIN_SRCS) chain/read.c chain/status.c chain/extents.c raw/layer.c raw/partition.c \
                  probe/probe.c $(LUKS_SRCS)
convert_luks_SRCS := ops/convert.c $(LUKS_READ_SRCS)
convert_luks_LIBS := z nettle
compare_luks_SRCS := ops/compare.c $(LUKS_READ_SRCS) qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c \
                     qcow2/compressed.c qcow2/compress.c
compare_luks_LIBS := z zstd nettle
# compare_luks_other: an encrypted image (LUKS1, LUKS2, qcow2 with LUKS or
# AES, over any backing chain) against a vpc, vhdx or vmdk image, or LUKS2
# against an encrypted qcow2: the readers of convert_crypt_zlib
# (CRYPT_READ_SRCS, below) with vpc's, vhdx's and vmdk's; libzstd trimmed
# as for convert_zstd, to stay under 384 KiB (~370 KiB).
compare_luks_other_SRCS = ops/compare.c $(CRYPT_READ_SRCS) compress/zstd_trim.c $(VPC_SRCS) vpc/layer.c \
                          $(VHDX_SRCS) vhdx/layer.c $(VMDK_SRCS) vmdk/layer.c vmdk/grain.c
compare_luks_other_LIBS := z zstd_min nettle argon2
# Reading encrypted qcow2 (guest/qcow2/crypt*.c): the LUKS header in the
# image's header clusters or the legacy AES key, with the qcow2 reader,
# nettle, and the LUKS layer too, for the runs that get a passphrase.
QCRYPT_SRCS := qcow2/crypt_header.c qcow2/crypt_layer.c $(LUKS_SRCS)
QCRYPT_READ_SRCS := $(CHAIN_SRCS) chain/read.c chain/status.c chain/extents.c raw/layer.c raw/partition.c \
                    probe/probe.c qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c qcow2/compressed.c \
                    qcow2/compress.c $(QCRYPT_SRCS)
convert_qcrypt_SRCS := ops/convert.c $(QCRYPT_READ_SRCS)
convert_qcrypt_LIBS := z zstd nettle
compare_qcrypt_SRCS := ops/compare.c $(QCRYPT_READ_SRCS)
compare_qcrypt_LIBS := z zstd nettle
# Reading LUKS2 (guest/luks2/): luks2/layer.c fills the luks row of the
# format table with LUKS1 and LUKS2 (in place of luks/layer.c); Argon2 key
# slots need Debian's libargon2.a (its libc wants in luks2/argon2_shim.c).
# The host runs these only for a LUKS2 input.
LUKS2_SRCS := luks/header.c luks/crypto.c luks/nettle_shim.c $(LUKS2_HDR_SRCS) luks2/crypto.c luks2/layer.c \
              luks2/argon2_shim.c
LUKS2_READ_SRCS := $(CHAIN_SRCS) chain/read.c chain/status.c chain/extents.c raw/layer.c raw/partition.c \
                   probe/probe.c $(LUKS2_SRCS)
convert_luks2_SRCS := ops/convert.c $(LUKS2_READ_SRCS)
convert_luks2_LIBS := z nettle argon2
# compare_luks2: against raw, qcow2 or LUKS1/LUKS2 (libzstd trimmed as for convert_zstd, to fit 384 KiB).
compare_luks2_SRCS := ops/compare.c $(LUKS2_READ_SRCS) qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c \
                      qcow2/compressed.c qcow2/compress.c compress/zstd_trim.c
compare_luks2_LIBS := z zstd_min nettle argon2
# Writing LUKS1 (create -f luks, convert -O luks): guest/luks/write.c makes
# the header and key slot 0 and encrypts the payload; the source may be any
# format instar reads (LUKS1 and encrypted qcow2 included: QCRYPT_SRCS; not LUKS2).
# libzstd trimmed as convert_zstd's
# (compress/zstd_trim.c: no legacy zstd frames) to stay under 384 KiB.
# ops/luks_into.c: convert -n into an existing LUKS1 image (LUKS_WRITE_F_INTO).
luks_write_SRCS := ops/luks_write.c ops/luks_into.c luks/write.c compress/zstd_trim.c $(READ_SRCS) $(QCRYPT_SRCS)
luks_write_LIBS := z zstd_min nettle
# Encrypted qcow2 output (convert -O qcow2 -o encrypt.format=luks|aes): the
# LUKS header of luks/write.c and the data clusters encrypted as they are
# packed; every reader, encrypted qcow2 and LUKS sources included (zstd
# trimmed as for luks_write, to stay under 384 KiB). ops/qcow2_crypt_into.c: convert
# -n into an existing encrypted qcow2 (QCOW2_ENC_F_INTO).
qcow2_encrypt_SRCS := ops/qcow2_encrypt.c ops/qcow2_encrypt_backing.c ops/qcow2_crypt_into.c luks/write.c compress/zstd_trim.c $(READ_SRCS) qcow2/crypt_header.c \
                      qcow2/crypt_layer.c $(LUKS_SRCS)
qcow2_encrypt_LIBS := z zstd_min nettle
# The two writers above with a LUKS2 source (cryptsetup's; Argon2 and the
# JSON metadata do not fit beside every other reader): convert -O luks and
# -O qcow2 -o encrypt.* from a LUKS2 image (lib/convert/luks_target.ts,
# qcow2_encrypt_target.ts pick them). The LUKS2 reader's chain only (raw
# under it); qcow2_encrypt_luks2 with the INTO mode too (and its PLAIN target).
luks_write_luks2_SRCS := ops/luks_write.c ops/luks_into.c luks/write.c $(LUKS2_READ_SRCS)
luks_write_luks2_LIBS := z nettle argon2
qcow2_encrypt_luks2_SRCS := ops/qcow2_encrypt_luks2.c ops/qcow2_encrypt_backing.c ops/qcow2_crypt_into.c luks/write.c \
                            $(LUKS2_READ_SRCS) qcow2/header.c qcow2/tables.c qcow2/crypt_header.c
qcow2_encrypt_luks2_LIBS := z nettle argon2
# A streamOptimized VMDK read from stdin in one pass (lib/convert/stdin_vmdk.ts):
# the marker walk, the header checks and zlib's inflate (vmdk/grain.c).
vmdk_stream_SRCS := ops/vmdk_stream.c vmdk/stream.c vmdk/grain.c $(VMDK_SRCS)
vmdk_stream_LIBS := z
# Compressed output (convert -c, streamOptimized vmdk) from an encrypted
# source (lib/convert/pipeline.ts runFor picks the program): the compressor
# of convert_zlib / convert_zstd with only the readers an encrypted chain
# needs. convert_crypt_zlib reads all of them (qcow2 LUKS/AES over qcow2 or
# raw backing files, LUKS1, LUKS2: luks2/layer.c in place of luks/layer.c);
# with the zstd compressor they do not fit 384 KiB together, so
# convert_qcrypt_zstd reads encrypted qcow2 (without libzstd's decoder,
# compress/zstd_nodec.c: the host refuses a zstd-compressed layer there) and
# convert_luks2_zstd LUKS1 and LUKS2. libzstd trimmed as in convert_zstd.
CRYPT_READ_SRCS := $(filter-out luks/layer.c,$(QCRYPT_READ_SRCS)) $(LUKS2_HDR_SRCS) luks2/crypto.c luks2/layer.c \
                   luks2/argon2_shim.c
convert_crypt_zlib_SRCS := ops/convert_crypt_zlib.c compress/zstd_trim.c compress/zlib_trim.c $(CRYPT_READ_SRCS)
convert_crypt_zlib_LIBS := z zstd_min nettle argon2
convert_qcrypt_zstd_SRCS := ops/convert_qcrypt_zstd.c compress/zstd_trim.c compress/zstd_nodec.c compress/zlib_trim.c \
                            $(QCRYPT_READ_SRCS)
convert_qcrypt_zstd_LIBS := z zstd_min nettle
convert_luks2_zstd_SRCS := ops/convert_luks2_zstd.c compress/zstd_trim.c $(LUKS2_READ_SRCS)
convert_luks2_zstd_LIBS := z zstd_min nettle argon2
# convert_crypt_other: an encrypted chain (qcow2 with LUKS or AES, LUKS1,
# LUKS2) over or beside vpc, vhdx or vmdk layers (lib/convert/pipeline.ts
# runFor picks it for exactly those chains): compare_luks_other's readers
# with convert.c (libzstd trimmed as for convert_zstd, to fit 384 KiB).
convert_crypt_other_SRCS = ops/convert.c $(CRYPT_READ_SRCS) compress/zstd_trim.c $(VPC_SRCS) vpc/layer.c \
                           $(VHDX_SRCS) vhdx/layer.c $(VMDK_SRCS) vmdk/layer.c vmdk/grain.c
convert_crypt_other_LIBS := z zstd_min nettle argon2
# convert_crypt_other_zlib: the same chains with the zlib compressor
# (convert -c, streamOptimized vmdk): encrypted qcow2 and LUKS1 with every
# plain reader, without LUKS2 (Argon2 and the JSON metadata do not fit
# beside them; the host refuses that pairing). convert_crypt_other_zstd:
# with the zstd compressor, also without libzstd's decoder (as
# convert_qcrypt_zstd: the host refuses a zstd-compressed layer there).
convert_crypt_other_zlib_SRCS = ops/convert_crypt_zlib.c compress/zlib_trim.c compress/zstd_trim.c \
                                $(QCRYPT_READ_SRCS) $(VPC_SRCS) vpc/layer.c $(VHDX_SRCS) vhdx/layer.c \
                                $(VMDK_SRCS) vmdk/layer.c vmdk/grain.c
convert_crypt_other_zlib_LIBS := z zstd_min nettle
convert_crypt_other_zstd_SRCS = ops/convert_qcrypt_zstd.c compress/zstd_trim.c compress/zstd_nodec.c compress/zlib_trim.c \
                                $(QCRYPT_READ_SRCS) $(VPC_SRCS) vpc/layer.c $(VHDX_SRCS) vhdx/layer.c \
                                $(VMDK_SRCS) vmdk/layer.c vmdk/grain.c
convert_crypt_other_zstd_LIBS := z zstd_min nettle
