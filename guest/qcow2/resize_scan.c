/*
 * qcow2's resize scan: extracts, from a qcow2 image, exactly the metadata the host's
 * resize planner (lib/formats/qcow2/resize_plan.ts) needs, after checking it
 * structurally. The planner never sees image bytes; it sees these records:
 *
 *   QCOW2_INFO + NAME  the decoded header (qcow2_open, normal read/write mode)
 *   RESIZE_L1          every non-zero active L1 entry (index, raw value)
 *   RESIZE_REFTABLE    every refcount-table entry with an offset (index, raw value)
 *   RESIZE_REFRUN      the non-zero refcounts of all clusters the refcount blocks
 *                      describe, as ascending runs of equal value
 *   RESIZE_FREE        shrink only: the host clusters qemu's discard of the cut-off
 *                      guest range frees (each loses one reference per record)
 *   RESIZE_ZERO        shrink only: the byte ranges of L2 entries that discard
 *                      clears, in L2 tables that survive the shrink
 *   AMEND_ZERO         arg[1] bit 1 (amend's downgrade): every zero-flagged L2
 *                      entry (its file offset, raw value), active L1 first, then
 *                      each snapshot's, as qcow2_expand_zero_clusters visits them
 *   AMEND_SNAP         arg[1] bit 1: each snapshot's index, disk_size, vm_state_size,
 *   AMEND_SNAP_L1      followed by its L1 size
 *   AMEND_COUNT        arg[1] bit 1: the count of AMEND_ZERO and AMEND_SNAP records
 *   COMPRESSED_L2      arg[1] bit 2 (commit's in-place writes): every compressed
 *                      entry of the active L2 tables (guest cluster, the host
 *                      clusters its data spans), ascending guest clusters
 *   RESIZE_SUMMARY     last: the count of each kind, so the host can tell a
 *                      complete stream from a cut one
 *
 * arg[0] = the new virtual size in bytes (the host validated it).
 * arg[1] bit 0: on a grow, check that the added guest range has no L2 entry
 * yet and no shared L2 table (preallocation=metadata); RESIZE_F_BUSY_TAIL if not.
 * Every kind is bounded by RESIZE_MAX_EACH records; past that the scan stops
 * with RESIZE_F_TOO_BIG and the host refuses to resize.
 *
 * ERROR GERR_INTERNAL a0 values (the host words the refusal):
 *   1 refcount block offset not cluster aligned (a1 = offset)
 *   2 L2 table offset not cluster aligned (a1 = offset)
 *   3 data cluster offset not cluster aligned (a1 = offset)
 */
#include "resize_scan.h"
#include "refscan.h"
#include "bytes.h"
#include "../ops/records.h"

#define RESIZE_MAX_EACH (256u * 1024u)

#define BAD_L2_TABLE 2
#define BAD_DATA_CLUSTER 3

static struct {
    uint64_t l1, reftable, runs, free, zero, azero, asnap, comp;
    uint32_t flags;
} n;

/* Emits one record of a bounded kind; -1 on a malformed record, 1 when the
 * bound is hit (the scan then stops cleanly). */
static int emit_bounded(uint64_t *count, void *rec, uint32_t size)
{
    if (*count >= RESIZE_MAX_EACH) {
        n.flags |= RESIZE_F_TOO_BIG;
        return 1;
    }
    (*count)++;
    return rt_emit(rec, size) ? -1 : 0;
}

static int emit_pair(uint32_t type, uint64_t *count, uint64_t index, uint64_t value)
{
    struct rec_resize_pair r;
    rec_init(&r, type, sizeof r);
    r.index = index;
    r.value = value;
    return emit_bounded(count, &r, sizeof r);
}

static int emit_range(uint32_t type, uint64_t *count, uint64_t start, uint64_t len)
{
    struct rec_resize_range r;
    rec_init(&r, type, sizeof r);
    r.start = start;
    r.count = len;
    return emit_bounded(count, &r, sizeof r);
}

/* A pending run, flushed when the next item does not extend it. */
struct run {
    uint64_t start, count, value;
};

static int flush_free(struct run *p)
{
    if (!p->count) return 0;
    int rc = emit_range(REC_RESIZE_FREE, &n.free, p->start, p->count);
    p->count = 0;
    return rc;
}

/* Adjacent freed clusters merge; a cluster freed twice (compressed data
 * sharing a host cluster) starts a new record, so counts stay exact. */
static int add_free(struct run *p, uint64_t first, uint64_t count)
{
    if (p->count && p->start + p->count == first) {
        p->count += count;
        return 0;
    }
    int rc = flush_free(p);
    if (rc) return rc;
    p->start = first;
    p->count = count;
    return 0;
}

