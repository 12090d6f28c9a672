/* The format table: which `struct layer_ops` reads a layer of format FMT_*. */
#ifndef INSTAR_CHAIN_FORMATS_H
#define INSTAR_CHAIN_FORMATS_H
#include "layer.h"

/* The ops for fmt, or NULL when this program has no driver for it
 * (FMT_AUTO, unknown numbers, formats not linked into the program). */
const struct layer_ops *chain_format_ops(uint32_t fmt);
#endif
