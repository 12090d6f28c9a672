/*
 * qcow2's bitmap scan: the metadata the host's bitmap planner
 * (lib/formats/qcow2/bitmap_plan.ts) needs, after qcow2_open checked the
 * bitmap directory and every table as qemu's qcow2_load_dirty_bitmaps does:
 *
 *   BITMAP_DIR    each directory entry, directory order (name, flags,
 *                 granularity, table offset and size, state bits)
 *   BITMAP_ENTRY  each table entry pointing at a data cluster, with whether
 *                 that cluster has a set bit inside the bitmap (qemu stores
 *                 only such clusters when it writes the bitmap back); an
 *                 all-ones entry (1) is reported with value 1
 *   BITMAP_CUT    after an entry whose cluster also has set bits past the
 *                 bitmap's end (judged against a shrink's new end): what
 *                 qemu's truncated bitmap keeps of that cluster
 *   then the resize scan's records for the image's own size: QCOW2_INFO,
 *   RESIZE_L1, RESIZE_REFTABLE, RESIZE_REFRUN and RESIZE_SUMMARY (last).
 *
 * A bitmap in use (flag bit 0) is not read (qemu does not load it). State
 * bits (BMS_*): entries of all ones, bits set past the bitmap's end (the
 * bitmap command takes both as qemu loads them, lib/formats/qcow2/
 * bitmap_tail.ts; resize and commit too). At most
 * BITMAP_MAX_ENTRIES entries in all.
 */
#include "bitmap_scan.h"
#include "resize_scan.h"
#include "bytes.h"
#include "../ops/records.h"

#define BITMAP_MAX_ENTRIES (256u * 1024u)

/* Whether the data cluster at `off` has a set bit among its first `bits`
 * bits (LSB first in each byte, as qemu serializes), and past them; *edge
 * is byte bits / 8 with the bits past them cleared (0 when none is left). */
static int scan_cluster(struct qcow2 *q, uint8_t *buf, uint64_t off, uint64_t bits, bool *nonzero, bool *tail,
                        uint8_t *edge)
{
    if (reader_read(q->r, off, buf, q->cluster_size)) return rt_error(0, GERR_IO, off, 0, 0);
    uint64_t full = bits / 8, rest = bits % 8;
    *nonzero = false;
    *tail = false;
    *edge = 0;
    for (uint64_t i = 0; i < q->cluster_size; i++) {
        uint8_t b = buf[i];
        if (!b) continue;
        if (i < full) {
            *nonzero = true;
        } else if (i == full && rest) {
            uint8_t in = (uint8_t)((1u << rest) - 1);
            if (b & in) *nonzero = true;
            *edge = (uint8_t)(b & in);
            if (b & ~in) *tail = true;
        } else {
            *tail = true;
        }
    }
    return 0;
}