static int scan_l1(struct qcow2 *q, struct table_window *w)
{
    for (uint64_t i = 0; i < q->l1_size; i++) {
        uint64_t e;
        if (table_window_get(w, i, &e)) return rt_error(0, GERR_IO, q->l1_offset, 0, 0);
        if (!e) continue;
        int rc = emit_pair(REC_RESIZE_L1, &n.l1, i, e);
        if (rc) return rc;
    }
    return 0;
}

/*
 * qcow2_co_truncate's shrink: qcow2_cluster_discard(ROUND_UP(new, cluster),
 * old_length - that, full discard) clears every L2 entry of the cut-off guest
 * clusters and frees what they point to. L2 tables past the new L1 size are
 * freed whole afterwards (the host does that from the L1 records), so their
 * entries need no clearing here.
 */
static int scan_shrink(struct qcow2 *q, struct table_window *w, struct cluster_cache *cache, uint64_t new_size)
{
    uint64_t cs = q->cluster_size;
    uint64_t old_len = q->size + ((512 - (q->size & 511)) & 511);
    uint64_t start_c = new_size / cs + ((new_size & (cs - 1)) != 0);
    uint64_t end_c = old_len / cs + ((old_len & (cs - 1)) != 0);
    if (start_c >= end_c) return 0;
    uint64_t per_l2 = 1ull << q->l2_bits;
    uint64_t l2_span = cs << q->l2_bits; /* bytes one L2 table maps; <= 2^40 */
    uint64_t new_l1 = new_size / l2_span + ((new_size % l2_span) != 0);
    struct run fr = {0};
    for (uint64_t idx = start_c >> q->l2_bits; idx <= (end_c - 1) >> q->l2_bits && idx < q->l1_size; idx++) {
        uint64_t l1e;
        if (table_window_get(w, idx, &l1e)) return rt_error(0, GERR_IO, q->l1_offset, 0, 0);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) continue;
        if (l2 & (cs - 1)) return rt_error(0, GERR_INTERNAL, BAD_L2_TABLE, l2, 0);
        const uint8_t *t = cluster_cache_get(cache, l2);
        if (!t) return rt_error(0, GERR_IO, l2, 0, 0);
        uint64_t first = idx << q->l2_bits, g0 = start_c > first ? start_c : first;
        uint64_t g1 = end_c < first + per_l2 ? end_c : first + per_l2;
        uint64_t zlo = UINT64_MAX, zhi = 0;
        for (uint64_t g = g0; g < g1; g++) {
            uint64_t j = g - first;
            const uint8_t *ep = t + j * q->l2_entry_bytes;
            uint64_t e = be64(ep), bitmap = q->extl2 ? be64(ep + 8) : 0;
            if (!e && !bitmap) continue;
            if (j < zlo) zlo = j;
            zhi = j + 1;
            int rc = 0;
            switch (qcow2_cluster_type(q, e)) {
            case QCT_NORMAL:
            case QCT_ZERO_ALLOC: {
                uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
                if (!host) break;
                if (host & (cs - 1)) return rt_error(0, GERR_INTERNAL, BAD_DATA_CLUSTER, host, 0);
                rc = add_free(&fr, host >> q->cluster_bits, 1);
                break;
            }
            case QCT_COMPRESSED: {
                uint64_t off, len, last;
                qcow2_compressed_range(q, e, &off, &len);
                if (!len || __builtin_add_overflow(off, len - 1, &last)) break;
                uint64_t c0 = off >> q->cluster_bits, c1 = last >> q->cluster_bits;
                /* A compressed range may share its first cluster with the
                 * previous one: never merge, each reference counts. */
                rc = flush_free(&fr);
                if (!rc) rc = add_free(&fr, c0, c1 - c0 + 1);
                if (!rc) rc = flush_free(&fr);
                break;
            }
            default:
                break;
            }
            if (rc) return rc;
        }
        if (zhi && idx < new_l1) {
            int rc = emit_range(REC_RESIZE_ZERO, &n.zero, l2 + zlo * q->l2_entry_bytes,
                                (zhi - zlo) * q->l2_entry_bytes);
            if (rc) return rc;
        }
    }
    n.flags |= RESIZE_F_SHRINK;
    return flush_free(&fr);
}

/* The guest clusters a grow adds: [old_len / cluster, ceil(new / cluster)).
 * Tables past the old L1 size do not exist yet. */
