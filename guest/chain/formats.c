/*
 * The format table: FMT_* -> the format's layer_ops. Each row names the ops
 * through a weak reference, so a program links exactly the formats its
 * sources in guest/ops.mk list: a row whose guest/<fmt>/layer.c is not
 * linked yields NULL and chain_format_ops refuses that format
 * (GERR_BAD_PARAMS from the chain opener), as for an unknown number.
 *
 * Adding a format: write guest/<fmt>/layer.c defining
 * `const struct layer_ops <fmt>_layer_ops`, add one ROW line below, and
 * list the format's files in the ops.mk sources of the programs that should
 * read it (until then the row is inert). Nothing else in guest/chain/ or
 * guest/ops/ names a format. The rows are switch cases, not an array of
 * pointers: that keeps the table out of .rodata (convert_zstd stays at
 * its size).
 */
#include "formats.h"

#define ROW(fmt, ops)                                                       \
    case fmt: {                                                             \
        extern const struct layer_ops ops __attribute__((weak));           \
        return &ops;                                                        \
    }

const struct layer_ops *chain_format_ops(uint32_t fmt)
{
    switch (fmt) {
    ROW(FMT_RAW, raw_layer_ops)
    ROW(FMT_QCOW2, qcow2_layer_ops)
    ROW(FMT_VPC, vpc_layer_ops)
    ROW(FMT_VHDX, vhdx_layer_ops)
    ROW(FMT_VMDK, vmdk_layer_ops)
    ROW(FMT_LUKS, luks_layer_ops)
    default: return NULL;
    }
}