static int scan_bitmaps(struct qcow2 *q, uint64_t len)
{
    if (!q->nb_bitmaps) return 0;
    uint8_t *buf = rt_alloc(q->cluster_size);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, q->cluster_size, 0, 0);
    struct table_window w;
    if (table_window_init(&w, q->r, 0, 0)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    static struct rec_bitmap_dir d;
    uint64_t start = q->bitmap_dir_offset, end = start + q->bitmap_dir_size; /* checked at open */
    uint64_t total = 0;
    uint64_t per_cluster = q->cluster_size * 8;
    uint32_t index = 0;
    for (uint64_t at = start; at < end; index++) {
        uint8_t e[24];
        if (reader_read(q->r, at, e, 24)) return rt_error(0, GERR_IO, at, 0, 0);
        rec_init(&d, REC_BITMAP_DIR, sizeof d);
        d.index = index;
        d.table_offset = be64(e);
        d.table_size = be32(e + 8);
        d.flags = be32(e + 12);
        d.type = e[16];
        d.granularity_bits = e[17];
        d.name_len = be16(e + 18); /* <= 1023, checked at open */
        d.extra_size = be32(e + 20); /* 0, checked at open */
        d.state = 0;
        d.dir_offset = q->bitmap_dir_offset;
        d.dir_size = q->bitmap_dir_size;
        memset(d.name, 0, sizeof d.name);
        if (reader_read(q->r, at + 24, d.name, d.name_len)) return rt_error(0, GERR_IO, at, 0, 0);
        at += (24ull + d.name_len + 7) & ~7ull;
        uint64_t bits = len ? ((len - 1) >> d.granularity_bits) + 1 : 0;
        uint64_t n_entries = 0;
        /* Entries first (they are sent after the DIR record, which carries the state). */
        uint64_t mark = rt_heap_mark();
        struct rec_bitmap_entry *list = 0;
        static struct rec_bitmap_cut cut;
        uint64_t cut_after = UINT64_MAX; /* the entry the cut follows (at most one: the boundary cluster) */
        if (!(d.flags & 1)) {
            list = rt_alloc((uint64_t)d.table_size * sizeof *list);
            if (!list) return rt_error(0, GERR_OUT_OF_MEMORY, d.table_size, 0, 0);
            w.offset = d.table_offset;
            w.entries = d.table_size;
            w.count = 0;
            for (uint64_t i = 0; i < d.table_size; i++) {
                uint64_t v;
                if (table_window_get(&w, i, &v)) return rt_error(0, GERR_IO, d.table_offset, 0, 0);
                if (!v) continue;
                if (total >= BITMAP_MAX_ENTRIES) {
                    d.state |= BMS_TOO_BIG;
                    break;
                }
                if (v == 1) {
                    /* all ones: reported with value 1 (every bit of its range set, no cluster) */
                    d.state |= BMS_ALL_ONES;
                    struct rec_bitmap_entry *r = &list[n_entries++];
                    rec_init(r, REC_BITMAP_ENTRY, sizeof *r);
                    r->bitmap = index;
                    r->nonzero = 1;
                    r->index = i;
                    r->value = 1;
                    total++;
                    continue;
                }
                uint64_t first = i * per_cluster; /* table_size <= 2^27: no overflow */
                uint64_t here = bits > first ? bits - first : 0;
                if (here > per_cluster) here = per_cluster;
                bool nonzero = false, tail = false;
                uint8_t edge = 0;
                if (scan_cluster(q, buf, v & 0x00fffffffffffe00ull, here, &nonzero, &tail, &edge)) return -1;
                if (tail) d.state |= BMS_TAIL_BITS;
                if (tail && nonzero) {
                    rec_init(&cut, REC_BITMAP_CUT, sizeof cut);
                    cut.bitmap = index;
                    cut.index = i;
                    cut.keep = here / 8;
                    cut.partial = (here % 8) != 0;
                    cut.byte = edge;
                    cut_after = n_entries;
                }
                struct rec_bitmap_entry *r = &list[n_entries++];
                rec_init(r, REC_BITMAP_ENTRY, sizeof *r);
                r->bitmap = index;
                r->nonzero = nonzero;
                r->index = i;
                r->value = v;
                total++;
            }
        }
        if (rt_emit(&d, sizeof d)) return -1;
        for (uint64_t i = 0; i < n_entries; i++) {
            if (rt_emit(&list[i], sizeof list[i])) return -1;
            if (i == cut_after && rt_emit(&cut, sizeof cut)) return -1;
        }
        rt_heap_release(mark);
        if (d.state & BMS_TOO_BIG) return 0;
    }
    return 0;
}

int qcow2_bitmap_scan(const struct reader *r, uint64_t len)
{
    static struct qcow2 q;
    if (qcow2_open(&q, r, 0)) return -1;
    if (len == UINT64_MAX) len = q.size;
    if (len > q.size) return rt_error(0, GERR_BAD_PARAMS, 1, len, 0);
    if (scan_bitmaps(&q, len & ~511ull)) return -1;
    return qcow2_resize_scan(r, q.size);
}

/* The directory entry `index` of q: its table offset/size and granularity. */
static int find_entry(struct qcow2 *q, uint64_t index, uint64_t *toff, uint64_t *tsize, uint32_t *gbits, uint32_t *flags)
{
    uint64_t at = q->bitmap_dir_offset, end = at + q->bitmap_dir_size; /* checked at open */
    for (uint64_t i = 0; at < end; i++) {
        uint8_t e[24];
        if (reader_read(q->r, at, e, 24)) return rt_error(0, GERR_IO, at, 0, 0);
        if (i == index) {
            *toff = be64(e);
            *tsize = be32(e + 8);
            *flags = be32(e + 12);
            *gbits = e[17];
            return 0;
        }
        at += (24ull + be16(e + 18) + 7) & ~7ull;
    }
    return rt_error(0, GERR_BAD_PARAMS, 2, index, 0);
}