static int scan_grow_range(struct qcow2 *q, struct table_window *w, struct cluster_cache *cache, uint64_t new_size)
{
    uint64_t cs = q->cluster_size;
    uint64_t old_len = q->size + ((512 - (q->size & 511)) & 511);
    uint64_t start_c = old_len / cs;
    uint64_t end_c = new_size / cs + ((new_size & (cs - 1)) != 0);
    uint64_t per_l2 = 1ull << q->l2_bits;
    for (uint64_t idx = start_c >> q->l2_bits; start_c < end_c && idx <= (end_c - 1) >> q->l2_bits && idx < q->l1_size;
         idx++) {
        uint64_t l1e;
        if (table_window_get(w, idx, &l1e)) return rt_error(0, GERR_IO, q->l1_offset, 0, 0);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) continue;
        if (l2 & (cs - 1)) return rt_error(0, GERR_INTERNAL, BAD_L2_TABLE, l2, 0);
        if (!(l1e & QCOW2_OFLAG_COPIED)) {
            n.flags |= RESIZE_F_BUSY_TAIL;
            return 0;
        }
        const uint8_t *t = cluster_cache_get(cache, l2);
        if (!t) return rt_error(0, GERR_IO, l2, 0, 0);
        uint64_t first = idx << q->l2_bits, g0 = start_c > first ? start_c : first;
        uint64_t g1 = end_c < first + per_l2 ? end_c : first + per_l2;
        for (uint64_t g = g0; g < g1; g++) {
            const uint8_t *ep = t + (g - first) * q->l2_entry_bytes;
            if (be64(ep) || (q->extl2 && be64(ep + 8))) {
                n.flags |= RESIZE_F_BUSY_TAIL;
                return 0;
            }
        }
    }
    return 0;
}

/* Zero-flagged entries of the L2 tables one L1 table points to, in order. */
static int scan_zero_l1(struct qcow2 *q, struct table_window *w, uint64_t l1_offset, uint64_t l1_size,
                        struct cluster_cache *cache)
{
    uint64_t cs = q->cluster_size, per_l2 = 1ull << q->l2_bits;
    for (uint64_t i = 0; i < l1_size; i++) {
        uint64_t l1e;
        if (table_window_get(w, i, &l1e)) return rt_error(0, GERR_IO, l1_offset, 0, 0);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) continue;
        if (l2 & (cs - 1)) return rt_error(0, GERR_INTERNAL, BAD_L2_TABLE, l2, 0);
        const uint8_t *t = cluster_cache_get(cache, l2);
        if (!t) return rt_error(0, GERR_IO, l2, 0, 0);
        for (uint64_t j = 0; j < per_l2; j++) {
            uint64_t e = be64(t + j * q->l2_entry_bytes);
            enum qcow2_cluster_type ty = qcow2_cluster_type(q, e);
            if (ty != QCT_ZERO_PLAIN && ty != QCT_ZERO_ALLOC) continue;
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (ty == QCT_ZERO_ALLOC && (host & (cs - 1))) {
                return rt_error(0, GERR_INTERNAL, BAD_DATA_CLUSTER, host, 0);
            }
            /* l2 is cluster aligned and j * entry bytes < cluster size: no overflow. */
            int rc = emit_pair(REC_AMEND_ZERO, &n.azero, l2 + j * q->l2_entry_bytes, e);
            if (rc) return rc;
        }
    }
    return 0;
}

/* qcow2_expand_zero_clusters' walk: the active L1, then each snapshot's. */
static int scan_zero(struct qcow2 *q, struct table_window *w, struct cluster_cache *cache)
{
    int rc = scan_zero_l1(q, w, q->l1_offset, q->l1_size, cache);
    if (rc || !q->nb_snapshots) return rc;
    uint64_t mark = rt_heap_mark();
    struct qcow2_snapshot *list = rt_alloc((uint64_t)q->nb_snapshots * sizeof *list);
    if (!list) return rt_error(0, GERR_OUT_OF_MEMORY, q->nb_snapshots, 0, 0);
    static struct table_window sw;
    if (table_window_init(&sw, q->r, 0, 0)) {
        rt_heap_release(mark);
        return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    }
    uint64_t size = 0, a1 = 0, a2 = 0;
    int k = qcow2_read_snapshots(q, list, &size, &a1, &a2);
    if (k) rc = rt_error(0, GERR_IO, q->snapshots_offset, 0, 0);
    for (uint64_t i = 0; !rc && i < q->nb_snapshots; i++) {
        struct rec_resize_run r;
        rec_init(&r, REC_AMEND_SNAP, sizeof r);
        r.start = i;
        r.count = list[i].disk_size;
        r.refcount = list[i].vm_state_size;
        rc = emit_bounded(&n.asnap, &r, sizeof r);
        if (rc) break;
        struct rec_resize_pair l1r;
        rec_init(&l1r, REC_AMEND_SNAP_L1, sizeof l1r);
        l1r.index = i;
        l1r.value = list[i].l1_size;
        if (rt_emit(&l1r, sizeof l1r)) {
            rc = -1;
            break;
        }
        /* One window, re-pointed at each snapshot's L1 (qcow2_open validated
         * every offset and size). */
        sw.offset = list[i].l1_offset;
        sw.entries = list[i].l1_size;
        sw.first = 0;
        sw.count = 0;
        rc = scan_zero_l1(q, &sw, list[i].l1_offset, list[i].l1_size, cache);
    }
    rt_heap_release(mark);
    return rc;
}

