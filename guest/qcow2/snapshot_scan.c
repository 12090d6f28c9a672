/*
 * qcow2's snapshot scan: extracts, from a qcow2 image, exactly the metadata
 * the host's snapshot planner (lib/formats/qcow2/snapshot_plan.ts) needs to
 * replay qemu 7.2's qcow2_snapshot_create/goto/delete, after checking it
 * structurally. The planner never sees image bytes; it sees these records:
 *
 *   QCOW2_INFO + NAME  the decoded header (qcow2_open, normal read/write mode)
 *   RESIZE_REFTABLE    every refcount-table entry with an offset (index, raw value)
 *   RESIZE_REFRUN      the non-zero refcounts of all clusters the refcount blocks
 *                      describe, as ascending runs of equal value
 *   SNAP_ENTRY         each snapshot table entry as qcow2_read_snapshots keeps
 *                      it, followed by SNAP_BYTES with its id and name (each cut
 *                      at its first NUL, as qemu's C strings are) and its unknown
 *                      extra data
 *   SNAP_L1            the non-zero entries of the active L1 table (arg[1]
 *                      SNAPSCAN_F_ACTIVE_L1) and of snapshot arg[0] - 1's
 *   SNAP_L2RUN         the non-zero entries of every L2 table those L1 tables
 *                      name (each table once, ascending by offset), as runs
 *   SNAP_SUMMARY       last: the count of each kind and the old table's size
 *
 * Every kind is bounded by SNAP_MAX_EACH records; past that the scan stops
 * with SNAPSUM_F_TOO_BIG and the host refuses.
 *
 * ERROR GERR_INTERNAL a0 values (the host words the refusal; qemu would
 * call these corruption):
 *   1 refcount block offset not cluster aligned (a1 = offset)
 *   2 L2 table offset not cluster aligned, or an L1 entry with reserved bits
 *     and no offset (a1 = L1 entry)
 *   3 data cluster offset not cluster aligned (a1 = L2 entry)
 *   4 compressed data past the end of the addressable file (a1 = L2 entry)
 */
#include "snapshot_scan.h"
#include "refscan.h"
#include "bytes.h"
#include "../ops/records.h"

#define SNAP_MAX_EACH (1u << 20)
#define SNAP_MAX_L2_TABLES (1u << 20)

#define BAD_L2_TABLE 2
#define BAD_DATA_CLUSTER 3
#define BAD_COMPRESSED 4

static struct {
    uint64_t entries, bytes, l1, runs, reftable, refruns;
    uint32_t flags;
} n;

/* Emits one record of a bounded kind; -1 on a malformed record, 1 when the
 * bound is hit (the scan then stops cleanly). */
static int emit_bounded(uint64_t *count, void *rec, uint32_t size)
{
    if (*count >= SNAP_MAX_EACH) {
        n.flags |= SNAPSUM_F_TOO_BIG;
        return 1;
    }
    (*count)++;
    return rt_emit(rec, size) ? -1 : 0;
}

/* --- the snapshot table --- */

static int emit_bytes(uint32_t index, uint16_t what, const uint8_t *p, uint32_t len)
{
    static struct rec_snap_bytes b;
    for (uint32_t at = 0; at < len; at += sizeof b.bytes) {
        uint32_t k = len - at < sizeof b.bytes ? len - at : (uint32_t)sizeof b.bytes;
        rec_init(&b, REC_SNAP_BYTES, sizeof b);
        b.index = index;
        b.what = what;
        b.length = (uint16_t)k;
        b.offset = at;
        memcpy(b.bytes, p + at, k);
        int rc = emit_bounded(&n.bytes, &b, sizeof b);
        if (rc) return rc;
    }
    return 0;
}

static uint32_t cstr_len(const uint8_t *s, uint32_t n)
{
    uint32_t k = 0;
    while (k < n && s[k]) k++;
    return k;
}

