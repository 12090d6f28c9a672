/*
 * The vpc layer for the chain code (guest/chain/layer.h): open a VHD over
 * l->r, answer block status as qemu 7.2's vpc_co_block_status does.
 *
 *   fixed (footer type 2): the whole request is DATA at the same offset in
 *     the file; qemu adds BDRV_BLOCK_RECURSE, so io.c asks the file whether
 *     the range is a hole (map then prints "zero": true, "data": true) and
 *     reads past the file's end as zeroes (LS_RECURSE, answered when the
 *     caller asked for it: map).
 *   dynamic/differencing: an allocated block is DATA at its file offset, one
 *     block at most (a sector bitmap sits between blocks, and qemu ignores
 *     the bitmap: the whole block is read); runs of unallocated blocks are
 *     ZERO (qemu's answer: "present": true, "zero": true). The parent of a
 *     differencing disk is not opened (qemu 7.2 does not either).
 */
#include "../chain/layer.h"
#include "vpc.h"

static int vpc_layer_open(struct layer *l)
{
    struct vpc *v = rt_alloc(sizeof *v);
    if (!v) return rt_error(l->r.input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (vpc_open(v, &l->r)) return -1;
    l->state = v;
    l->fmt = FMT_VPC;
    l->length = vpc_length(v);
    l->has_backing = false;
    l->data = &l->r;
    l->qemu_all_data = false;
    return 0;
}

static int vpc_layer_block_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    int st = vpc_block_status(l->state, pos, bytes, len, host);
    if (st < 0) return -1;
    int ls = 0;
    if (st & VPC_ST_DATA) ls |= LS_DATA;
    if (st & VPC_ST_ZERO) ls |= LS_ZERO;
    if (st & VPC_ST_OFFSET_VALID) ls |= LS_OFFSET_VALID;
    if ((st & VPC_ST_RECURSE) && l->want_recurse) ls |= LS_RECURSE;
    return ls;
}

const struct layer_ops vpc_layer_ops = {
    .format = FMT_VPC,
    .open = vpc_layer_open,
    .block_status = vpc_layer_block_status,
    .read = NULL,
};
