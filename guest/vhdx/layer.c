/*
 * vhdx as a chain layer (guest/chain/layer.h). qemu 7.2's vhdx driver has no
 * bdrv_co_block_status, so qemu-img map / measure / compare -s see the whole
 * disk as allocated data without an offset (l->qemu_all_data). For reading,
 * block_status answers precisely what vhdx_co_readv does:
 *   NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, UNMAPPED_v095 -> zeroes (LS_ZERO);
 *   FULLY_PRESENT -> the bytes at the BAT offset + the offset in the block
 *     (LS_DATA|LS_OFFSET_VALID); a BAT offset of 0 makes qemu read from file
 *     offset 0 for any position in the block (vhdx_block_translate adds no
 *     block offset then), so the run maps to host 0;
 *   state 4 and PARTIALLY_PRESENT -> qemu's read fails with -EIO: ERROR
 *     (GERR_FORMAT, VHDX_E_READ_STATE, pos, state); so does a FULLY_PRESENT
 *     block whose file range passes BDRV_MAX_LENGTH (a2 = VHDX_READ_PAST_MAX).
 * Differencing images never open (qemu 7.2 refuses them), so there is no
 * backing layer. Runs of equal state over consecutive blocks are merged
 * (contiguous host offsets for data), at most RUN_BLOCKS blocks per call.
 */
#include "../chain/layer.h"
#include "vhdx_int.h"

#define RUN_BLOCKS (1u << 12)

static int vhdx_layer_open(struct layer *l)
{
    struct vhdx *v = rt_alloc(sizeof *v);
    if (!v) return rt_error(l->r.input, GERR_OUT_OF_MEMORY, sizeof *v, 0, 0);
    if (vhdx_open(v, &l->r, 0)) return -1;
    l->state = v;
    l->data = &l->r;
    l->length = v->total_sectors * 512;
    l->fmt = FMT_VHDX;
    l->has_backing = false;
    l->qemu_all_data = true;
    return 0;
}

/* The BAT entry and state for the block holding guest offset pos, indexed as
 * vhdx_block_translate does (uint32_t bat_idx). -1 after an ERROR record. */
static uint32_t idx_for(const struct vhdx *v, uint64_t pos)
{
    uint32_t idx = (uint32_t)((pos >> 9) >> v->sectors_per_block_bits);
    return idx + (idx >> v->chunk_ratio_bits);
}

static int entry_for(struct vhdx *v, uint64_t pos, uint64_t *e)
{
    uint32_t idx = idx_for(v, pos);
    /* qemu's s->bat holds bat_length bytes; past that it reads its heap */
    if (idx >= v->bat_length / 8) return vhdx_fail(v, VHDX_E_BAT_RANGE, pos, idx);
    return vhdx_bat_get(v, idx, e);
}

static int state_class(uint64_t e)
{
    switch (e & VHDX_BAT_STATE_MASK) {
    case VHDX_PAYLOAD_NOT_PRESENT:
    case VHDX_PAYLOAD_UNDEFINED:
    case VHDX_PAYLOAD_ZERO:
    case VHDX_PAYLOAD_UNMAPPED:
    case VHDX_PAYLOAD_UNMAPPED_V095:
        return (int)LS_ZERO;
    case VHDX_PAYLOAD_FULLY_PRESENT:
        return (int)(LS_DATA | LS_OFFSET_VALID);
    default:
        return -1;
    }
}

static int vhdx_layer_block_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    struct vhdx *v = l->state;
    uint64_t bs = v->block_size;
    uint64_t e;
    if (entry_for(v, pos, &e)) return -1;
    int cls = state_class(e);
    if (cls < 0) return vhdx_fail(v, VHDX_E_READ_STATE, pos, e & VHDX_BAT_STATE_MASK);
    uint64_t in = pos & (bs - 1);
    uint64_t off = e & VHDX_BAT_OFFSET_MASK;
    uint64_t h = off ? off + in : 0;
    uint64_t run = bs - in;
    /* qemu's file read of this block's part fails past BDRV_MAX_LENGTH */
    uint64_t first = run < bytes ? run : bytes;
    if ((cls & LS_OFFSET_VALID) && (h > READER_MAX_END || first > READER_MAX_END - h))
        return vhdx_fail(v, VHDX_E_READ_STATE, pos, VHDX_READ_PAST_MAX);
    if (run >= bytes) {
        *len = bytes;
        if (cls & LS_OFFSET_VALID) *host = h;
        return cls;
    }
    /* Extend over following blocks of the same kind (data: only while the
     * host offsets continue, and never from a zero BAT offset). */
    for (uint32_t n = 1; n < RUN_BLOCKS && run < bytes; n++) {
        uint64_t e2;
        if (idx_for(v, pos + run) >= v->bat_length / 8) break;
        if (entry_for(v, pos + run, &e2)) return -1;
        if (state_class(e2) != cls) break;
        if (cls & LS_OFFSET_VALID) {
            uint64_t o2 = e2 & VHDX_BAT_OFFSET_MASK;
            if (!off || o2 != h + run || o2 > READER_MAX_END - bs) break;
        }
        run += bs;
    }
    *len = run < bytes ? run : bytes;
    if (cls & LS_OFFSET_VALID) *host = h;
    return cls;
}

const struct layer_ops vhdx_layer_ops = {
    .format = FMT_VHDX,
    .open = vhdx_layer_open,
    .block_status = vhdx_layer_block_status,
    .read = NULL,
};