/* Every compressed entry of the active L1's tables: qcow2_free_any_cluster
 * drops one reference from each host cluster its data spans. */
static int scan_compressed(struct qcow2 *q, struct table_window *w, struct cluster_cache *cache)
{
    uint64_t cs = q->cluster_size, per_l2 = 1ull << q->l2_bits;
    for (uint64_t i = 0; i < q->l1_size; i++) {
        uint64_t l1e;
        if (table_window_get(w, i, &l1e)) return rt_error(0, GERR_IO, q->l1_offset, 0, 0);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) continue;
        if (l2 & (cs - 1)) return rt_error(0, GERR_INTERNAL, BAD_L2_TABLE, l2, 0);
        const uint8_t *t = cluster_cache_get(cache, l2);
        if (!t) return rt_error(0, GERR_IO, l2, 0, 0);
        for (uint64_t j = 0; j < per_l2; j++) {
            uint64_t e = be64(t + j * q->l2_entry_bytes);
            if (qcow2_cluster_type(q, e) != QCT_COMPRESSED) continue;
            uint64_t off, len, last;
            qcow2_compressed_range(q, e, &off, &len);
            if (!len || __builtin_add_overflow(off, len - 1, &last)) continue;
            uint64_t c0 = off >> q->cluster_bits, c1 = last >> q->cluster_bits;
            struct rec_resize_run r;
            rec_init(&r, REC_COMPRESSED_L2, sizeof r);
            /* i < l1_size <= 2^22 and l2_bits <= 18 (qcow2_open): no overflow. */
            r.start = (i << q->l2_bits) + j;
            r.count = c1 - c0 + 1;
            r.refcount = c0;
            int rc = emit_bounded(&n.comp, &r, sizeof r);
            if (rc) return rc;
        }
    }
    return 0;
}

static int scan(struct qcow2 *q, uint64_t new_size)
{
    static struct cluster_cache cache;
    static struct table_window w;
    if (cluster_cache_init(&cache, q->r, q->cluster_size, 4)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (table_window_init(&w, q->r, q->l1_offset, q->l1_size)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    int rc = qcow2_scan_refcounts(q, &cache, emit_bounded, &n.reftable, &n.runs);
    if (!rc) rc = scan_l1(q, &w);
    if (!rc && new_size < q->size) rc = scan_shrink(q, &w, &cache, new_size);
    if (!rc && new_size > q->size && (rt_params()->arg[1] & 1)) rc = scan_grow_range(q, &w, &cache, new_size);
    if (!rc && (rt_params()->arg[1] & 2)) {
        rc = scan_zero(q, &w, &cache);
        if (!rc) {
            struct rec_resize_pair c;
            rec_init(&c, REC_AMEND_COUNT, sizeof c);
            c.index = n.azero;
            c.value = n.asnap;
            rc = rt_emit(&c, sizeof c) ? -1 : 0;
        }
    }
    if (!rc && (rt_params()->arg[1] & 4)) rc = scan_compressed(q, &w, &cache);
    return rc;
}

int qcow2_resize_scan(const struct reader *r, uint64_t new_size)
{
    static struct qcow2 q;
    if (qcow2_open(&q, r, 0)) return -1;
    if (qcow2_emit_info(&q)) return -1;
    int rc = scan(&q, new_size);
    if (rc < 0) return -1;
    struct rec_resize_summary s;
    rec_init(&s, REC_RESIZE_SUMMARY, sizeof s);
    s.flags = n.flags;
    s.n_l1 = n.l1;
    s.n_reftable = n.reftable;
    s.n_runs = n.runs;
    s.n_free = n.free;
    s.n_zero = n.zero;
    return rt_emit(&s, sizeof s) ? -1 : 0;
}
