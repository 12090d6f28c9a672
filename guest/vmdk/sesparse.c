/*
 * VMDK seSparse extents (ESXi's "space efficient" sparse files), read as
 * qemu 7.2 reads them: vmdk_open_se_sparse with its strict checks of the
 * 512-byte const header at sector 0 and the 512-byte volatile header, and
 * get_cluster_offset's seSparse branch. The grain directory and grain
 * tables hold 64-bit little-endian entries:
 *
 *   directory entry  0: no table; 0x10000000_xxxxxxxx: table xxxxxxxx, at
 *                    sector grain_tables_offset + xxxxxxxx * 64 (which must
 *                    fit 32 bits, as qemu keeps it); anything else fails
 *   table entry      top nibble 0: unallocated (any other bit set fails);
 *                    1 (unmapped) and 2: zero; 3: allocated, the grain index
 *                    split as bits 48..59 (low 12 bits) and 0..47 (the rest),
 *                    at sector grains_offset + index * 8; 4..15 fail
 *
 * Arithmetic wraps exactly where qemu's uint64_t/int64_t arithmetic wraps
 * (a header offset times 512, the table and grain sectors): those values
 * only ever select what to read, and every read goes through reader_read's
 * bounds. Tables are read through windows of VMDK_SE_WINDOW entries (qemu
 * reads the whole directory, up to 256 MiB, at open; a window read is the
 * same bytes, and reads past the end of the file are zeroes in both).
 * seSparse opens are read-only in qemu 7.2; vmdk.c refuses read-write opens.
 */
#include "vmdk.h"
#include "bytes.h"
#include "../ops/records.h"

#define SE_CONST_MAGIC 0xcafebabeull
#define SE_VOLATILE_MAGIC 0xcafecafeull
#define SE_VERSION 0x0000000200000001ull
#define SE_GRAIN_SECTORS 8u
#define SE_GT_SECTORS 64u
#define SE_GT_ENTRIES (SE_GT_SECTORS * 512u / 8u) /* 4096 */
#define SE_TOP_NIBBLE 0xf000000000000000ull

/* printf("0x%016" PRIx64) into out[18]. */
static void hex64(char *out, uint64_t x)
{
    static const char digits[] = "0123456789abcdef";
    out[0] = '0';
    out[1] = 'x';
    for (uint32_t i = 0; i < 16; i++) out[2 + i] = digits[(x >> (60 - 4 * i)) & 15];
}

