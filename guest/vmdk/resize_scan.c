/*
 * vmdk's resize scan: opens the image exactly as info does (vmdk_open with
 * VMDK_OPEN_SCAN: a descriptor file's extents are reported, never opened)
 * and sends the host's planner what it rewrites and what it must check:
 *
 *   RESIZE_BYTES  the header sector at offset 0 as read (VMDK_HEADER) and
 *                 the embedded descriptor's sectors (VMDK_DESCRIPTOR, sent
 *                 only when the header's desc_offset/desc_size lie inside
 *                 the file and desc_size <= 20 sectors)
 *   RESIZE_META   last: the open's facts (extents, kind, hosted, compressed,
 *                 GD at end, parent, zeroed-grain flag), capacity, grain
 *                 size, grain directory offset and entries, entries per
 *                 grain table, 1 + the highest grain holding data (a
 *                 shrink may only cut grains without data), and whether the
 *                 last grain table holds data entries past the capacity (a
 *                 grow would expose them: refused)
 *
 * Only a single hosted VMDK4 sparse extent (monolithicSparse,
 * streamOptimized) gets bytes and a grain walk; for anything else the meta
 * record alone tells the host what it refuses. The walk goes through
 * vmdk.c's lookup (one cached grain table, a window of the directory), top
 * down, a whole grain table skipped when its directory entry is 0. Every
 * value is still the image's: the host bounds each before use.
 */
#include "resize_scan.h"
#include "vmdk.h"
#include "bytes.h"
#include "../ops/records.h"

#define GD_AT_END UINT64_MAX
#define DESC_MAX_SECTORS 20u

static int emit_bytes(uint32_t what, const uint8_t *p, uint32_t len)
{
    static struct rec_resize_bytes b;
    for (uint32_t at = 0; at < len; at += sizeof b.bytes) {
        uint32_t n = len - at < sizeof b.bytes ? len - at : (uint32_t)sizeof b.bytes;
        memset(&b, 0, sizeof b);
        rec_init(&b, REC_RESIZE_BYTES, sizeof b);
        b.what = what;
        b.length = n;
        b.offset = at;
        memcpy(b.bytes, p + at, n);
        if (rt_emit(&b, sizeof b)) return -1;
    }
    return 0;
}

/* 1 + the highest grain of e whose entry is data (0: none), into *end:
 * grain tables from the last, each read once (vmdk_cluster caches it in
 * e->l2) and scanned from its top; a table whose directory entry is 0 is
 * skipped whole. Entries past the capacity's last grain are not looked at. */
static int alloc_end(struct vmdk *v, struct vmdk_extent *e, uint64_t *end)
{
    *end = 0;
    uint64_t gs = e->cluster_sectors; /* >= 1: add_extent checked l1_entry_sectors */
    uint64_t grains = e->sectors / gs + (e->sectors % gs != 0);
    uint64_t per_gt = e->l2_size; /* 1..512 */
    for (uint64_t t = e->l1_size; t-- > 0;) {
        uint64_t first = t * per_gt; /* l1_size <= 32 Mi: no overflow */
        if (first >= grains) continue;
        uint64_t co = 0;
        /* first * gs < sectors <= I64_MAX / 512 */
        int rc = vmdk_cluster(v, e, first * gs * 512, &co);
        if (rc == VMDK_ERROR) return vmdk_fail(v, VMDK_E_IO, t, 0);
        if (e->gd_empty) continue;
        uint64_t n = grains - first < per_gt ? grains - first : per_gt;
        for (uint64_t k = n; k-- > 0;) {
            uint32_t cs = le32((const uint8_t *)(e->l2 + k));
            if (cs == 0 || (e->has_zero_grain && cs == 1)) continue;
            *end = first + k + 1;
            return 0;
        }
    }
    return 0;
}

/* Whether the capacity's last grain table has an entry past the last grain
 * that is data (neither 0 nor, with the zeroed-grain flag, 1): qemu never
 * reads those, a grow would expose them. */
