/*
 * map: qemu-img map's extents (img_map + get_block_status + io.c's
 * bdrv_co_block_status) over the backing chain the host attached: input 0 is
 * the top, input i+1 the backing file of input i. Each entry comes from
 * guest/chain/map_status.c; here they are merged exactly as img_map merges
 * them and streamed as MAP_EXTENT records.
 * arg[0] = start offset, arg[1] = max length (UINT64_MAX: to the end).
 */
#include "../chain/map_status.h"
#include "records.h"

static struct chain chain;

static bool mergeable(const struct map_entry *c, const struct map_entry *n)
{
    if (c->length == 0) return false;
    uint32_t mask = MAP_DATA | MAP_ZERO | MAP_PRESENT | MAP_OFFSET_VALID | MAP_COMPRESSED;
    if ((c->flags & mask) != (n->flags & mask) || c->depth != n->depth) return false;
    if ((c->flags & MAP_OFFSET_VALID) && (c->offset + c->length != n->offset || c->input != n->input)) return false;
    return true;
}

static int emit(const struct map_entry *e)
{
    struct rec_map_extent r;
    rec_init(&r, REC_MAP_EXTENT, sizeof r);
    r.start = e->start;
    r.length = e->length;
    r.offset = e->offset;
    r.flags = e->flags;
    r.depth = e->depth;
    r.input = e->input;
    return rt_emit(&r, sizeof r);
}

int op_main(void)
{
    const struct params *p = rt_params();
    if (chain_open_range(&chain, 0, p->n_inputs, 0, CHAIN_F_MAP)) return -1;
    chain.precise = (p->flags & MAPOP_F_PRECISE) != 0; /* measure's estimates of instar's convert */
    uint64_t length = chain.size;
    uint64_t start = p->arg[0], max = p->arg[1];
    uint64_t end;
    /* qemu: length = MIN(start + max_length, length) in int64 */
    if (max != UINT64_MAX && !__builtin_add_overflow(start, max, &end) && end < length) length = end;
    struct map_entry curr = {.start = start};
    while (curr.start + curr.length < length) {
        uint64_t off = curr.start + curr.length;
        struct map_entry next;
        if (map_chain_status(&chain, off, length - off, &next)) return -1;
        if (mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && emit(&curr)) return -1;
        curr = next;
    }
    return emit(&curr);
}
