/*
 * The format table: FMT_* -> the format's layer_ops. Each row names the ops
 * through a weak reference, so a program links exactly the formats its
 * sources in guest/ops.mk list: an ops table whose guest/<fmt>/layer.c is
 * not linked is NULL here and chain_format_ops refuses that format
 * (GERR_BAD_PARAMS from the chain opener), as for an unknown number.
 *
 * Adding a format: write guest/<fmt>/layer.c defining
 * `const struct layer_ops <fmt>_layer_ops`, add its row below, and list the
 * file in the ops.mk sources of the programs that should read it. Nothing
 * else in guest/chain/ or guest/ops/ names a format.
 */
#include "formats.h"

extern const struct layer_ops raw_layer_ops __attribute__((weak));
extern const struct layer_ops qcow2_layer_ops __attribute__((weak));

static const struct layer_ops *const table[] = {
    [FMT_RAW] = &raw_layer_ops,
    [FMT_QCOW2] = &qcow2_layer_ops,
};

const struct layer_ops *chain_format_ops(uint32_t fmt)
{
    return fmt < sizeof table / sizeof table[0] ? table[fmt] : NULL;
}
