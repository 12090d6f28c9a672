/*
 * Block status of a chain as qemu-img convert and compare see it:
 * bdrv_block_status_above(top, NULL) over io.c's bdrv_co_block_status —
 * ALLOCATED for runs with DATA or ZERO, the backing layer asked for the
 * rest, zeroes past a backing layer's end, EOF when a run reaches a layer's
 * end, LS_RAW runs answered by the file (its holes), and DATA|ALLOCATED
 * over the whole layer for drivers without block_status (qemu_all_data).
 */
#include "chain.h"

static int layer_status(struct chain *c, uint32_t i, uint64_t off, uint64_t len, uint64_t *n, bool top_only)
{
    struct chain_layer *cl = &c->layers[i];
    struct layer *l = &cl->l;
    if (off >= l->length) {
        /* Past a backing layer's end: qemu synthesizes zeroes "as if
         * allocated at this layer". */
        *n = len;
        return CS_ZERO | CS_ALLOCATED;
    }
    if (len > l->length - off) len = l->length - off;
    if (l->qemu_all_data && !c->precise && !top_only) {
        /* io.c without bdrv_co_block_status: the whole request is data. */
        *n = len;
        return CS_DATA | CS_ALLOCATED | (off + len == l->length ? CS_EOF : 0);
    }
    uint64_t k = 0, host = 0;
    int st = l->ops->block_status(l, off, len, &k, &host);
    if (st < 0) return -1;
    if (k == 0 || k > len) return rt_error(l->r.input, GERR_INTERNAL, off, k, 0);
    int r;
    if ((st & LS_RAW) && (st & LS_OFFSET_VALID)) {
        /* The file's own answer at host (its holes read as zero). */
        r = file_extents_status(&cl->ext, l->data, host, k, n);
        if (r >= 0 && off + *n == l->length) r |= CS_EOF;
        return r;
    }
    uint32_t ov = (st & LS_OFFSET_VALID) ? CS_OFFSET_VALID : 0;
    /* BDRV_BLOCK_RECURSE on a data run (a fixed VHD): io.c asks the file
     * whether [host, host+k) is a hole; past the file's end it reads as
     * zeroes, so the whole run is zero there. */
    if ((st & LS_RECURSE) && (st & LS_DATA) && (st & LS_OFFSET_VALID) && !(st & LS_ZERO)) {
        uint64_t fn = 0;
        int fst = file_extents_status(&cl->ext, l->data, host, k, &fn);
        if (fst < 0) return -1;
        if (fn == 0 || fn > k) return rt_error(l->r.input, GERR_INTERNAL, off, fn, 3);
        if (host >= l->data->size) {
            st |= LS_ZERO;
        } else {
            k = fn;
            if (fst & CS_ZERO) st |= LS_ZERO;
        }
    }
    /* Each layer's own answer carries EOF when its run reaches that
     * layer's end (bdrv_co_block_status). */
    uint32_t eof = off + k == l->length ? CS_EOF : 0;
    *n = k;
    /* A recursed hole stays DATA as well (qemu only adds ZERO): -s sees both. */
    if (st & LS_ZERO) return CS_ZERO | CS_ALLOCATED | ov | eof | ((st & LS_RECURSE) && (st & LS_DATA) ? CS_DATA : 0);
    if (st & (LS_DATA | LS_COMPRESSED)) return CS_DATA | CS_ALLOCATED | ov | eof;
    if (top_only) {
        /* qemu reads a driver without block_status as all data: what the
         * layer does not hold reads as zeroes there. */
        if (l->qemu_all_data) return CS_ZERO | CS_ALLOCATED | eof;
        /* io.c's bdrv_co_block_status for an unallocated run: zero without
         * a backing file (formats that take one), or where the run starts
         * past the backing file's end; else left to the backing file. */
        bool cow = l->fmt == FMT_QCOW2 || l->fmt == FMT_VMDK;
        if (cow && (i + 1 >= c->n || off >= c->layers[i + 1].l.length)) return CS_ZERO | eof;
        return (int)eof;
    }
    /* Unallocated here: the layer below decides; without one, qemu calls
     * it zero (not allocated). An allocated answer from below loses its
     * EOF (qemu re-derives it for the top); an unallocated one keeps it. */
    if (i + 1 < c->n) {
        r = layer_status(c, i + 1, off, k, n, false);
        if (r > 0 && (r & CS_ALLOCATED)) r &= ~CS_EOF;
        return r;
    }
    return CS_ZERO | eof;
}

static int status_of(struct chain *c, uint64_t off, uint64_t len, uint64_t *n, bool top_only)
{
    uint64_t end;
    if (len == 0 || __builtin_add_overflow(off, len, &end) || end > c->size)
        return rt_error(0, GERR_BAD_PARAMS, off, len, 1);
    int r = layer_status(c, 0, off, len, n, top_only);
    if (r >= 0 && (*n == 0 || *n > len)) return rt_error(0, GERR_INTERNAL, off, *n, 1);
    if (r >= 0 && off + *n == c->size) r |= CS_EOF;
    return r;
}

int chain_status(struct chain *c, uint64_t off, uint64_t len, uint64_t *n)
{
    return status_of(c, off, len, n, false);
}

int chain_top_status(struct chain *c, uint64_t off, uint64_t len, uint64_t *n)
{
    return status_of(c, off, len, n, true);
}
