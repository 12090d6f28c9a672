#include "layer.h"
#include "../probe/probe.h"

int chain_layer_open(uint32_t i, uint32_t requested, struct reader *r, uint32_t *fmt, uint64_t *length,
                     struct qcow2 *q, struct qcow2_mapper *m)
{
    reader_from_input(r, i);
    int f = (int)requested;
    if (i == 0) {
        f = probe_input(r, requested);
        if (f < 0) return -1;
    } else if (requested == FMT_AUTO) {
        return rt_error(i, GERR_BAD_PARAMS, 1, 0, 0); /* the host names backing formats */
    }
    *fmt = (uint32_t)f;
    if (f == FMT_RAW) {
        /* qemu's raw size is the file size rounded up to whole sectors; the
         * tail reads as zeroes (reader_read zero-fills past the end). */
        uint64_t sz = r->size;
        *length = sz + ((512 - (sz & 511)) & 511);
        if (*length < sz) return rt_error(i, GERR_BAD_IMAGE_SIZE, sz, 0, 0);
        return 0;
    }
    if (qcow2_open(q, r, 0)) return -1;
    /* bdrv_getlength: whole sectors (total_sectors = size / 512). */
    *length = q->size & ~511ull;
    return qcow2_mapper_init(m, q);
}