/* The snapshot's L1 table (for arg[0]); set by the walk. */
static uint64_t pick_l1_offset;
static uint32_t pick_l1_size;

/*
 * qcow2_read_snapshots, in one sequential pass (qcow2_open already walked
 * the table and refused what qemu refuses, so the bounds hold). Returns the
 * table's size in bytes through *size.
 */
static int scan_snapshots(struct qcow2 *q, uint64_t pick, uint64_t *size)
{
    static uint8_t str[65536];
    uint64_t start = q->snapshots_offset, at = start;
    struct byte_window w;
    if (byte_window_init(&w, q->r)) w.buf = NULL;
    for (uint64_t i = 0; i < q->nb_snapshots; i++) {
        uint8_t h[QCOW2_SNAPSHOT_HEADER_SIZE];
        at = (at + 7) & ~7ull;
        if (byte_window_read(&w, at, h, sizeof h)) return rt_error(0, GERR_IO, at, 0, 0);
        uint32_t id_len = be16(h + 12), name_len = be16(h + 14), extra = be32(h + 36);
        /* SNAPSCAN_F_DROP_EXTRA (qcow2_open walked past it): check -r all
         * keeps the first 1024 bytes and drops the rest */
        bool drop = extra > QCOW2_MAX_SNAPSHOT_EXTRA_DATA;
        if (drop && !qcow2_snapshots_drop_extra)
            return rt_error(0, GERR_BAD_SNAPSHOT_TABLE, QSNAP_EXTRA_TOO_LARGE, i, extra);
        uint32_t kept = drop ? QCOW2_MAX_SNAPSHOT_EXTRA_DATA : extra;
        struct rec_snap_entry e;
        rec_init(&e, REC_SNAP_ENTRY, sizeof e);
        e.index = (uint32_t)i;
        e.extra_size = kept;
        e.l1_offset = be64(h);
        e.l1_size = be32(h + 8);
        e.date_sec = be32(h + 16);
        e.date_nsec = be32(h + 20);
        e.vm_clock_nsec = be64(h + 24);
        e.vm_state_size = be32(h + 32);
        uint8_t x[QCOW2_MAX_SNAPSHOT_EXTRA_DATA];
        if (byte_window_read(&w, at + sizeof h, x, kept)) return rt_error(0, GERR_IO, at, 0, 0);
        if (kept >= 8) e.vm_state_size = be64(x);
        e.disk_size = kept >= 16 ? be64(x + 8) : (q->size & ~511ull);
        e.icount = kept >= 24 ? be64(x + 16) : UINT64_MAX;
        e.unknown_len = kept > 24 ? kept - 24 : 0;
        uint64_t id_at = at + sizeof h + extra;
        if (byte_window_read(&w, id_at, str, id_len)) return rt_error(0, GERR_IO, id_at, 0, 0);
        e.id_len = cstr_len(str, id_len);
        uint64_t name_at = id_at + id_len;
        static uint8_t name[65536];
        if (byte_window_read(&w, name_at, name, name_len)) return rt_error(0, GERR_IO, name_at, 0, 0);
        e.name_len = cstr_len(name, name_len);
        int rc = emit_bounded(&n.entries, &e, sizeof e);
        if (!rc) rc = emit_bytes((uint32_t)i, SNAPBYTES_ID, str, e.id_len);
        if (!rc) rc = emit_bytes((uint32_t)i, SNAPBYTES_NAME, name, e.name_len);
        if (!rc && e.unknown_len) rc = emit_bytes((uint32_t)i, SNAPBYTES_EXTRA, x + 24, e.unknown_len);
        if (rc) return rc;
        if (i + 1 == pick) {
            pick_l1_offset = e.l1_offset;
            pick_l1_size = e.l1_size;
        }
        at = name_at + name_len;
    }
    *size = at - start;
    return 0;
}

/* --- L1 and L2 tables --- */

