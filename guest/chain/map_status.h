/* qemu-img map's view of a chain: get_block_status in qemu-img.c over io.c's
 * bdrv_co_block_status, one entry (MAP_* flags, depth) per call. */
#ifndef INSTAR_CHAIN_MAP_STATUS_H
#define INSTAR_CHAIN_MAP_STATUS_H
#include "chain.h"

struct map_entry {
    uint64_t start, length, offset;
    uint32_t flags, depth; /* MAP_*; the layer that answered */
    uint32_t input;        /* the file offset points into (a layer may span files: vmdk) */
};

/*
 * The entry at [pos, pos+bytes) (inside the top layer, bytes > 0) of chain c
 * opened with CHAIN_F_MAP: descends while a layer reports neither DATA nor
 * ZERO. 0, or -1 after an ERROR record.
 */
int map_chain_status(struct chain *c, uint64_t pos, uint64_t bytes, struct map_entry *e);
#endif