static int tail_dirty(struct vmdk *v, struct vmdk_extent *e, bool *dirty)
{
    *dirty = false;
    uint64_t gs = e->cluster_sectors, per_gt = e->l2_size;
    uint64_t grains = e->sectors / gs + (e->sectors % gs != 0);
    if (grains == 0) return 0;
    uint64_t t = (grains - 1) / per_gt, first = t * per_gt, co = 0;
    if (vmdk_cluster(v, e, first * gs * 512, &co) == VMDK_ERROR) return vmdk_fail(v, VMDK_E_IO, t, 0);
    if (e->gd_empty) return 0;
    for (uint64_t k = grains - first; k < per_gt; k++) {
        uint32_t cs = le32((const uint8_t *)(e->l2 + k));
        if (cs != 0 && !(e->has_zero_grain && cs == 1)) *dirty = true;
    }
    return 0;
}

int vmdk_resize_scan(const struct reader *r)
{
    static struct vmdk v;
    if (vmdk_open(&v, r, VMDK_OPEN_SCAN)) return -1;
    struct rec_resize_meta m;
    rec_init(&m, REC_RESIZE_META, sizeof m);
    m.format = FMT_VMDK;
    m.bat_entry = v.n;
    m.virtual_size = v.total_sectors * 512; /* total_sectors <= I64_MAX / 512 (add_extent) */
    if (v.descriptor) m.flags |= RESIZE_M_VMDK_DESCRIPTOR;
    if (v.has_parent) m.flags |= RESIZE_M_VMDK_PARENT;
    if (v.n == 0) return rt_emit(&m, sizeof m);
    struct vmdk_extent *e = &v.ext[0];
    m.subformat = e->kind;
    if (e->hosted) m.flags |= RESIZE_M_VMDK_HOSTED;
    if (v.n != 1 || !e->hosted || e->kind != VMDK_SPARSE4 || v.descriptor) return rt_emit(&m, sizeof m);
    if (e->compressed) m.flags |= RESIZE_M_VMDK_COMPRESSED;
    if (e->has_zero_grain) m.flags |= RESIZE_M_VMDK_ZERO_GRAIN;
    static uint8_t h[512];
    if (reader_read(r, 0, h, sizeof h)) return vmdk_fail(&v, VMDK_E_IO, 0, 0);
    if (le64(h + 56) == GD_AT_END) m.flags |= RESIZE_M_VMDK_GD_AT_END;
    if (emit_bytes(RESIZE_BLOB_VMDK_HEADER, h, sizeof h)) return -1;
    m.n_bytes = sizeof h;
    uint64_t doff = le64(h + 28), dsec = le64(h + 36), dstart, dend;
    if (doff >= 1 && dsec >= 1 && dsec <= DESC_MAX_SECTORS && doff <= UINT64_MAX / 512 &&
        !__builtin_add_overflow(doff * 512, dsec * 512, &dend) && dend <= r->size) {
        static uint8_t d[DESC_MAX_SECTORS * 512];
        memset(d, 0, sizeof d);
        dstart = doff * 512;
        if (reader_read(r, dstart, d, dsec * 512)) return vmdk_fail(&v, VMDK_E_IO, dstart, 0);
        if (emit_bytes(RESIZE_BLOB_VMDK_DESCRIPTOR, d, sizeof d)) return -1;
        m.n_bytes += sizeof d;
    }
    m.block_size = e->cluster_sectors;
    m.bat_offset = e->l1_offset;
    m.bat_capacity = e->l1_size;
    m.sequence = e->l2_size;
    if (!(m.flags & RESIZE_M_VMDK_GD_AT_END)) {
        bool dirty;
        if (alloc_end(&v, e, &m.alloc_end) || tail_dirty(&v, e, &dirty)) return -1;
        if (dirty) m.flags |= RESIZE_M_VMDK_TAIL_DIRTY;
    }
    return rt_emit(&m, sizeof m);
}