static uint64_t *l2s;
static uint64_t nl2, capl2;

static int scan_l1(struct qcow2 *q, uint32_t table, uint64_t offset, uint64_t entries)
{
    static struct table_window w;
    if (table_window_init(&w, q->r, offset, entries)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t e;
        if (table_window_get(&w, i, &e)) return rt_error(0, GERR_IO, offset, 0, 0);
        if (!e) continue;
        uint64_t l2 = e & QCOW2_L1E_OFFSET_MASK;
        if (!l2 || (l2 & (q->cluster_size - 1))) return rt_error(0, GERR_INTERNAL, BAD_L2_TABLE, e, 0);
        struct rec_snap_l1 r;
        rec_init(&r, REC_SNAP_L1, sizeof r);
        r.table = table;
        r.index = i;
        r.value = e;
        int rc = emit_bounded(&n.l1, &r, sizeof r);
        if (rc) return rc;
        if (nl2 >= capl2) {
            n.flags |= SNAPSUM_F_TOO_BIG;
            return 1;
        }
        l2s[nl2++] = l2;
    }
    return 0;
}

static void sift(uint64_t *a, uint64_t root, uint64_t end)
{
    for (;;) {
        uint64_t c = 2 * root + 1;
        if (c >= end) return;
        if (c + 1 < end && a[c + 1] > a[c]) c++;
        if (a[root] >= a[c]) return;
        uint64_t t = a[root];
        a[root] = a[c];
        a[c] = t;
        root = c;
    }
}

static void heapsort(uint64_t *a, uint64_t k)
{
    for (uint64_t i = k / 2; i-- > 0;) sift(a, i, k);
    for (uint64_t e = k; e > 1; e--) {
        uint64_t t = a[0];
        a[0] = a[e - 1];
        a[e - 1] = t;
        sift(a, 0, e - 1);
    }
}

struct l2run {
    struct rec_snap_l2run r;
    bool open;
};

static int flush_run(struct l2run *p)
{
    if (!p->open) return 0;
    p->open = false;
    return emit_bounded(&n.runs, &p->r, sizeof p->r);
}

static int scan_l2(struct qcow2 *q, struct cluster_cache *cache, uint64_t l2)
{
    const uint8_t *t = cluster_cache_get(cache, l2);
    if (!t) return rt_error(0, GERR_IO, l2, 0, 0);
    uint64_t cs = q->cluster_size;
    static struct l2run run;
    run.open = false;
    for (uint64_t j = 0; j < q->l2_entries; j++) {
        const uint8_t *ep = t + j * q->l2_entry_bytes;
        uint64_t e = be64(ep), bitmap = q->extl2 ? be64(ep + 8) : 0;
        uint64_t entry_at = l2 + j * q->l2_entry_bytes;
        if (!e && !bitmap) {
            int rc = flush_run(&run);
            if (rc) return rc;
            continue;
        }
        uint32_t kind = SNAPRUN_NONE, ref_clusters = 1;
        uint64_t ref = 0;
        /* qcow2_update_snapshot_refcount classifies the entry without COPIED. */
        switch (qcow2_cluster_type(q, e & ~QCOW2_OFLAG_COPIED)) {
        case QCT_NORMAL:
        case QCT_ZERO_ALLOC: {
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (host & (cs - 1)) return rt_error(0, GERR_INTERNAL, BAD_DATA_CLUSTER, e, 0);
            kind = SNAPRUN_DATA;
            ref = host >> q->cluster_bits;
            break;
        }
        case QCT_COMPRESSED: {
            uint64_t off, len, last;
            qcow2_compressed_range(q, e, &off, &len);
            if (__builtin_add_overflow(off, len - 1, &last) || last >= READER_MAX_END)
                return rt_error(0, GERR_INTERNAL, BAD_COMPRESSED, e, 0);
            kind = SNAPRUN_COMPRESSED;
            ref = off >> q->cluster_bits;
            ref_clusters = (uint32_t)((last >> q->cluster_bits) - ref + 1);
            break;
        }
        default:
            break;
        }
        struct rec_snap_l2run *r = &run.r;
        if (run.open && kind != SNAPRUN_COMPRESSED && r->kind == kind && r->bitmap == bitmap &&
            r->entry + (uint64_t)r->count * q->l2_entry_bytes == entry_at && r->count < UINT32_MAX) {
            uint64_t step = kind == SNAPRUN_DATA ? cs : 0;
            uint64_t want = r->value + (uint64_t)r->count * step; /* offsets < 2^56: no carry into flags */
            if (e == want && (kind != SNAPRUN_DATA || ref == r->ref_first + r->count)) {
                r->count++;
                continue;
            }
        }
        int rc = flush_run(&run);
        if (rc) return rc;
        rec_init(r, REC_SNAP_L2RUN, sizeof *r);
        r->entry = entry_at;
        r->value = e;
        r->bitmap = bitmap;
        r->ref_first = ref;
        r->count = 1;
        r->kind = kind;
        r->ref_clusters = ref_clusters;
        run.open = true;
    }
    return flush_run(&run);
}

