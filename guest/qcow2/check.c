/*
 * qcow2's check: qemu 7.2's qcow2_co_check_locked (check_refcounts over the
 * active and snapshot L1/L2 tables, the refcount structures and
 * check_oflag_copied), emitting one CHECK_MSG per stderr line qemu prints,
 * in qemu's order, then one CHECK record with the counters.
 *
 * Repair (params.flags CHECKOP_F_REPAIR_*) never writes here: the guest
 * sends a REPAIR_REFCOUNT record for each refcount compare_refcounts would
 * fix (leaks with -r leaks, any mismatch over a non-zero refcount with
 * -r all), counts them as fixed, and checks OFLAG_COPIED against the
 * refcounts after those fixes, sending a REPAIR_OFLAG record for each flag
 * check_oflag_copied repairs; the host plans and applies the writes
 * (lib/formats/qcow2/repair_plan.ts) and runs the check again.
 *
 * qemu keeps one in-memory refcount per cluster of the image file. We keep
 * the same counts in a sparse array of 4096-cluster chunks allocated on first
 * use, so memory follows what the metadata references, not the file or the
 * virtual size. guest/ops/check.c probes the input and calls this.
 */
#include "check.h"
#include "bytes.h"
#include "../ops/records.h"

#define CHUNK_BITS 12
#define CHUNK (1ull << CHUNK_BITS)
/* Most L2 entries one repair zeroes; past that the line is sent without its
 * REPAIR_L2ZERO record and the host refuses. */
#define ZEROED_MAX 64
/* Largest file (in clusters) -r all grows to hold a refcount block. */
#define GROW_MAX_CLUSTERS (1ull << 24)

struct checker {
    struct qcow2 *q;
    struct rec_check res;
    uint64_t file_len;
    uint64_t nb_clusters;   /* grows like qemu's refcount array */
    uint64_t dir_len;       /* chunk directory entries */
    void **dir;
    bool wide;              /* u32 counters (refcount widths 32/64), else u16 */
    uint64_t cmax;          /* largest count we can hold: min(refcount_max, counter max) */
    struct cluster_cache l2c;
    struct cluster_cache rbc;
    uint64_t snapshots_size;
    uint32_t repair;        /* CHECKOP_F_REPAIR_* */
    bool rebuild;           /* qemu's *rebuild: the refcount structures need rebuilding */
    bool rebuilt;           /* -r all rebuilt them: counts hold the references after it */
    uint64_t orig_size;     /* the file's size as opened */
    uint64_t grown_len;     /* -r all grew the file to hold a refcount block (0: not grown) */
    uint64_t calc_corr;     /* corruptions calculate_refcounts counted before check_refblocks */
    /* -r all: L2 entries of unaligned preallocated clusters made zero clusters
     * (qemu writes them at once; later reads of their tables see the new entry) */
    uint32_t n_zeroed;
    uint64_t zeroed[ZEROED_MAX];
};

static struct checker C;

/* Functions below return 0, -1 after an internal failure (ERROR record
 * emitted), or 1 when qemu's check itself fails at this point (CHECK.flags
 * holds the errno; the summary is not printed). */
#define TRY(x) do { int try_r_ = (x); if (try_r_) return try_r_; } while (0)
static uint32_t g_input;

