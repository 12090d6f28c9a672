/*
 * Opening one layer of a backing chain, shared by the operations that walk
 * a chain (map, the read path): input i is a layer, input 0 is probed when
 * the host did not name its format, lower layers must be named by the host
 * (it resolved them through its allowlist), and each layer's readable
 * length is what qemu's bdrv_getlength gives.
 */
#ifndef INSTAR_QCOW2_LAYER_H
#define INSTAR_QCOW2_LAYER_H
#include "qcow2.h"
#include "map.h"

/* Opens input i with the format the host asked for. On success sets *fmt,
 * *length and, for qcow2 layers, q and m. Emits an ERROR record and returns
 * -1 on failure. */
int chain_layer_open(uint32_t i, uint32_t requested, struct reader *r, uint32_t *fmt, uint64_t *length,
                     struct qcow2 *q, struct qcow2_mapper *m);

#endif
