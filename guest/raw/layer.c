/*
 * The raw format as a chain layer: the file itself, its size rounded up to
 * whole sectors (qemu's raw size; the tail reads as zeroes). Every run is
 * BDRV_BLOCK_RAW at the same offset: the chain asks the file for holes.
 */
#include "../chain/layer.h"

static __attribute__((cold)) int raw_open(struct layer *l)
{
    uint64_t sz = l->r.size;
    l->length = sz + ((512 - (sz & 511)) & 511);
    if (l->length < sz) return rt_error(l->r.input, GERR_BAD_IMAGE_SIZE, sz, 0, 0);
    return 0;
}

static int raw_block_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    (void)l;
    *len = bytes;
    *host = pos;
    return LS_RAW | LS_OFFSET_VALID;
}

const struct layer_ops raw_layer_ops = {
    .format = FMT_RAW,
    .open = raw_open,
    .block_status = raw_block_status,
    .read = NULL,
};
