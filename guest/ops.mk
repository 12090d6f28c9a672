# Operation programs and the sources each links (paths relative to guest/).
# guest/Makefile builds the freestanding binaries from this list;
# guest/host/Makefile builds the hosted test executables from it.
GUEST_OPS := info check map convert convert_zlib convert_zstd compare resize_scan
VHDX_SRCS := vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c
info_SRCS := ops/info.c vpc/vpc.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c $(VHDX_SRCS)
info_LIBS :=
check_SRCS := ops/check.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c $(VHDX_SRCS)
check_LIBS :=
map_SRCS := ops/map.c qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
map_LIBS :=
convert_SRCS := ops/convert.c qcow2/read.c qcow2/layer.c qcow2/compress.c qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
convert_LIBS := z zstd
convert_zlib_SRCS := ops/convert_zlib.c $(filter-out ops/convert.c,$(convert_SRCS))
convert_zlib_LIBS := z zstd
convert_zstd_SRCS := ops/convert_zstd.c compress/zstd_trim.c $(filter-out ops/convert.c,$(convert_SRCS))
# zstd_min: libzstd.a trimmed to fit 384 KiB (guest/compress/zstd_trim.c).
convert_zstd_LIBS := z zstd_min
resize_scan_SRCS := ops/resize_scan.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
resize_scan_LIBS :=
compare_SRCS := ops/compare.c qcow2/read.c qcow2/layer.c qcow2/compress.c qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
compare_LIBS := z zstd