static void msg(uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
{
    emit_check_msg(g_input, code, a0, a1, a2, a3);
}

/* Chunks allocated so far: a scope that allocated one must not release its
 * heap mark (the chunk lives on the same heap, above the mark). */
static uint64_t g_chunks;

static uint64_t count_get(const struct checker *c, uint64_t k)
{
    uint64_t ci = k >> CHUNK_BITS;
    if (ci >= c->dir_len || !c->dir[ci]) return 0;
    return c->wide ? ((uint32_t *)c->dir[ci])[k & (CHUNK - 1)] : ((uint16_t *)c->dir[ci])[k & (CHUNK - 1)];
}

/* 0, or -1 when out of memory (ERROR emitted). */
static int count_set(struct checker *c, uint64_t k, uint64_t v)
{
    uint64_t ci = k >> CHUNK_BITS;
    if (ci >= c->dir_len) return rt_error(g_input, GERR_INTERNAL, k, 0, 0);
    if (!c->dir[ci]) {
        c->dir[ci] = rt_calloc(CHUNK, c->wide ? 4 : 2);
        if (!c->dir[ci]) return rt_error(g_input, GERR_OUT_OF_MEMORY, k, 0, 0);
        g_chunks++;
    }
    if (c->wide) ((uint32_t *)c->dir[ci])[k & (CHUNK - 1)] = (uint32_t)v;
    else ((uint16_t *)c->dir[ci])[k & (CHUNK - 1)] = (uint16_t)v;
    return 0;
}

/* qcow2_inc_refcounts_imrt. Returns -1 only on internal failure. */
static int inc_refs(struct checker *c, uint64_t offset, uint64_t size)
{
    const struct qcow2 *q = c->q;
    if ((int64_t)size <= 0) return 0;
    /* qemu computes offset + size - file_len in int64 */
    if ((int64_t)(offset + size - c->file_len) >= (int64_t)q->cluster_size) {
        msg(CMSG_REGION_PAST_EOF, offset, size, 0, 0);
        c->res.corruptions++;
        return 0;
    }
    /* A negative int64 offset slips past that test in qemu and asks for a
     * refcount array of 2^54+ entries, which fails with -ENOMEM. */
    if ((int64_t)offset < 0) {
        c->res.check_errors++;
        c->res.flags = 12; /* ENOMEM */
        return 1;
    }
    uint64_t mask = ~(q->cluster_size - 1);
    uint64_t first = offset & mask, last = (offset + size - 1) & mask;
    for (uint64_t co = first;; co += q->cluster_size) {
        uint64_t k = co >> q->cluster_bits;
        if (k >= c->nb_clusters) c->nb_clusters = k + 1;
        uint64_t rc = count_get(c, k);
        if (rc == q->refcount_max || rc == c->cmax) {
            msg(CMSG_REFCOUNT_OVERFLOW, co, 0, 0, 0);
            msg(CMSG_REFCOUNT_OVERFLOW_HINT, 0, 0, 0, 0);
            c->res.corruptions++;
        } else if (count_set(c, k, rc + 1)) {
            return -1;
        }
        if (co == last) break;
    }
    return 0;
}

/* The entry at file offset `at`, as read (`e`) or as this repair rewrote it. */
static uint64_t entry_now(const struct checker *c, uint64_t at, uint64_t e)
{
    for (uint32_t k = 0; k < c->n_zeroed; k++)
        if (c->zeroed[k] == at) return c->q->extl2 ? 0 : QCOW2_OFLAG_ZERO;
    return e;
}

static struct qcow2_snapshot *g_snaps;

static bool ranges_meet(uint64_t at, uint64_t len, uint64_t start, uint64_t size)
{
    return size && at < start + size && start < at + len;
}

/* Whether qemu's overlap check (the default "cached" set, active L2 tables
 * ignored) stops a write of [at, at + len): the header, the active L1, the
 * refcount table and blocks (as the table names them, aligned or not), the
 * snapshot table, the snapshots' L1 tables, the bitmap directory. */
static bool meta_overlaps(const struct checker *c, uint64_t at, uint64_t len)
{
    const struct qcow2 *q = c->q;
    if (ranges_meet(at, len, 0, q->cluster_size) || ranges_meet(at, len, q->l1_offset, (uint64_t)q->l1_size * 8) ||
        ranges_meet(at, len, q->reftable_offset, q->reftable_entries * 8) ||
        ranges_meet(at, len, q->snapshots_offset, c->snapshots_size) ||
        ranges_meet(at, len, q->bitmap_dir_offset, q->nb_bitmaps ? q->bitmap_dir_size : 0))
        return true;
    for (uint64_t i = 0; i < q->reftable_entries; i++) {
        uint64_t b = q->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if (b && ranges_meet(at, len, b, q->cluster_size)) return true;
    }
    for (uint64_t i = 0; i < q->nb_snapshots; i++)
        if (ranges_meet(at, len, g_snaps[i].l1_offset, (uint64_t)g_snaps[i].l1_size * 8)) return true;
    return false;
}

static int check_l2(struct checker *c, uint64_t l2_offset, bool frag)
{
    const struct qcow2 *q = c->q;
    const uint8_t *l2 = cluster_cache_get(&c->l2c, l2_offset);
    if (!l2) return rt_error(g_input, GERR_IO, l2_offset, 0, 0);
    uint64_t next_contig = 0;
    for (uint64_t i = 0; i < q->l2_entries; i++) {
        /* The cache slot stays valid: nothing else uses l2c inside this loop. */
        uint64_t at = l2_offset + i * q->l2_entry_bytes;
        uint64_t e = entry_now(c, at, be64(l2 + i * q->l2_entry_bytes));
        uint64_t bm = q->extl2 ? be64(l2 + i * q->l2_entry_bytes + 8) : 0;
        enum qcow2_cluster_type t = qcow2_cluster_type(q, e);
        if (t != QCT_COMPRESSED && (e & QCOW2_L2E_STD_RESERVED_MASK)) {
            msg(CMSG_L2_RESERVED_BITS, e, 0, 0, 0);
            c->res.corruptions++;
        }
        switch (t) {
        case QCT_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                msg(CMSG_COMPRESSED_COPIED, e & q->cluster_offset_mask, 0, 0, 0);
                e &= ~QCOW2_OFLAG_COPIED;
                c->res.corruptions++;
            }
            if (q->has_data_file) {
                msg(CMSG_COMPRESSED_DATA_FILE, i, e, 0, 0);
                c->res.corruptions++;
                break;
            }
            if (bm) {
                msg(CMSG_COMPRESSED_BITMAP, i, e, 0, 0);
                c->res.corruptions++;
                break;
            }
            uint64_t coff, clen;
            qcow2_compressed_range(q, e, &coff, &clen);
            TRY(inc_refs(c, coff, clen));
            if (frag) {
                c->res.allocated_clusters++;
                c->res.compressed_clusters++;
                c->res.fragmented_clusters++;
            }
            break;
        }
        case QCT_ZERO_ALLOC:
        case QCT_NORMAL: {
            uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            if ((bm >> 32) & bm) {
                c->res.corruptions++;
                msg(CMSG_SUBCLUSTER_BITMAP_CORRUPT, off, 0, 0, 0);
            }
            if (off & (q->cluster_size - 1)) {
                c->res.corruptions++;
                bool data = q->extl2 ? (bm & QCOW2_BITMAP_ALL_ALLOC) != 0 : !(e & QCOW2_OFLAG_ZERO);
                /* In an active table only (a snapshot's may be shared), and
                 * where qemu's overlap check lets the write through: else
                 * the ERROR line stays and the host refuses. */
                if (!data && (c->repair & CHECKOP_F_REPAIR_ALL) && frag && !meta_overlaps(c, at, 8)) {
                    /* qemu writes the entry as a zero cluster and skips counting it */
                    msg(CMSG_PREALLOC_UNALIGNED_REPAIR, off, 0, 0, 0);
                    if (c->n_zeroed < ZEROED_MAX) {
                        uint64_t ne = q->extl2 ? 0 : QCOW2_OFLAG_ZERO;
                        struct rec_resize_pair rec;
                        rec_init(&rec, REC_REPAIR_L2ZERO, sizeof rec);
                        rec.index = at;
                        rec.value = ne;
                        if (rt_emit(&rec, sizeof rec)) return -1;
                        c->zeroed[c->n_zeroed++] = at;
                        c->res.corruptions--;
                        c->res.corruptions_fixed++;
                        continue;
                    }
                } else {
                    msg(data ? CMSG_DATA_UNALIGNED : CMSG_PREALLOC_UNALIGNED, off, 0, 0, 0);
                }
            }
            if (frag) {
                c->res.allocated_clusters++;
                if (next_contig && off != next_contig) c->res.fragmented_clusters++;
                next_contig = off + q->cluster_size;
            }
            if (!q->has_data_file) TRY(inc_refs(c, off, q->cluster_size));
            break;
        }
        case QCT_ZERO_PLAIN:
            break;
        case QCT_UNALLOCATED:
            if (bm & QCOW2_BITMAP_ALL_ALLOC) {
                c->res.corruptions++;
                msg(CMSG_UNALLOCATED_BITMAP, 0, 0, 0, 0);
            }
            break;
        }
    }
    return 0;
}