static bool all_zero(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

int vmdk_open_sesparse(struct vmdk *v, struct vmdk_extent *e)
{
    static uint8_t h[512], vh[512];
    uint64_t rel = e->r->input - v->r->input;
    if (reader_read(e->r, 0, h, sizeof h)) return vmdk_fail(v, VMDK_E_IO, 0, rel);
    /* check_se_sparse_const_header, in qemu's order */
    uint64_t magic = le64(h), version = le64(h + 8), capacity = le64(h + 16), grain = le64(h + 24);
    uint64_t gt_size = le64(h + 32), flags = le64(h + 40);
    if (magic != SE_CONST_MAGIC) return vmdk_fail(v, VMDK_E_SE_MAGIC, magic, 0);
    if (version != SE_VERSION) return vmdk_fail(v, VMDK_E_SE_VERSION, version, 0);
    if (grain != SE_GRAIN_SECTORS) return vmdk_fail(v, VMDK_E_SE_GRAIN, grain, 0);
    if (gt_size != SE_GT_SECTORS) return vmdk_fail(v, VMDK_E_SE_GT_SIZE, gt_size, 0);
    if (flags) return vmdk_fail(v, VMDK_E_SE_FLAGS, flags, 0);
    if (!all_zero(h + 48, 32)) {
        char t[4 * 19];
        for (uint32_t i = 0; i < 4; i++) {
            hex64(t + 19 * i, le64(h + 48 + 8 * i));
            t[19 * i + 18] = ' ';
        }
        return vmdk_fail_text(v, VMDK_E_SE_RESERVED, t, sizeof t - 1);
    }
    if (!all_zero(h + 208, 512 - 208)) return vmdk_fail(v, VMDK_E_SE_PAD, 0, 0);

    /* the volatile header: qemu's offset * SECTOR_SIZE wraps in uint64_t */
    uint64_t voff = le64(h + 80) * 512;
    if (reader_read(e->r, voff, vh, sizeof vh)) return vmdk_fail(v, VMDK_E_SE_VOL_READ, voff, rel);
    uint64_t vmagic = le64(vh);
    if (vmagic != SE_VOLATILE_MAGIC) return vmdk_fail(v, VMDK_E_SE_VOL_MAGIC, vmagic, 0);
    if (le64(vh + 24)) return vmdk_fail(v, VMDK_E_SE_DIRTY, 0, 0);
    if (!all_zero(vh + 32, 512 - 32)) return vmdk_fail(v, VMDK_E_SE_VOL_PAD, 0, 0);

    /* vmdk_add_extent's arguments as qemu computes them: the directory's
     * offset and size in wrapping uint64_t, the entry count cut to 32 bits */
    uint64_t gd_offset = le64(h + 128) * 512;
    uint32_t l1_size = (uint32_t)(le64(h + 136) * 512 / 8);
    e->kind = VMDK_SESPARSE;
    if (vmdk_add_extent(v, e, false, capacity, gd_offset, 0, l1_size, SE_GT_ENTRIES, SE_GRAIN_SECTORS)) return -1;
    e->se_tables = le64(h + 144);
    e->se_grains = le64(h + 192);
    e->opened = true;
    return 0;
}

/* Reads the window of n entries starting at entry `first` at byte offset
 * `at` of the file into buf (8-byte entries). */
static int load_window(const struct vmdk_extent *e, uint64_t at, uint64_t first, uint64_t n, uint8_t *buf)
{
    uint64_t off;
    if (__builtin_add_overflow(at, first * 8, &off)) return -1;
    return reader_read(e->r, off, buf, n * 8);
}

int vmdk_se_cluster(struct vmdk_extent *e, uint64_t offset, uint32_t l1_index, uint64_t *cluster_offset)
{
    uint8_t *table = (uint8_t *)e->l2, *dir = table + VMDK_SE_WINDOW * 8;
    /* the grain directory entry, through its window */
    uint64_t base = (uint64_t)(l1_index / VMDK_SE_WINDOW) * VMDK_SE_WINDOW;
    if (e->gd_base != base + 1) {
        uint64_t n = e->l1_size - base < VMDK_SE_WINDOW ? e->l1_size - base : VMDK_SE_WINDOW;
        e->gd_base = 0;
        if (load_window(e, e->l1_offset, base, n, dir)) return VMDK_ERROR;
        e->gd_base = base + 1;
    }
    uint64_t gde = le64(dir + (l1_index - base) * 8);
    e->gd_empty = false;
    if (gde == 0) {
        e->gd_empty = true;
        return VMDK_UNALLOC;
    }
    /* "top most 4 bytes must be 0x10000000" */
    if ((gde & 0xffffffff00000000ull) != 0x1000000000000000ull) return VMDK_ERROR;
    uint64_t l2_sector = e->se_tables + (gde & 0xffffffffull) * SE_GT_SECTORS; /* wraps as qemu's */
    if (l2_sector > 0xffffffffull) return VMDK_ERROR;
    if (l2_sector == 0) {
        e->gd_empty = true; /* qemu's l2_offset 0: the table's whole span is unallocated */
        return VMDK_UNALLOC;
    }
    uint32_t l2_index = (uint32_t)(((offset >> 9) / SE_GRAIN_SECTORS) % SE_GT_ENTRIES);
    uint32_t win = l2_index / VMDK_SE_WINDOW;
    uint64_t key = (l2_sector << 4 | win) + 1;
    if (e->l2_cached != key) {
        e->l2_cached = 0;
        if (load_window(e, l2_sector * 512, (uint64_t)win * VMDK_SE_WINDOW, VMDK_SE_WINDOW, table)) return VMDK_ERROR;
        e->l2_cached = key;
    }
    uint64_t gte = le64(table + (l2_index % VMDK_SE_WINDOW) * 8);
    switch (gte & SE_TOP_NIBBLE) {
    case 0:
        return gte ? VMDK_ERROR : VMDK_UNALLOC;
    case 0x1000000000000000ull: /* scsi-unmapped */
    case 0x2000000000000000ull: /* zero */
        return VMDK_ZEROED;
    case 0x3000000000000000ull: {
        uint64_t index = (gte & 0x0fff000000000000ull) >> 48 | (gte & 0x0000ffffffffffffull) << 12;
        uint64_t sector = e->se_grains + index * SE_GRAIN_SECTORS; /* wraps as qemu's */
        if (sector == 0) return VMDK_UNALLOC;
        *cluster_offset = sector << 9;
        return VMDK_OK;
    }
    default:
        return VMDK_ERROR;
    }
}