static void set_bits(uint8_t *b, uint64_t first, uint64_t last)
{
    for (uint64_t i = first; i <= last; i++) b[i >> 3] |= (uint8_t)(1u << (i & 7));
}

/* The 64-bit word holding a merge's last bit, bits past the end included:
 * qemu's hbitmap_merge ORs whole words when the granularities match. */
static uint8_t tail_word[8];
static uint32_t last_gs; /* the granularity bits of the bitmap or_bitmap read last */

/* ORs bitmap `index` of q (granularity 2^gs over len bytes) into dst
 * (granularity 2^gd, nd bits); with the same granularity, its last word
 * (bits past the end too) into tail_word. */
static int or_bitmap(struct qcow2 *q, uint64_t index, uint8_t *dst, uint32_t gd, uint64_t nd, uint64_t len,
                     bool in_use_ok)
{
    uint64_t toff, tsize;
    uint32_t gs, flags;
    if (find_entry(q, index, &toff, &tsize, &gs, &flags)) return -1;
    last_gs = gs;
    /* in use: never loaded (unless the host marked it itself, arg[7] bit 0) */
    if ((flags & 1) && !in_use_ok) return rt_error(0, GERR_BAD_PARAMS, 6, index, 0);
    uint64_t ns = len ? ((len - 1) >> gs) + 1 : 0;
    uint64_t per = q->cluster_size * 8;
    uint8_t *buf = rt_alloc(q->cluster_size);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, q->cluster_size, 0, 0);
    struct table_window w;
    if (table_window_init(&w, q->r, toff, tsize)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    for (uint64_t k = 0; k < tsize && k * per < ns; k++) {
        uint64_t v;
        if (table_window_get(&w, k, &v)) return rt_error(0, GERR_IO, toff, 0, 0);
        if (!v) continue;
        if (v == 1) memset(buf, 0xff, q->cluster_size);
        else if (reader_read(q->r, v & 0x00fffffffffffe00ull, buf, q->cluster_size))
            return rt_error(0, GERR_IO, v, 0, 0);
        uint64_t n = ns - k * per < per ? ns - k * per : per;
        if (gs == gd && ns - k * per <= per && (n & 63))
            for (uint64_t b = 0; b < 8; b++) tail_word[b] |= buf[((n & ~63ull) >> 3) + b];
        for (uint64_t i = 0; i < n; i++) {
            if (!(buf[i >> 3] & (1u << (i & 7)))) {
                if ((i & 63) == 0 && i + 64 <= n) {
                    /* skip a zero 64-bit word at once */
                    uint64_t z;
                    memcpy(&z, buf + (i >> 3), 8);
                    if (!z) i += 63;
                }
                continue;
            }
            uint64_t j = k * per + i;
            uint64_t from = j << gs, to = (j + 1) << gs;
            if (to > len) to = len;
            uint64_t a = from >> gd, b = (to - 1) >> gd;
            if (b >= nd) b = nd - 1;
            set_bits(dst, a, b);
        }
    }
    return 0;
}

/*
 * --merge: bitmap arg[2] of input arg[3] (0 = this image, 1 = the -b
 * source) ORed into bitmap arg[1] of input 0 (UINT64_MAX: an empty one),
 * granularity 2^arg[5]; each data cluster k of the result holding a set bit
 * is written at arg[4] + k * cluster_size of the output (a staging area past
 * everything the planner allocates) and reported as a BITMAP_ENTRY
 * (bitmap = UINT32_MAX, value = where it went).
 * arg[3] = 2 (commit into a base with enabled bitmaps): the source is not a
 * bitmap but the written ranges as raw bits of granularity 2^arg[5], bit i
 * of byte i / 8 (LSB first), nd bits at file offset arg[6] of input 0 (the
 * host wrote them past everything; they are read as any image byte);
 * arg[7] bit 0: the destination may carry the in-use flag (the host marked
 * it when it reopened the image, as qemu does).
 */
