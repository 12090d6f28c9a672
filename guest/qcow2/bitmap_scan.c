/*
 * qcow2's bitmap scan: the metadata the host's bitmap planner
 * (lib/formats/qcow2/bitmap_plan.ts) needs, after qcow2_open checked the
 * bitmap directory and every table as qemu's qcow2_load_dirty_bitmaps does:
 *
 *   BITMAP_DIR    each directory entry, directory order (name, flags,
 *                 granularity, table offset and size, state bits)
 *   BITMAP_ENTRY  each table entry pointing at a data cluster, with whether
 *                 that cluster has a set bit inside the bitmap (qemu stores
 *                 only such clusters when it writes the bitmap back)
 *   then the resize scan's records for the image's own size: QCOW2_INFO,
 *   RESIZE_L1, RESIZE_REFTABLE, RESIZE_REFRUN and RESIZE_SUMMARY (last).
 *
 * A bitmap in use (flag bit 0) is not read (qemu does not load it). The
 * planner refuses bitmaps with state bits set (BMS_*): entries of all ones,
 * bits set past the bitmap's end. At most BITMAP_MAX_ENTRIES entries in all.
 */
#include "bitmap_scan.h"
#include "resize_scan.h"
#include "bytes.h"
#include "../ops/records.h"

#define BITMAP_MAX_ENTRIES (256u * 1024u)

/* Whether the data cluster at `off` has a set bit among its first `bits`
 * bits (LSB first in each byte, as qemu serializes), and past them. */
static int scan_cluster(struct qcow2 *q, uint8_t *buf, uint64_t off, uint64_t bits, bool *nonzero, bool *tail)
{
    if (reader_read(q->r, off, buf, q->cluster_size)) return rt_error(0, GERR_IO, off, 0, 0);
    uint64_t full = bits / 8, rest = bits % 8;
    *nonzero = false;
    *tail = false;
    for (uint64_t i = 0; i < q->cluster_size; i++) {
        uint8_t b = buf[i];
        if (!b) continue;
        if (i < full) {
            *nonzero = true;
        } else if (i == full && rest) {
            uint8_t in = (uint8_t)((1u << rest) - 1);
            if (b & in) *nonzero = true;
            if (b & ~in) *tail = true;
        } else {
            *tail = true;
        }
    }
    return 0;
}

static int scan_bitmaps(struct qcow2 *q)
{
    if (!q->nb_bitmaps) return 0;
    uint8_t *buf = rt_alloc(q->cluster_size);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, q->cluster_size, 0, 0);
    struct table_window w;
    if (table_window_init(&w, q->r, 0, 0)) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    static struct rec_bitmap_dir d;
    uint64_t start = q->bitmap_dir_offset, end = start + q->bitmap_dir_size; /* checked at open */
    uint64_t len = q->size & ~511ull, total = 0;
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
                if (v == 1) {
                    d.state |= BMS_ALL_ONES;
                    continue;
                }
                if (total >= BITMAP_MAX_ENTRIES) {
                    d.state |= BMS_TOO_BIG;
                    break;
                }
                uint64_t first = i * per_cluster; /* table_size <= 2^27: no overflow */
                uint64_t here = bits > first ? bits - first : 0;
                if (here > per_cluster) here = per_cluster;
                bool nonzero = false, tail = false;
                if (scan_cluster(q, buf, v & 0x00fffffffffffe00ull, here, &nonzero, &tail)) return -1;
                if (tail) d.state |= BMS_TAIL_BITS;
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
        for (uint64_t i = 0; i < n_entries; i++)
            if (rt_emit(&list[i], sizeof list[i])) return -1;
        rt_heap_release(mark);
        if (d.state & BMS_TOO_BIG) return 0;
    }
    return 0;
}

int qcow2_bitmap_scan(const struct reader *r)
{
    static struct qcow2 q;
    if (qcow2_open(&q, r, 0)) return -1;
    if (scan_bitmaps(&q)) return -1;
    return qcow2_resize_scan(r, q.size);
}