static int scan(struct qcow2 *q, uint64_t *table_size)
{
    static struct cluster_cache cache;
    if (cluster_cache_init(&cache, q->r, q->cluster_size, 4)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    const struct params *p = rt_params();
    uint64_t pick = p->arg[0];
    if (pick > q->nb_snapshots) return rt_error(0, GERR_BAD_PARAMS, 3, pick, 0);
    int rc = qcow2_scan_refcounts(q, &cache, emit_bounded, &n.reftable, &n.refruns);
    if (!rc) rc = scan_snapshots(q, pick, table_size);
    if (rc) return rc;
    bool active = (p->arg[1] & SNAPSCAN_F_ACTIVE_L1) != 0;
    uint64_t want = (active ? q->l1_size : 0) + (pick ? pick_l1_size : 0);
    if (pick && qcow2_validate_snapshot_l1(q, pick_l1_offset, pick_l1_size)) return -1;
    capl2 = want < SNAP_MAX_L2_TABLES ? want : SNAP_MAX_L2_TABLES;
    l2s = rt_alloc(capl2 ? capl2 * 8 : 8);
    if (!l2s) return rt_error(0, GERR_OUT_OF_MEMORY, capl2 * 8, 0, 0);
    nl2 = 0;
    if (active) rc = scan_l1(q, 0, q->l1_offset, q->l1_size);
    if (!rc && pick) rc = scan_l1(q, 1, pick_l1_offset, pick_l1_size);
    if (rc) return rc;
    heapsort(l2s, nl2);
    for (uint64_t i = 0; i < nl2; i++) {
        if (i && l2s[i] == l2s[i - 1]) continue;
        rc = scan_l2(q, &cache, l2s[i]);
        if (rc) return rc;
    }
    return 0;
}

int qcow2_snapshot_scan(const struct reader *r)
{
    static struct qcow2 q;
    qcow2_snapshots_drop_extra = (rt_params()->arg[1] & SNAPSCAN_F_DROP_EXTRA) != 0;
    if (qcow2_open(&q, r, 0)) return -1;
    if (qcow2_emit_info(&q)) return -1;
    uint64_t table_size = 0;
    int rc = scan(&q, &table_size);
    if (rc < 0) return -1;
    struct rec_snap_summary s;
    rec_init(&s, REC_SNAP_SUMMARY, sizeof s);
    s.flags = n.flags;
    s.n_entries = n.entries;
    s.n_bytes = n.bytes;
    s.n_l1 = n.l1;
    s.n_runs = n.runs;
    s.n_reftable = n.reftable;
    s.n_refruns = n.refruns;
    s.table_size = table_size;
    return rt_emit(&s, sizeof s) ? -1 : 0;
}