int qcow2_bitmap_merge(const struct reader *r, const struct reader *src_r)
{
    const struct params *p = rt_params();
    static struct qcow2 q, qs;
    if (qcow2_open(&q, r, 0)) return -1;
    struct qcow2 *s = &q;
    if (p->arg[3] == 1) {
        if (!src_r || qcow2_open(&qs, src_r, 0)) return src_r ? -1 : rt_error(0, GERR_BAD_PARAMS, 3, 0, 0);
        s = &qs;
    }
    uint64_t len = q.size & ~511ull;
    if ((s->size & ~511ull) != len) return rt_error(0, GERR_BAD_PARAMS, 4, 0, 0);
    uint32_t gd = (uint32_t)p->arg[5];
    if (gd < 9 || gd > 31) return rt_error(0, GERR_BAD_PARAMS, 5, gd, 0);
    uint64_t nd = len ? ((len - 1) >> gd) + 1 : 0;
    uint64_t bytes = ((nd + 63) / 64) * 8;
    uint64_t clusters = (bytes + q.cluster_size - 1) >> q.cluster_bits;
    if (clusters * q.cluster_size > (64ull << 20)) return rt_error(0, GERR_OUT_OF_MEMORY, bytes, 0, 0);
    uint8_t *dst = rt_calloc(clusters ? clusters : 1, q.cluster_size);
    if (!dst) return rt_error(0, GERR_OUT_OF_MEMORY, bytes, 0, 0);
    bool in_use_ok = (p->arg[7] & 1) != 0;
    memset(tail_word, 0, sizeof tail_word);
    if (p->arg[1] != UINT64_MAX) {
        uint64_t toff, tsize;
        uint32_t g, flags;
        if (find_entry(&q, p->arg[1], &toff, &tsize, &g, &flags)) return -1;
        if (g != gd) return rt_error(0, GERR_BAD_PARAMS, 5, g, gd);
        if (or_bitmap(&q, p->arg[1], dst, gd, nd, len, in_use_ok)) return -1;
    }
    if (p->arg[3] == 2) {
        uint64_t rb = (nd + 7) / 8, off = p->arg[6];
        uint8_t *buf = rt_alloc(q.cluster_size);
        if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, q.cluster_size, 0, 0);
        if (off > UINT64_MAX - rb) return rt_error(0, GERR_BAD_PARAMS, 6, off, rb);
        for (uint64_t done = 0; done < rb;) {
            uint64_t n = rb - done < q.cluster_size ? rb - done : q.cluster_size;
            if (reader_read(q.r, off + done, buf, n)) return rt_error(0, GERR_IO, off + done, 0, 0);
            for (uint64_t i = 0; i < n; i++) dst[done + i] |= buf[i];
            done += n;
        }
    } else if (or_bitmap(s, p->arg[2], dst, gd, nd, len, false)) {
        return -1;
    } else if (last_gs != gd) {
        /* qemu 7.2 merges another granularity range by range inside the
         * bitmap (hbitmap_sparse_merge): no bits past the end, the
         * destination's dropped too */
        memset(tail_word, 0, sizeof tail_word);
    }
    /* Bits past the end stay clear, as qemu's serialization leaves them, but
     * in the word holding the end: those of both bitmaps (whole-word OR). */
    for (uint64_t i = nd; i < clusters * q.cluster_size * 8; i++) dst[i >> 3] &= (uint8_t)~(1u << (i & 7));
    uint64_t base = p->arg[4];
    for (uint64_t k = 0; k < clusters; k++) {
        const uint8_t *c = dst + k * q.cluster_size;
        bool any = false;
        for (uint64_t i = 0; i < q.cluster_size && !any; i++) any = c[i] != 0;
        if (!any) continue; /* a cluster set past the end only is not stored either */
        if ((nd & 63) && k == (nd - 1) >> (q.cluster_bits + 3))
            for (uint64_t i = nd; i < ((nd + 63) & ~63ull); i++)
                if (tail_word[(i & 63) >> 3] & (1u << (i & 7))) dst[i >> 3] |= (uint8_t)(1u << (i & 7));
        uint64_t at = base + k * q.cluster_size;
        if (at + q.cluster_size > p->output_cap || at < base) return rt_error(0, GERR_BAD_PARAMS, 7, at, 0);
        if (hc_write(at, q.cluster_size, c) != (int64_t)q.cluster_size) return rt_error(0, GERR_IO, at, 0, 0);
        struct rec_bitmap_entry e;
        rec_init(&e, REC_BITMAP_ENTRY, sizeof e);
        e.bitmap = UINT32_MAX;
        e.nonzero = 1;
        e.index = k;
        e.value = at;
        if (rt_emit(&e, sizeof e)) return -1;
    }
    return 0;
}