/* Returns 0, -1 on internal failure, 1 when qemu's check ends with an error. */
static int check_l1(struct checker *c, uint64_t l1_offset, uint64_t l1_size, bool frag)
{
    const struct qcow2 *q = c->q;
    if (!l1_size) return 0;
    TRY(inc_refs(c, l1_offset, l1_size * 8));
    /* qemu reads the whole table at once; past its maximum request end that
     * read fails (snapshot L1 offsets are any aligned 64-bit value). */
    uint64_t l1_end;
    if (__builtin_add_overflow(l1_offset, l1_size * 8, &l1_end) || l1_end > READER_MAX_END) {
        msg(CMSG_L1_READ_EIO, 0, 0, 0, 0);
        c->res.check_errors++;
        c->res.flags = 5; /* EIO */
        return 1;
    }
    uint64_t mark = rt_heap_mark(), chunks = g_chunks;
    struct table_window w;
    if (table_window_init(&w, q->r, l1_offset, l1_size)) return rt_error(g_input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    for (uint64_t i = 0; i < l1_size; i++) {
        uint64_t e;
        if (table_window_get(&w, i, &e)) return rt_error(g_input, GERR_IO, l1_offset, 0, 0);
        if (!e) continue;
        if (e & QCOW2_L1E_RESERVED_MASK) {
            msg(CMSG_L1_RESERVED_BITS, e, 0, 0, 0);
            c->res.corruptions++;
        }
        uint64_t l2 = e & QCOW2_L1E_OFFSET_MASK;
        TRY(inc_refs(c, l2, q->cluster_size));
        if (l2 & (q->cluster_size - 1)) {
            msg(CMSG_L2_TABLE_UNALIGNED, l2, 0, 0, 0);
            c->res.corruptions++;
        }
        TRY(check_l2(c, l2, frag));
    }
    if (g_chunks == chunks) rt_heap_release(mark);
    return 0;
}

/* qcow2_check_read_snapshot_table: validates the table pointer and walks
 * it. On failure qemu's check ends with ret < 0. With -r all, qemu
 * discards the snapshots past the 65,536th and those from the entry that
 * takes the table past 64 MiB ("overhanging"): q->nb_snapshots becomes the
 * count kept, as qemu's s->nb_snapshots (the host writes it into the
 * header), and their clusters are left to the refcount check as leaks. */

static int read_snapshot_table(struct checker *c, struct qcow2 *q)
{
    uint64_t n = q->nb_snapshots, off = q->snapshots_offset;
    bool all = (c->repair & CHECKOP_F_REPAIR_ALL) != 0;
    if (n > QCOW2_MAX_SNAPSHOTS && all) {
        msg(CMSG_SNAPSHOT_OVERHANG_DISCARD, n - QCOW2_MAX_SNAPSHOTS, 0, 0, 0);
        c->res.corruptions_fixed += n - QCOW2_MAX_SNAPSHOTS;
        n = q->nb_snapshots = QCOW2_MAX_SNAPSHOTS;
    }
    if (n > QCOW2_MAX_SNAPSHOTS) {
        msg(CMSG_SNAPSHOT_TABLE_TOO_LARGE, 0, 0, 0, 0);
        msg(CMSG_SNAPSHOT_OVERHANG_HINT, n - QCOW2_MAX_SNAPSHOTS, 0, 0, 0);
        c->res.check_errors++;
        c->res.flags = 27; /* EFBIG */
        return -1;
    }
    if ((uint64_t)INT64_MAX - n * QCOW2_SNAPSHOT_HEADER_SIZE < off || (off & (q->cluster_size - 1))) {
        msg(CMSG_SNAPSHOT_TABLE_OFFSET_INVALID, 0, 0, 0, 0);
        c->res.check_errors++;
        c->res.flags = 22; /* EINVAL */
        return -1;
    }
    if (!n) return 0;
    g_snaps = rt_alloc(n * sizeof *g_snaps);
    if (!g_snaps) return rt_error(g_input, GERR_OUT_OF_MEMORY, n, 0, 0);
    uint64_t a1 = 0, a2 = 0;
    /* -r all: qcow2_do_read_snapshots with repair walks past entries with
     * too much extra data (discarded when the host writes the table anew) */
    qcow2_snapshots_drop_extra = all;
    int k = qcow2_read_snapshots(q, g_snaps, &c->snapshots_size, &a1, &a2);
    qcow2_snapshots_drop_extra = 0;
    /* entry n - a1 takes the table past 64 MiB: -r all keeps those before it */
    uint64_t overhang = 0, overhang_extra = 0;
    if (k == QSNAP_TOO_BIG && all) {
        overhang = a1;
        overhang_extra = a2;
        n = q->nb_snapshots = (uint32_t)(n - a1);
        k = 0;
    }
    if (k < 0) return rt_error(g_input, GERR_IO, off, 0, 0);
    if (k == QSNAP_READ_FAILED) {
        msg(CMSG_SNAPSHOT_READ_EIO, 0, 0, 0, 0);
        c->res.check_errors++;
        c->res.flags = 5; /* EIO */
        return -1;
    }
    if (k == QSNAP_EXTRA_TOO_LARGE) {
        msg(CMSG_SNAPSHOT_EXTRA_TOO_LARGE, a1, 0, 0, 0);
        msg(CMSG_SNAPSHOT_EXTRA_HINT, 0, 0, 0, 0);
    } else if (k == QSNAP_TOO_BIG) {
        msg(CMSG_SNAPSHOT_TABLE_TOO_BIG, 0, 0, 0, 0);
        msg(CMSG_SNAPSHOT_OVERHANG_HINT, a1, 0, 0, 0);
    }
    if (k) {
        c->res.check_errors++;
        c->res.flags = 27; /* EFBIG */
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (g_snaps[i].extra_size > QCOW2_MAX_SNAPSHOT_EXTRA_DATA) {
            c->res.corruptions_fixed++;
            msg(CMSG_SNAPSHOT_EXTRA_DISCARD, i, g_snaps[i].extra_size, 0, 0);
        }
    }
    if (overhang) {
        /* qemu drops the first overhanging entry's extra data (and counts
         * it) before it finds that entry past the limit */
        if (overhang_extra > QCOW2_MAX_SNAPSHOT_EXTRA_DATA) {
            c->res.corruptions_fixed++;
            msg(CMSG_SNAPSHOT_EXTRA_DISCARD, n, overhang_extra, 0, 0);
        }
        msg(CMSG_SNAPSHOT_TOO_BIG_DISCARD, overhang, 0, 0, 0);
        c->res.corruptions_fixed += overhang;
    }
    /* v3 snapshot entries need at least 16 bytes of extra data. */
    for (uint64_t i = 0; q->version >= 3 && i < n; i++) {
        if (g_snaps[i].extra_size < 16) {
            /* -r all: qcow2_check_fix_snapshot_table writes the table anew
             * (the host does, after the refcount repairs) */
            if (c->repair & CHECKOP_F_REPAIR_ALL) {
                c->res.corruptions_fixed++;
                msg(CMSG_SNAPSHOT_INCOMPLETE_REPAIR, i, 0, 0, 0);
            } else {
                c->res.corruptions++;
                msg(CMSG_SNAPSHOT_INCOMPLETE, i, 0, 0, 0);
            }
        }
    }
    return 0;
}

/* Sends a snapshot string as a NAME record: C-string semantics (up to the
 * first NUL), cut at NAME_MAX bytes. */
static int emit_snapshot_string(uint16_t kind, uint64_t off, uint16_t len)
{
    static uint8_t b[LIMIT_NAME_MAX];
    uint16_t n = len > LIMIT_NAME_MAX ? LIMIT_NAME_MAX : len;
    if (reader_read(C.q->r, off, b, n)) return rt_error(g_input, GERR_IO, off, 0, 0);
    uint16_t k = 0;
    while (k < n && b[k]) k++;
    return emit_name(g_input, kind, b, k);
}

static int snapshot_msg(const struct qcow2_snapshot *s, uint32_t code, uint64_t a0)
{
    if (emit_snapshot_string(NAME_SNAPSHOT_ID, s->id_offset, s->id_len) ||
        emit_snapshot_string(NAME_SNAPSHOT_NAME, s->name_offset, s->name_len))
        return -1;
    msg(code, a0, 0, 0, 0);
    return 0;
}

/* The snapshot part of calculate_refcounts. */
static int check_snapshots(struct checker *c)
{
    const struct qcow2 *q = c->q;
    uint64_t n = q->nb_snapshots;
    if (q->has_data_file && n) {
        msg(CMSG_SNAPSHOTS_WITH_DATA_FILE, n, 0, 0, 0);
        c->res.corruptions++;
    }
    for (uint64_t i = 0; i < n; i++) {
        const struct qcow2_snapshot *s = &g_snaps[i];
        if (s->l1_offset & (q->cluster_size - 1)) {
            if (snapshot_msg(s, CMSG_SNAPSHOT_L1_UNALIGNED, s->l1_offset)) return -1;
            c->res.corruptions++;
            continue;
        }
        if (s->l1_size > QCOW2_MAX_L1_SIZE / 8) {
            if (snapshot_msg(s, CMSG_SNAPSHOT_L1_TOO_LARGE, s->l1_size)) return -1;
            c->res.corruptions++;
            continue;
        }
        int r = check_l1(c, s->l1_offset, s->l1_size, false);
        if (r) return r;
    }
    return 0;
}

/* qcow2_check_bitmaps_refcounts: the bitmap directory, each bitmap table
 * and the clusters it points to. A directory or table qemu cannot load makes
 * its check fail with -EINVAL after counting one corruption. Returns 1 for
 * that case, -1 on internal failure. */
static int check_bitmaps(struct checker *c)
{
    const struct qcow2 *q = c->q;
    if (!q->nb_bitmaps) return 0;
    TRY(inc_refs(c, q->bitmap_dir_offset, q->bitmap_dir_size));
    uint64_t at = q->bitmap_dir_offset, end = q->bitmap_dir_offset + q->bitmap_dir_size;
    uint64_t len = q->size & ~511ull, count = 0;
    /* bitmap_list_load: validate the whole directory before using any entry. */
    if (q->bitmap_dir_size == 0) goto broken;
    while (at < end) {
        uint8_t e[24];
        if (end - at < 24 || ++count > q->nb_bitmaps) goto broken;
        if (reader_read(q->r, at, e, 24)) return rt_error(g_input, GERR_IO, at, 0, 0);
        uint64_t toff = be64(e);
        uint32_t tsize = be32(e + 8), flags = be32(e + 12), nlen = be16(e + 18), extra = be32(e + 20);
        uint8_t type = e[16], gran = e[17];
        uint64_t esize = (24ull + nlen + extra + 7) & ~7ull;
        if (esize > end - at || extra != 0) goto broken;
        if (tsize == 0 || toff == 0 || (toff & (q->cluster_size - 1)) || tsize > 0x8000000u || gran > 31 || gran < 9 ||
            (flags & 0xfffffffcu) || nlen > 1023 || type != 1)
            goto broken;
        uint64_t phys = (uint64_t)tsize * q->cluster_size;
        if (phys > 0x20000000ull) goto broken;
        if (!(flags & 1) && len > ((phys * 8) << gran)) goto broken;
        at += esize;
    }
    if (count != q->nb_bitmaps) goto broken;
    for (at = q->bitmap_dir_offset; at < end;) {
        uint8_t e[24];
        if (reader_read(q->r, at, e, 24)) return rt_error(g_input, GERR_IO, at, 0, 0);
        uint64_t toff = be64(e), tsize = be32(e + 8);
        at += (24ull + be16(e + 18) + be32(e + 20) + 7) & ~7ull;
        TRY(inc_refs(c, toff, tsize * 8));
        uint64_t tend;
        if (__builtin_add_overflow(toff, tsize * 8, &tend) || tend > READER_MAX_END) {
            /* bitmap_table_load's read fails: one corruption, check fails with -EIO */
            c->res.corruptions++;
            c->res.flags = 5;
            return 1;
        }
        uint64_t mark = rt_heap_mark(), chunks = g_chunks;
        struct table_window w;
        if (table_window_init(&w, q->r, toff, tsize)) return rt_error(g_input, GERR_OUT_OF_MEMORY, 0, 0, 0);
        /* bitmap_table_load refuses the whole table on one bad entry. */
        for (uint64_t i = 0; i < tsize; i++) {
            uint64_t v;
            if (table_window_get(&w, i, &v)) return rt_error(g_input, GERR_IO, toff, 0, 0);
            uint64_t o = v & 0x00fffffffffffe00ull;
            if ((v & 0xff000000000001feull) || (o && ((v & 1) || (o & (q->cluster_size - 1))))) goto broken;
        }
        for (uint64_t i = 0; i < tsize; i++) {
            uint64_t v;
            if (table_window_get(&w, i, &v)) return rt_error(g_input, GERR_IO, toff, 0, 0);
            uint64_t o = v & 0x00fffffffffffe00ull;
            if (o) TRY(inc_refs(c, o, q->cluster_size));
        }
        if (g_chunks == chunks) rt_heap_release(mark);
    }
    return 0;
broken:
    c->res.corruptions++;
    c->res.flags = 22; /* EINVAL */
    return 1;
}

static int check_refblocks(struct checker *c)
{
    const struct qcow2 *q = c->q;
    for (uint64_t i = 0; i < q->reftable_entries; i++) {
        uint64_t e = q->reftable[i];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK, cl = off >> q->cluster_bits;
        if (e & QCOW2_REFT_RESERVED_MASK) {
            msg(CMSG_REFTABLE_RESERVED_BITS, i, 0, 0, 0);
            c->res.corruptions++;
            c->rebuild = true;
            continue;
        }
        if (off & (q->cluster_size - 1)) {
            msg(CMSG_REFBLOCK_UNALIGNED, i, 0, 0, 0);
            c->res.corruptions++;
            c->rebuild = true;
            continue;
        }
        if (cl >= c->nb_clusters) {
            c->res.corruptions++;
            /* -r all: qemu grows the file to end with the block and counts it.
             * Past instar's bound the ERROR line stays and the host refuses. */
            if ((c->repair & CHECKOP_F_REPAIR_ALL) && off <= (uint64_t)INT64_MAX - q->cluster_size &&
                cl + 1 <= GROW_MAX_CLUSTERS) {
                uint64_t nb = cl + 1, need = ((nb + 1) >> CHUNK_BITS) + 1;
                if (need > c->dir_len) {
                    void **d = rt_calloc(need, sizeof(void *));
                    if (!d) return rt_error(g_input, GERR_OUT_OF_MEMORY, need, 0, 0);
                    for (uint64_t k = 0; k < c->dir_len; k++) d[k] = c->dir[k];
                    c->dir = d;
                    c->dir_len = need;
                }
                msg(CMSG_REFBLOCK_OUTSIDE_REPAIR, i, off, 0, 0);
                c->file_len = off + q->cluster_size;
                c->grown_len = c->file_len;
                if (nb > c->nb_clusters) c->nb_clusters = nb;
                c->res.corruptions--;
                c->res.corruptions_fixed++;
                TRY(inc_refs(c, off, q->cluster_size));
                continue;
            }
            msg(CMSG_REFBLOCK_OUTSIDE, i, 0, 0, 0);
            continue;
        }
        if (off) {
            TRY(inc_refs(c, off, q->cluster_size));
            uint64_t rc = count_get(c, cl);
            if (rc != 1) {
                msg(CMSG_REFBLOCK_REFCOUNT, i, rc, 0, 0);
                c->res.corruptions++;
                c->rebuild = true;
            }
        }
    }
    return 0;
}

/* qcow2_get_refcount with qemu's side effect: the first unaligned refblock
 * offset is reported once as a (non-fatal, read-only) corruption event. */
static bool g_signaled;
static int get_refcount(struct checker *c, uint64_t cluster, uint64_t *rc)
{
    /* a refcount block in the part of the file -r all grew reads as zeros */
    uint64_t gi = cluster >> c->q->refblock_bits;
    if (c->grown_len && gi < c->q->reftable_entries) {
        uint64_t b = c->q->reftable[gi] & QCOW2_REFT_OFFSET_MASK;
        if (b && !(b & (c->q->cluster_size - 1)) && b >= c->orig_size && b < c->grown_len) {
            *rc = 0;
            return 0;
        }
    }
    int r = qcow2_get_refcount(c->q, &c->rbc, cluster, rc);
    if (r == -1 && !g_signaled) {
        uint64_t idx = cluster >> c->q->refblock_bits;
        msg(CMSG_CORRUPT_REFBLOCK_UNALIGNED, c->q->reftable[idx] & QCOW2_REFT_OFFSET_MASK, idx, 0, 0);
        g_signaled = true;
    }
    return r;
}

/* compare_refcounts with qemu's fix rule: a zero refcount needs a rebuild
 * (never fixed entry by entry), leaks are fixed by -r leaks and -r all,
 * refcounts below the references by -r all. */
static bool repairs(const struct checker *c, uint64_t r1, uint64_t r2)
{
    if (r1 == 0 || r1 == r2) return false;
    if (r1 > r2) return (c->repair & (CHECKOP_F_REPAIR_LEAKS | CHECKOP_F_REPAIR_ALL)) != 0;
    return (c->repair & CHECKOP_F_REPAIR_ALL) != 0;
}

/* REPAIR_REFCOUNT for `cluster`, whose refblock exists (its refcount is not
 * zero). 0, or -1 when the refblock cannot be read again. */
static int emit_repair(struct checker *c, uint64_t cluster)
{
    const struct qcow2 *q = c->q;
    uint64_t idx = cluster >> q->refblock_bits;
    if (idx >= q->reftable_entries) return -1;
    uint64_t block = q->reftable[idx] & QCOW2_REFT_OFFSET_MASK;
    if (!block || (block & (q->cluster_size - 1))) return -1;
    struct rec_repair_refcount rec;
    rec_init(&rec, REC_REPAIR_REFCOUNT, sizeof rec);
    rec.cluster = cluster;
    rec.refblock = block;
    if (q->refcount_order < 3) {
        const uint8_t *b = cluster_cache_get(&c->rbc, block);
        if (!b) return -1;
        uint64_t bit = (cluster & ((1ull << q->refblock_bits) - 1)) << q->refcount_order;
        rec.old_byte = b[bit >> 3];
    }
    return rt_emit(&rec, sizeof rec) ? -1 : 0;
}

/* The refcount check_oflag_copied sees: after a repair, the one the repair
 * leaves (qemu checks the flags after compare_refcounts fixed them). */
static int oflag_refcount(struct checker *c, uint64_t cluster, uint64_t *rc)
{
    if (c->rebuilt) {
        *rc = count_get(c, cluster);
        return 0;
    }
    int r = get_refcount(c, cluster, rc);
    if (r < 0 || !c->repair) return r;
    uint64_t r2 = count_get(c, cluster);
    if (*rc != r2 && repairs(c, *rc, r2)) *rc = r2;
    return 0;
}

/* compare_refcounts; returns the highest cluster in use. */
static uint64_t compare_refcounts(struct checker *c)
{
    const struct qcow2 *q = c->q;
    uint64_t highest = 0;
    uint64_t rb_entries = 1ull << q->refblock_bits;
    for (uint64_t i = 0; i < c->nb_clusters;) {
        uint64_t rti = i >> q->refblock_bits;
        uint64_t rte = rti < q->reftable_entries ? q->reftable[rti] & QCOW2_REFT_OFFSET_MASK : 0;
        uint64_t ci = i >> CHUNK_BITS;
        if (!rte && (ci >= c->dir_len || !c->dir[ci])) {
            /* Both sides are zero up to the next refblock or chunk boundary. */
            uint64_t a = (rti + 1) * rb_entries, b = (ci + 1) << CHUNK_BITS;
            i = a < b ? a : b;
            continue;
        }
        uint64_t r1;
        int rc = get_refcount(c, i, &r1);
        if (rc < 0) {
            msg(CMSG_REFCOUNT_EIO, i, 0, 0, 0);
            c->res.check_errors++;
            i++;
            continue;
        }
        uint64_t r2 = count_get(c, i);
        if (r1 || r2) highest = i;
        if (r1 != r2) {
            if (r1 == 0) c->rebuild = true;
            msg(CMSG_REFCOUNT_MISMATCH, r1 < r2 ? 0 : 1, i, r1, r2);
            if (repairs(c, r1, r2)) {
                if (emit_repair(c, i) < 0) c->res.check_errors++;
                else if (r1 < r2) c->res.corruptions_fixed++;
                else c->res.leaks_fixed++;
            } else if (r1 < r2) {
                c->res.corruptions++;
            } else {
                c->res.leaks++;
            }
        }
        i++;
    }
    return highest;
}

/* REPAIR_OFLAG: the entry at file offset `at` becomes `v`. */
static int emit_oflag(uint64_t at, uint64_t v)
{
    struct rec_resize_pair rec;
    rec_init(&rec, REC_REPAIR_OFLAG, sizeof rec);
    rec.index = at;
    rec.value = v;
    return rt_emit(&rec, sizeof rec) ? -1 : 0;
}

/* L2 tables whose entries this pass repaired: qemu writes each back before
 * the next L1 entry, so a later visit of the same table finds its flags
 * already right. An open-addressed set; a full set stops recording (a table
 * visited again after that is reported twice, and the host refuses). */
#define FIXED_SLOTS 8192u
static bool fixed_l2_has(const uint64_t *set, uint64_t off)
{
    if (!set) return false;
    for (uint32_t k = (uint32_t)(off >> 9) & (FIXED_SLOTS - 1), n = 0; n < FIXED_SLOTS;
         k = (k + 1) & (FIXED_SLOTS - 1), n++) {
        if (set[k] == off) return true;
        if (!set[k]) return false;
    }
    return false;
}
static void fixed_l2_add(uint64_t *set, uint64_t off)
{
    if (!set) return;
    for (uint32_t k = (uint32_t)(off >> 9) & (FIXED_SLOTS - 1), n = 0; n < FIXED_SLOTS;
         k = (k + 1) & (FIXED_SLOTS - 1), n++) {
        if (!set[k]) {
            set[k] = off;
            return;
        }
    }
}

/* check_oflag_copied. With -r all it repairs every flag; with -r leaks only
 * "if that seems safe": nothing is left unfixed by then. A repair is a
 * "Repairing" line, a REPAIR_OFLAG record and a fixed corruption. */
static int check_oflag_copied(struct checker *c)
{
    const struct qcow2 *q = c->q;
    struct table_window w;
    uint64_t mark = rt_heap_mark();
    bool repair = (c->repair & CHECKOP_F_REPAIR_ALL) ||
                  ((c->repair & CHECKOP_F_REPAIR_LEAKS) && !c->res.check_errors && !c->res.corruptions &&
                   !c->res.leaks);
    if (table_window_init(&w, q->r, q->l1_offset, q->l1_size)) return rt_error(g_input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    uint64_t *fixed = repair ? rt_calloc(FIXED_SLOTS, sizeof(uint64_t)) : 0;
    if (repair && !fixed) return rt_error(g_input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    for (uint64_t i = 0; i < q->l1_size; i++) {
        uint64_t l1e, rc;
        if (table_window_get(&w, i, &l1e)) return rt_error(g_input, GERR_IO, q->l1_offset, 0, 0);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) continue;
        if (oflag_refcount(c, l2 >> q->cluster_bits, &rc) < 0) continue;
        if ((rc == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
            if (repair) {
                msg(CMSG_OFLAG_COPIED_L2_REPAIR, i, l1e, rc, 0);
                if (emit_oflag(q->l1_offset + i * 8, l1e ^ QCOW2_OFLAG_COPIED) < 0) return -1;
                c->res.corruptions_fixed++;
            } else {
                c->res.corruptions++;
                msg(CMSG_OFLAG_COPIED_L2, i, l1e, rc, 0);
            }
        }
        if (fixed_l2_has(fixed, l2)) continue;
        const uint8_t *t = cluster_cache_get(&c->l2c, l2);
        if (!t) return rt_error(g_input, GERR_IO, l2, 0, 0);
        bool dirty = false;
        for (uint64_t j = 0; j < q->l2_entries; j++) {
            uint64_t e = entry_now(c, l2 + j * q->l2_entry_bytes, be64(t + j * q->l2_entry_bytes));
            enum qcow2_cluster_type ty = qcow2_cluster_type(q, e);
            if (ty != QCT_NORMAL && ty != QCT_ZERO_ALLOC) continue;
            if (q->has_data_file) rc = 1;
            else if (oflag_refcount(c, (e & QCOW2_L2E_OFFSET_MASK) >> q->cluster_bits, &rc) < 0)
                continue;
            if ((rc == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
                if (repair) {
                    msg(CMSG_OFLAG_COPIED_DATA_REPAIR, e, rc, 0, 0);
                    if (emit_oflag(l2 + j * q->l2_entry_bytes, e ^ QCOW2_OFLAG_COPIED) < 0) return -1;
                    c->res.corruptions_fixed++;
                    dirty = true;
                } else {
                    c->res.corruptions++;
                    msg(CMSG_OFLAG_COPIED_DATA, e, rc, 0, 0);
                }
            }
            /* oflag_refcount may have read refblocks: l2c is not touched, t stays valid */
        }
        if (dirty) fixed_l2_add(fixed, l2);
    }
    rt_heap_release(mark);
    return 0;
}

/* One REPAIR_REFRUN / REPAIR_OLDMETA record (rec_resize_run). */
static int emit_run(uint32_t type, uint64_t start, uint64_t count, uint64_t v)
{
    struct rec_resize_run rec;
    rec_init(&rec, type, sizeof rec);
    rec.start = start;
    rec.count = count;
    rec.refcount = v;
    return rt_emit(&rec, sizeof rec) ? -1 : 0;
}

/* Subtracts one reference from each cluster of [offset, offset + size),
 * as inc_refs added it (only the ranges inc_refs counted reach here). */
static int dec_refs(struct checker *c, uint64_t offset, uint64_t size)
{
    const struct qcow2 *q = c->q;
    uint64_t first = offset >> q->cluster_bits, last = (offset + size - 1) >> q->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        uint64_t v = count_get(c, k);
        if (v && count_set(c, k, v - 1)) return -1;
    }
    return 0;
}

/* -r all when qemu rebuilds the refcount structures (rebuild_refcount_structure):
 * the host plans the new structures from the references. Sends every non-zero
 * run of reference counts (REPAIR_REFRUN, ascending), the clusters the old
 * refcount table and blocks add to them (REPAIR_OLDMETA, one reference per
 * cluster each), and REPAIR_REBUILD (nb_clusters); then the counts become the
 * references after the rebuild (the old structures dropped), which is what
 * check_oflag_copied then reads from the new refcount blocks. */
static int send_rebuild(struct checker *c)
{
    const struct qcow2 *q = c->q;
    uint64_t start = 0, v = 0;
    for (uint64_t i = 0; i < c->nb_clusters;) {
        uint64_t ci = i >> CHUNK_BITS;
        uint64_t r = 0;
        if (ci < c->dir_len && c->dir[ci]) r = count_get(c, i);
        else if (!v) {
            i = (ci + 1) << CHUNK_BITS;
            continue;
        }
        if (r != v) {
            if (v && emit_run(REC_REPAIR_REFRUN, start, i - start, v) < 0) return -1;
            start = i;
            v = r;
        }
        i++;
    }
    if (v && emit_run(REC_REPAIR_REFRUN, start, c->nb_clusters - start, v) < 0) return -1;
    /* the refcount table, when inc_refs counted it (not past the end of the file) */
    uint64_t rt_size = q->reftable_entries * 8;
    if (rt_size && (int64_t)(q->reftable_offset + rt_size - c->file_len) < (int64_t)q->cluster_size) {
        uint64_t a = q->reftable_offset >> q->cluster_bits, b = (q->reftable_offset + rt_size - 1) >> q->cluster_bits;
        if (emit_run(REC_REPAIR_OLDMETA, a, b - a + 1, 1) < 0 || dec_refs(c, q->reftable_offset, rt_size) < 0)
            return -1;
    }
    for (uint64_t i = 0; i < q->reftable_entries; i++) {
        uint64_t e = q->reftable[i];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK, cl = off >> q->cluster_bits;
        if ((off & (q->cluster_size - 1)) || !off || cl >= c->nb_clusters) continue;
        if (e & QCOW2_REFT_RESERVED_MASK) {
            /* not counted, but qemu's overlap check still guards it: refcount 0 */
            if (emit_run(REC_REPAIR_OLDMETA, cl, 1, 0) < 0) return -1;
            continue;
        }
        if (emit_run(REC_REPAIR_OLDMETA, cl, 1, 1) < 0 || dec_refs(c, off, q->cluster_size) < 0) return -1;
    }
    struct rec_resize_pair rec;
    rec_init(&rec, REC_REPAIR_REBUILD, sizeof rec);
    rec.index = c->nb_clusters;
    rec.value = 0;
    if (rt_emit(&rec, sizeof rec)) return -1;
    /* qemu: the corruptions and leaks before the rebuild count as fixed but
     * those its second calculate_refcounts counts again (L1/L2 entries) */
    c->res.corruptions_fixed += c->res.corruptions - c->calc_corr;
    c->res.leaks_fixed += c->res.leaks;
    c->res.corruptions = c->calc_corr;
    c->res.leaks = 0;
    c->rebuilt = true;
    return 0;
}

/* calculate_refcounts: every reference the metadata makes, then the refblocks. */
static int calculate_refcounts(struct checker *c)
{
    const struct qcow2 *q = c->q;
    uint64_t start = c->res.corruptions;
    TRY(inc_refs(c, 0, q->cluster_size));
    TRY(check_l1(c, q->l1_offset, q->l1_size, true));
    TRY(check_snapshots(c));
    TRY(inc_refs(c, q->snapshots_offset, c->snapshots_size));
    TRY(inc_refs(c, q->reftable_offset, q->reftable_entries * 8));
    /* encryption: the LUKS header clusters the crypto header extension names */
    if (q->crypto_length) TRY(inc_refs(c, q->crypto_offset, q->crypto_length));
    TRY(check_bitmaps(c));
    c->calc_corr = c->res.corruptions - start;
    return check_refblocks(c);
}

static int emit_result(struct checker *c)
{
    c->res.input = g_input;
    return rt_emit(&c->res, sizeof c->res);
}

int qcow2_check(const struct reader *r)
{
    static struct qcow2 q;
    if (qcow2_open(&q, r, QCOW2_OPEN_CHECK)) return -1;
    if (qcow2_load_reftable(&q)) return -1;

    struct checker *c = &C;
    c->q = &q;
    c->repair = rt_params()->flags & (CHECKOP_F_REPAIR_LEAKS | CHECKOP_F_REPAIR_ALL);
    rec_init(&c->res, REC_CHECK, sizeof c->res);
    if (read_snapshot_table(c, &q)) return c->res.flags ? emit_result(c) : -1;
    /* bdrv_getlength of the file: whole sectors (rounded up). */
    c->file_len = r->size + ((512 - (r->size & 511)) & 511);
    c->orig_size = r->size;
    c->nb_clusters = (c->file_len + q.cluster_size - 1) >> q.cluster_bits;
    if (c->nb_clusters > 0x7fffffffull) {
        c->res.check_errors++;
        c->res.flags = 27; /* EFBIG: "Check failed: File too large" */
        return emit_result(c);
    }
    /* total_sectors * 512 in clusters; size <= INT64_MAX was checked at open */
    c->res.total_clusters = ((q.size & ~511ull) + q.cluster_size - 1) >> q.cluster_bits;
    c->wide = q.refcount_order >= 5;
    c->cmax = c->wide ? UINT32_MAX : UINT16_MAX;
    /* Ranges may reach at most one cluster past the end of the file. */
    c->dir_len = ((c->nb_clusters + 1) >> CHUNK_BITS) + 1;
    c->dir = rt_calloc(c->dir_len, sizeof(void *));
    if (!c->dir) return rt_error(g_input, GERR_OUT_OF_MEMORY, c->dir_len, 0, 0);
    uint32_t slots = q.cluster_size >= (1u << 20) ? 2 : 8;
    if (cluster_cache_init(&c->l2c, r, q.cluster_size, 2) || cluster_cache_init(&c->rbc, r, q.cluster_size, slots))
        return rt_error(g_input, GERR_OUT_OF_MEMORY, 0, 0, 0);

    int st = calculate_refcounts(c);
    if (st) return st > 0 ? emit_result(c) : -1;
    uint64_t highest = compare_refcounts(c);
    if (c->rebuild && (c->repair & CHECKOP_F_REPAIR_ALL) && !c->res.check_errors && send_rebuild(c)) return -1;
    if (check_oflag_copied(c)) return -1;
    c->res.image_end_offset = (highest + 1) << q.cluster_bits;
    return emit_result(c);
}
