/* The refcount records of the qcow2 scans (see refscan.h). */
#include "refscan.h"
#include "../ops/records.h"

struct refrun {
    uint64_t start, count, value;
};

static int flush_refrun(struct refrun *p, qcow2_refscan_emit emit, uint64_t *n_runs)
{
    if (!p->count) return 0;
    struct rec_resize_run r;
    rec_init(&r, REC_RESIZE_REFRUN, sizeof r);
    r.start = p->start;
    r.count = p->count;
    r.refcount = p->value;
    p->count = 0;
    return emit(n_runs, &r, sizeof r);
}

/* Adjacent clusters with the same refcount merge into one run. */
static int add_refcount(struct refrun *p, uint64_t cluster, uint64_t value, qcow2_refscan_emit emit,
                        uint64_t *n_runs)
{
    if (p->count && p->value == value && p->start + p->count == cluster) {
        p->count++;
        return 0;
    }
    int rc = flush_refrun(p, emit, n_runs);
    if (rc) return rc;
    if (value == 0) return 0;
    p->start = cluster;
    p->count = 1;
    p->value = value;
    return 0;
}

int qcow2_scan_refcounts(struct qcow2 *q, struct cluster_cache *cache, qcow2_refscan_emit emit,
                         uint64_t *n_reftable, uint64_t *n_runs)
{
    if (qcow2_load_reftable(q)) return -1;
    struct refrun run = {0};
    uint64_t per_block = 1ull << q->refblock_bits;
    for (uint64_t i = 0; i < q->reftable_entries; i++) {
        uint64_t block = q->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if (!block) continue;
        /* qemu treats an unaligned refcount block as corruption (-EIO). */
        if (block & (q->cluster_size - 1))
            return rt_error(0, GERR_INTERNAL, QCOW2_REFSCAN_BAD_REFBLOCK, block, 0);
        struct rec_resize_pair pr;
        rec_init(&pr, REC_RESIZE_REFTABLE, sizeof pr);
        pr.index = i;
        pr.value = q->reftable[i];
        int rc = emit(n_reftable, &pr, sizeof pr);
        if (rc) return rc;
        const uint8_t *b = cluster_cache_get(cache, block);
        if (!b) return rt_error(0, GERR_IO, block, 0, 0);
        /* i < 2^20 and refblock_bits <= 24: the cluster index cannot overflow. */
        uint64_t base = i << q->refblock_bits;
        for (uint64_t j = 0; j < per_block; j++) {
            rc = add_refcount(&run, base + j, qcow2_refblock_entry(b, q->refcount_order, j), emit, n_runs);
            if (rc) return rc;
        }
    }
    return flush_refrun(&run, emit, n_runs);
}
