/*
 * vmdk as a chain layer (guest/chain/layer.h): qemu 7.2's
 * vmdk_co_block_status per grain (a flat extent is one grain), with runs of
 * equal status merged across grains of one extent (unallocated and zeroed
 * grains; data while the host offsets continue), which is what qemu-img's
 * map and convert loops do with its per-grain answers.
 *
 * Several files in one layer: each answer sets l->data to the reader of the
 * extent the run lies in (the image itself for a hosted sparse extent, an
 * attached input otherwise), so the chain code reads LS_OFFSET_VALID runs
 * from the right file without knowing about extents. Compressed grains
 * (streamOptimized) are LS_COMPRESSED and come through vmdk_layer_read
 * (grain.c, linked only by the programs that read data).
 */
#include "../chain/layer.h"
#include "vmdk.h"

#define RUN_GRAINS 4096u

int vmdk_layer_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf) __attribute__((weak));

static int vmdk_layer_open(struct layer *l)
{
    struct vmdk *v = rt_alloc(sizeof *v);
    if (!v) return rt_error(l->r.input, GERR_OUT_OF_MEMORY, sizeof *v, 0, 0);
    if (vmdk_open(v, &l->r, 0)) return -1;
    l->state = v;
    l->data = &l->r;
    l->length = v->total_sectors * 512;
    l->fmt = FMT_VMDK;
    /* parentFileNameHint is reported by info, never followed */
    l->has_backing = false;
    return 0;
}

/* The status of the grain holding pos in extent e: LS_* bits, *glen the
 * bytes to the grain's end, *host when LS_OFFSET_VALID; -1 when the lookup
 * fails (qemu's -EIO), with nothing emitted: a failure in a grain after the
 * first ends the merged run there, and the next call reports it, as qemu's
 * per-grain answers do. */
static int grain_status(struct layer *l, struct vmdk_extent *e, uint64_t pos, uint64_t *glen, uint64_t *host)
{
    struct vmdk *v = l->state;
    uint64_t co = 0;
    int r = vmdk_cluster(v, e, pos, &co);
    uint64_t cbytes = e->cluster_sectors * 512;
    uint64_t in = (pos - (e->end_sector - e->sectors) * 512) % cbytes;
    *glen = cbytes - in;
    switch (r) {
    case VMDK_UNALLOC:
        if (e->gd_empty) {
            /* no grain table: the whole table's span is unallocated */
            uint64_t span = (uint64_t)e->l1_entry_sectors * 512;
            *glen = span - (pos - (e->end_sector - e->sectors) * 512) % span;
        }
        return 0;
    case VMDK_ZEROED: return (int)LS_ZERO;
    case VMDK_OK:
        if (e->compressed) return (int)(LS_DATA | LS_COMPRESSED);
        *host = co + in;
        if (*host < co) return -1;
        return (int)(LS_DATA | LS_OFFSET_VALID | (e->kind == VMDK_FLAT && l->want_recurse ? LS_RECURSE : 0));
    default:
        return -1;
    }
}

static int vmdk_layer_block_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    struct vmdk *v = l->state;
    struct vmdk_extent *e = vmdk_find_extent(v, pos);
    if (!e) return rt_error(l->r.input, GERR_IO, pos, 0, 2);
    l->data = e->r;
    uint64_t g = 0, h = 0;
    int st = grain_status(l, e, pos, &g, &h);
    if (st < 0) return rt_error(l->r.input, GERR_IO, pos, 0, 1);
    uint64_t run = g;
    /* merge following grains of this extent with the same status */
    uint64_t ext_end = e->end_sector * 512;
    for (uint32_t k = 1; k < RUN_GRAINS && run < bytes && pos + run < ext_end; k++) {
        if (st & LS_COMPRESSED) break;
        uint64_t g2 = 0, h2 = 0;
        int st2 = grain_status(l, e, pos + run, &g2, &h2);
        if (st2 != st) break; /* incl. a failed lookup: reported by the call that starts there */
        if ((st & LS_OFFSET_VALID) && h2 != h + run) break;
        run += g2;
    }
    /* a partial last grain never reaches into the next extent */
    if (run > ext_end - pos) run = ext_end - pos;
    /* qemu answers one grain per call, so only the disk's last grain's run
     * reaches the end and carries EOF (compare -s compares that bit): a
     * merged run stops before the last grain */
    uint64_t cbytes = e->cluster_sectors * 512, base = (e->end_sector - e->sectors) * 512;
    uint64_t first = cbytes - (pos - base) % cbytes;
    if (first > ext_end - pos) first = ext_end - pos;
    if (pos + run >= l->length && run > first) {
        uint64_t last = base + (l->length - 1 - base) / cbytes * cbytes; /* the last grain's start */
        run = last > pos + first ? last - pos : first;
    }
    *len = run < bytes ? run : bytes;
    if (st & LS_OFFSET_VALID) *host = h;
    return st;
}

const struct layer_ops vmdk_layer_ops = {
    .format = FMT_VMDK,
    .open = vmdk_layer_open,
    .block_status = vmdk_layer_block_status,
    .read = vmdk_layer_read,
};
