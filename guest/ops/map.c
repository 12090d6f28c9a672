/*
 * map: qemu-img map's extents (img_map + get_block_status + io.c's
 * bdrv_co_block_status) over the backing chain the host attached: input 0 is
 * the top, input i+1 the backing file of input i. Extents are merged exactly
 * as img_map merges them and streamed as MAP_EXTENT records.
 * arg[0] = start offset, arg[1] = max length (UINT64_MAX: to the end).
 */
#include "../qcow2/map.h"
#include "../qcow2/layer.h"
#include "../probe/probe.h"
#include "records.h"

struct layer {
    struct reader r;
    uint32_t fmt;
    uint64_t length; /* bdrv_getlength: sectors * 512 */
    struct qcow2 q;
    struct qcow2_mapper m;
    bool prealloc; /* qcow2_detect_metadata_preallocation's verdict */
};

static struct layer layers[LIMIT_MAX_INPUTS];
static uint32_t n_layers;

struct entry {
    uint64_t start, length, offset;
    uint32_t flags, depth;
};

/*
 * Status of the host file under a layer (file-posix's raw_co_block_status via
 * find_allocation, inside io.c's bdrv_co_block_status): DATA or ZERO for
 * [pos, pos+bytes), *len the leading run, *eof when the run reaches the end
 * of the file (rounded up to whole sectors, like bdrv_getlength).
 */
