# Operation programs and the sources each links (paths relative to guest/).
# guest/Makefile builds the freestanding binaries from this list;
# guest/host/Makefile builds the hosted test executables from it.
GUEST_OPS := info check map flatten
info_SRCS := ops/info.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
info_LIBS :=
check_SRCS := ops/check.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
check_LIBS :=
map_SRCS := ops/map.c qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
map_LIBS :=
flatten_SRCS := ops/flatten.c qcow2/read.c qcow2/layer.c qcow2/compress.c qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
flatten_LIBS := z zstd
