/*
 * qemu-img map's block status over a chain (img_map's get_block_status and
 * io.c's bdrv_co_block_status): each layer's answer from its block_status,
 * the host file asked through SEEK_DATA/SEEK_HOLE (file-posix's
 * find_allocation) for LS_RAW runs and for LS_RECURSE runs (qcow2 metadata
 * preallocation), ALLOCATED (map's PRESENT) for DATA or ZERO runs, and
 * zeroes where no backing layer or only a shorter one lies below.
 *
 * Unlike the read path's holes (extents.c, one EXTENTS call per window),
 * this asks per run the way qemu does, and a failed seek means "data".
 */
#include "map_status.h"

/* A layer's own bits pass into MAP_EXTENT flags unchanged. */
_Static_assert(LS_DATA == MAP_DATA && LS_ZERO == MAP_ZERO && LS_OFFSET_VALID == MAP_OFFSET_VALID &&
                   LS_COMPRESSED == MAP_COMPRESSED,
               "LS_* and MAP_* bits");

/*
 * Status of host file r (file-posix's raw_co_block_status via
 * find_allocation, inside io.c's bdrv_co_block_status): MAP_DATA or MAP_ZERO
 * for [pos, pos+bytes), *len the leading run, *eof when the run reaches the
 * end of the file (rounded up to whole sectors, like bdrv_getlength).
 */
static int file_status(const struct reader *r, uint64_t pos, uint64_t bytes, uint64_t *len, bool *eof)
{
    uint64_t size = r->size;
    uint64_t total = size + ((512 - (size & 511)) & 511);
    *eof = false;
    if (total < size) return rt_error(r->input, GERR_BAD_IMAGE_SIZE, size, 0, 0);
    if (pos >= total) { *len = 0; *eof = true; return 0; }
    if (bytes > total - pos) bytes = total - pos;
    int st;
    int64_t d = pos < size ? hc_seek(r->input, pos, SEEK_KIND_DATA) : (int64_t)size;
    if (d < 0) {
        *len = bytes; /* no information: pretend there are no holes */
        st = MAP_DATA;
    } else if ((uint64_t)d >= size) {
        *len = bytes; /* trailing hole, incl. the tail of the last sector */
        st = MAP_ZERO;
    } else if ((uint64_t)d == pos) {
        int64_t h = hc_seek(r->input, pos, SEEK_KIND_HOLE);
        uint64_t n = (h < 0 || (uint64_t)h <= pos) ? bytes : (uint64_t)h - pos;
        *len = n < bytes ? n : bytes;
        st = MAP_DATA;
    } else {
        uint64_t n = (uint64_t)d - pos;
        *len = n < bytes ? n : bytes;
        st = MAP_ZERO;
    }
    *eof = pos + *len == total;
    return st;
}

/* One layer's bdrv_co_block_status: MAP_* flags incl. PRESENT (qemu's
 * ALLOCATED), *map the offset when MAP_OFFSET_VALID. */
static int layer_status(struct chain *c, uint32_t i, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *map,
                        uint32_t *input)
{
    struct layer *l = &c->layers[i].l;
    if (bytes > l->length - pos) bytes = l->length - pos;
    if (l->qemu_all_data && !c->precise) {
        /* io.c without bdrv_co_block_status: data, no offset. */
        *len = bytes;
        *map = 0;
        return MAP_DATA | MAP_PRESENT;
    }
    uint64_t host = 0;
    int st = l->ops->block_status(l, pos, bytes, len, &host);
    if (st < 0) return -1;
    if (*len == 0 || *len > bytes) return rt_error(l->r.input, GERR_INTERNAL, pos, *len, 2);
    *map = host;
    *input = l->data->input; /* block_status may point l->data at another file */
    bool eof;
    if ((st & LS_RAW) && (st & LS_OFFSET_VALID)) {
        /* BDRV_BLOCK_RAW: the file's own answer at host. */
        int fst = file_status(l->data, host, *len, len, &eof);
        if (fst < 0) return -1;
        return fst | MAP_OFFSET_VALID | MAP_PRESENT;
    }
    int flags = st & (LS_DATA | LS_ZERO | LS_OFFSET_VALID | LS_COMPRESSED);
    /* BDRV_BLOCK_RECURSE (qcow2 metadata preallocation): qemu asks the
     * host file whether a data run's range is a hole. */
    if ((st & LS_RECURSE) && (flags & LS_DATA) && (flags & LS_OFFSET_VALID) && !(flags & LS_ZERO)) {
        uint64_t flen;
        int fst = file_status(l->data, host, *len, &flen, &eof);
        if (fst < 0) return -1;
        if (eof && (!flen || (fst & MAP_ZERO))) {
            flags |= MAP_ZERO;
        } else {
            *len = flen;
            flags |= fst & MAP_ZERO;
        }
    }
    if (flags & (MAP_DATA | MAP_ZERO)) {
        flags |= MAP_PRESENT;
    } else if (i + 1 >= c->n) {
        flags |= MAP_ZERO; /* no backing attached: reads as zeroes */
    } else if (pos >= c->layers[i + 1].l.length) {
        flags |= MAP_ZERO; /* past the end of a shorter backing file */
    }
    return flags;
}

int map_chain_status(struct chain *c, uint64_t pos, uint64_t bytes, struct map_entry *e)
{
    uint32_t depth = 0;
    uint64_t map = 0;
    uint32_t input = 0;
    int st;
    for (;;) {
        st = layer_status(c, depth, pos, bytes, &bytes, &map, &input);
        if (st < 0) return -1;
        if (st & (MAP_DATA | MAP_ZERO)) break;
        if (depth + 1 >= c->n) { st = 0; break; }
        depth++;
    }
    e->start = pos;
    e->length = bytes;
    e->flags = (uint32_t)st;
    e->offset = (st & MAP_OFFSET_VALID) ? map : 0;
    e->depth = depth;
    e->input = (st & MAP_OFFSET_VALID) ? input : 0;
    return 0;
}
