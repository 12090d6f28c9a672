/*
 * qcow2_detect_metadata_preallocation: the image counts as metadata-
 * preallocated when at least max(real * 10/9, real + 2) clusters have a
 * non-zero refcount, real being the clusters the host file really occupies.
 * qemu takes that from st_blocks, which the host passes in
 * params.input_alloc. Only map asks (l->want_recurse): the verdict makes
 * qcow2's block status add LS_RECURSE to data runs.
 */
#include "layer.h"

int qcow2_detect_prealloc(struct qcow2_layer *s, const struct reader *r)
{
    struct qcow2 *q = &s->q;
    uint64_t mark = rt_heap_mark();
    if (qcow2_load_reftable(q)) return -1;
    struct cluster_cache rb;
    if (cluster_cache_init(&rb, r, q->cluster_size, 2)) return rt_error(r->input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    uint64_t size = r->size, total = size + ((512 - (size & 511)) & 511);
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
    uint64_t real = rt_input(r->input)->alloc;
    /* 0 means the host did not say (or a fully sparse file): estimate it
     * from the data extents, which undercounts unwritten (fallocated) ones. */
    bool estimate = real == 0;
    for (uint64_t pos = 0, n = 0; estimate && pos < size && n < 65536; n++) {
        int64_t d = hc_seek(r->input, pos, SEEK_KIND_DATA);
        if (d < 0 || (uint64_t)d >= size) break;
        int64_t h = hc_seek(r->input, (uint64_t)d, SEEK_KIND_HOLE);
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