static int file_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, bool *eof)
{
    uint64_t size = l->r.size;
    uint64_t total = size + ((512 - (size & 511)) & 511);
    *eof = false;
    if (pos >= total) { *len = 0; *eof = true; return 0; }
    if (bytes > total - pos) bytes = total - pos;
    int st;
    int64_t d = pos < size ? hc_seek(l->r.input, pos, SEEK_KIND_DATA) : (int64_t)size;
    if (d < 0) {
        *len = bytes; /* no information: pretend there are no holes */
        st = MAP_DATA;
    } else if ((uint64_t)d >= size) {
        *len = bytes; /* trailing hole, incl. the tail of the last sector */
        st = MAP_ZERO;
    } else if ((uint64_t)d == pos) {
        int64_t h = hc_seek(l->r.input, pos, SEEK_KIND_HOLE);
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

static int raw_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len)
{
    bool eof;
    return file_status(l, pos, bytes, len, &eof);
}

/* One layer's bdrv_co_block_status: flags incl. PRESENT (qemu's ALLOCATED). */
static int layer_status(uint32_t i, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *map)
{
    struct layer *l = &layers[i];
    if (bytes > l->length - pos) bytes = l->length - pos;
    if (l->fmt == FMT_RAW) {
        int st = raw_status(l, pos, bytes, len);
        *map = pos;
        return st | MAP_OFFSET_VALID | MAP_PRESENT;
    }
    uint64_t host = 0;
    int st = qcow2_block_status(&l->m, pos, bytes, len, &host);
    if (st < 0) return -1;
    int flags = 0;
    if (st & QST_DATA) flags |= MAP_DATA;
    if (st & QST_ZERO) flags |= MAP_ZERO;
    if (st & QST_OFFSET_VALID) flags |= MAP_OFFSET_VALID;
    if (st & QST_COMPRESSED) flags |= MAP_COMPRESSED;
    *map = host;
    /* Metadata-preallocated images: qemu asks the host file whether a data
     * cluster's range is a hole (BDRV_BLOCK_RECURSE). */
    if (l->prealloc && (flags & MAP_DATA) && (flags & MAP_OFFSET_VALID) && !(flags & MAP_ZERO)) {
        uint64_t flen;
        bool eof;
        int fst = file_status(l, host, *len, &flen, &eof);
        if (eof && (!flen || (fst & MAP_ZERO))) {
            flags |= MAP_ZERO;
        } else {
            *len = flen;
            flags |= fst & MAP_ZERO;
        }
    }
    if (flags & (MAP_DATA | MAP_ZERO)) {
        flags |= MAP_PRESENT;
    } else if (i + 1 >= n_layers) {
        flags |= MAP_ZERO; /* no backing attached: reads as zeroes */
    } else if (pos >= layers[i + 1].length) {
        flags |= MAP_ZERO; /* past the end of a shorter backing file */
    }
    return flags;
}

/* get_block_status in qemu-img.c: descend while neither DATA nor ZERO. */
static int chain_status(uint64_t pos, uint64_t bytes, struct entry *e)
{
    uint32_t depth = 0;
    uint64_t map = 0;
    int st;
    for (;;) {
        st = layer_status(depth, pos, bytes, &bytes, &map);
        if (st < 0) return -1;
        if (st & (MAP_DATA | MAP_ZERO)) break;
        if (depth + 1 >= n_layers) { st = 0; break; }
        depth++;
    }
    e->start = pos;
    e->length = bytes;
    e->flags = (uint32_t)st;
    e->offset = (st & MAP_OFFSET_VALID) ? map : 0;
    e->depth = depth;
    return 0;
}

static bool mergeable(const struct entry *c, const struct entry *n)
{
    if (c->length == 0) return false;
    uint32_t mask = MAP_DATA | MAP_ZERO | MAP_PRESENT | MAP_OFFSET_VALID | MAP_COMPRESSED;
    if ((c->flags & mask) != (n->flags & mask) || c->depth != n->depth) return false;
    if ((c->flags & MAP_OFFSET_VALID) && c->offset + c->length != n->offset) return false;
    return true;
}

static int emit(const struct entry *e)
{
    struct rec_map_extent r;
    rec_init(&r, REC_MAP_EXTENT, sizeof r);
    r.start = e->start;
    r.length = e->length;
    r.offset = e->offset;
    r.flags = e->flags;
    r.depth = e->depth;
    return rt_emit(&r, sizeof r);
}

/*
 * qcow2_detect_metadata_preallocation: the image counts as metadata-
 * preallocated when at least max(real * 10/9, real + 2) clusters have a
 * non-zero refcount, real being the clusters the host file really occupies.
 * qemu takes that from st_blocks, which the host passes in
 * params.input_alloc.
 */
static int detect_prealloc(struct layer *l)
{
    struct qcow2 *q = &l->q;
    uint64_t mark = rt_heap_mark();
    if (qcow2_load_reftable(q)) return -1;
    struct cluster_cache rb;
    if (cluster_cache_init(&rb, &l->r, q->cluster_size, 2)) return rt_error(l->r.input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    uint64_t size = l->r.size, total = size + ((512 - (size & 511)) & 511);
    uint64_t end_cluster = (total + q->cluster_size - 1) >> q->cluster_bits;
    /* Refcounted clusters; refblocks that are absent count nothing. */
    uint64_t counted = 0;
    for (uint64_t i = 0; i < end_cluster;) {
        uint64_t rti = i >> q->refblock_bits;
        if (rti >= q->reftable_entries || !(q->reftable[rti] & QCOW2_REFT_OFFSET_MASK)) {
            i = (rti + 1) << q->refblock_bits;
            continue;
        }
        uint64_t rc;
        if (qcow2_get_refcount(q, &rb, i, &rc) < 0) { rt_heap_release(mark); return 0; }
        counted += rc != 0;
        i++;
    }
    uint64_t real = rt_params()->input_alloc[l->r.input];
    /* 0 means the host did not say (or a fully sparse file): estimate it
     * from the data extents, which undercounts unwritten (fallocated) ones. */
    bool estimate = real == 0;
    for (uint64_t pos = 0, n = 0; estimate && pos < size && n < 65536; n++) {
        int64_t d = hc_seek(l->r.input, pos, SEEK_KIND_DATA);
        if (d < 0 || (uint64_t)d >= size) break;
        int64_t h = hc_seek(l->r.input, (uint64_t)d, SEEK_KIND_HOLE);
        if (h <= d) break;
        real += (((uint64_t)h + 4095) & ~4095ull) - ((uint64_t)d & ~4095ull);
        pos = (uint64_t)h;
    }
    uint64_t rc = real >> q->cluster_bits;
    uint64_t t1 = rc * 10 / 9, t2 = rc + 2;
    rt_heap_release(mark);
    q->reftable = NULL;
    return counted >= (t1 > t2 ? t1 : t2) ? 1 : 0;
}

static int open_layer(uint32_t i, uint32_t requested)
{
    struct layer *l = &layers[i];
    if (chain_layer_open(i, requested, &l->r, &l->fmt, &l->length, &l->q, &l->m)) return -1;
    if (l->fmt == FMT_RAW) return 0;
    /* With an external data file the recursion would look at that file,
     * which map does not attach: leave it out. */
    if (!l->q.has_data_file) {
        int pr = detect_prealloc(l);
        if (pr < 0) return -1;
        l->prealloc = pr == 1;
    }
    return 0;
}

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs < 1 || p->n_inputs > LIMIT_MAX_INPUTS) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    for (uint32_t i = 0; i < p->n_inputs; i++) {
        if (p->input_format[i] > FMT_QCOW2) return rt_error(i, GERR_BAD_PARAMS, 0, 0, 0);
        if (open_layer(i, p->input_format[i])) return -1;
        n_layers = i + 1;
        /* A raw layer has no backing file: anything below it is unused. */
        if (layers[i].fmt == FMT_RAW) break;
        if (!(layers[i].q.flags & Q2F_HAS_BACKING)) break;
    }
    uint64_t length = layers[0].length;
    uint64_t start = p->arg[0], max = p->arg[1];
    uint64_t end;
    /* qemu: length = MIN(start + max_length, length) in int64 */
    if (max != UINT64_MAX && !__builtin_add_overflow(start, max, &end) && end < length) length = end;
    struct entry curr = {.start = start};
    while (curr.start + curr.length < length) {
        uint64_t off = curr.start + curr.length;
        struct entry next;
        if (chain_status(off, length - off, &next)) return -1;
        if (mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && emit(&curr)) return -1;
        curr = next;
    }
    return emit(&curr);
}
