/*
 * VMDK open (qemu 7.2 vmdk_open and what it calls), the grain lookup
 * (get_cluster_offset for reads) and info's records. See vmdk.h.
 */
#include "vmdk.h"
#include "bytes.h"
#include "../ops/records.h"

#define MAGIC_COWD 0x434f5744u
#define MAGIC_KDMV 0x4b444d56u
#define GD_AT_END UINT64_MAX
#define FLAG_RGD (1u << 1)
#define FLAG_ZERO_GRAIN (1u << 2)
#define FLAG_MARKER (1u << 17)
#define I64_MAX ((1ull << 63) - 1)
#define GD_WINDOW 512u /* grain directory entries cached */

int vmdk_fail(const struct vmdk *v, uint32_t code, uint64_t a1, uint64_t a2)
{
    return rt_error(v->r->input, GERR_FORMAT, code, a1, a2);
}

int vmdk_fail_text(const struct vmdk *v, uint32_t code, const char *s, uint64_t len)
{
    if (len > LIMIT_NAME_MAX) len = LIMIT_NAME_MAX;
    if (emit_name(v->r->input, NAME_ERROR_TEXT, (const uint8_t *)s, (uint16_t)len)) return -1;
    return vmdk_fail(v, code, len, 0);
}

/* File size in sectors, rounded up (bdrv_nb_sectors). */
static uint64_t nb_sectors(const struct reader *r)
{
    return r->size / 512 + ((r->size & 511) != 0);
}

int vmdk_add_extent(struct vmdk *v, struct vmdk_extent *e, bool flat, uint64_t sectors, uint64_t l1_offset,
                    uint64_t l1_backup, uint32_t l1_size, uint32_t l2_size, uint64_t cluster_sectors)
{
    if (cluster_sectors > 0x200000) return vmdk_fail(v, VMDK_E_GRANULARITY, cluster_sectors, 0);
    if (l1_size > 32u * 1024 * 1024) return vmdk_fail(v, VMDK_E_L1_SIZE, l1_size, 0);
    uint64_t prev = v->n ? v->ext[v->n - 1].end_sector : 0, end;
    if (sectors > I64_MAX / 512 || __builtin_add_overflow(prev, sectors, &end) || end > I64_MAX / 512)
        return vmdk_fail(v, VMDK_E_TOO_LARGE, sectors, 0);
    e->kind = flat ? VMDK_FLAT : e->kind;
    e->sectors = sectors;
    e->end_sector = end;
    e->l1_offset = l1_offset;
    e->l1_size = l1_size;
    e->l2_size = l2_size;
    e->l1_entry_sectors = (uint32_t)(l2_size * cluster_sectors);
    e->cluster_sectors = flat ? sectors : cluster_sectors;
    /* VMDK3 headers reach here unchecked: qemu divides by zero on the first
     * lookup (granularity 0, or 4096 * granularity wrapping to 0) */
    if (!flat && e->l1_entry_sectors == 0) return vmdk_fail(v, VMDK_E_L1_ENTRY, 1, 0);
    if (!flat) {
        /* bdrv_pread of the L1 (and backup) table: qemu's request checks */
        bool se = e->kind == VMDK_SESPARSE;
        uint64_t bytes = (uint64_t)l1_size * (se ? 8 : 4), t;
        uint64_t rel = e->r ? e->r->input - v->r->input : 0;
        if (l1_offset > I64_MAX || __builtin_add_overflow(l1_offset, bytes, &t) || t > READER_MAX_END)
            return vmdk_fail(v, VMDK_E_L1_READ, rel, 0);
        if (l1_backup && (l1_backup > I64_MAX || __builtin_add_overflow(l1_backup, bytes, &t) || t > READER_MAX_END))
            return vmdk_fail(v, VMDK_E_L1_READ, rel, 1);
        /* the cached table (seSparse: a window of it), then the directory window */
        uint64_t tbl = se ? 2ull * VMDK_SE_WINDOW * 8 : (uint64_t)l2_size * 4 + GD_WINDOW * 4;
        e->l2 = rt_alloc(tbl);
        if (!e->l2) return rt_error(v->r->input, GERR_OUT_OF_MEMORY, tbl, 0, 0);
    }
    v->n++;
    v->total_sectors = end;
    return 0;
}

static void set_create_type(struct vmdk *v, const char *s)
{
    uint64_t k = strlen(s);
    memcpy(v->create_type, s, k + 1);
    v->create_type_len = (uint16_t)k;
}

static int open_desc_buf(struct vmdk *v, uint64_t off, uint32_t flags);

/* vmdk_open_vmdk4 on extent e (its reader set). */
static int open_vmdk4(struct vmdk *v, struct vmdk_extent *e, uint32_t flags)
{
    const struct reader *r = e->r;
    uint8_t h[80];
    if (reader_read(r, 4, h, 75)) return vmdk_fail(v, VMDK_E_IO, 4, 0);
    uint64_t capacity = le64(h + 8), desc_offset = le64(h + 24);
    if (capacity == 0 && desc_offset) {
        /* a descriptor inside a sparse header: qemu parses it as a descriptor file */
        if (!e->hosted) return vmdk_fail(v, VMDK_E_NESTED, v->n, 0);
        if (desc_offset > (I64_MAX >> 9)) return vmdk_fail(v, VMDK_E_IO, desc_offset, 0);
        return open_desc_buf(v, desc_offset << 9, flags);
    }
    if (!v->create_type_len) set_create_type(v, "monolithicSparse");
    if (le64(h + 52) == GD_AT_END) {
        /* the footer (one sector before the end-of-stream marker) wins */
        static uint8_t f[1536];
        uint64_t end = nb_sectors(r) * 512;
        if (end < 1536) return vmdk_fail(v, VMDK_E_FOOTER_READ, end, 0);
        if (reader_read(r, end - 1536, f, sizeof f)) return vmdk_fail(v, VMDK_E_FOOTER_READ, end, 1);
        if (be32(f + 512) != MAGIC_KDMV || le32(f + 8) != 0 || le32(f + 12) != 3 || le64(f + 1024) != 0 ||
            le32(f + 1032) != 0 || le32(f + 1036) != 0)
            return vmdk_fail(v, VMDK_E_INVALID_FOOTER, 0, 0);
        memcpy(h, f + 516, 75);
    }
    uint32_t version = le32(h), hflags = le32(h + 4), gtes = le32(h + 40);
    uint64_t granularity = le64(h + 16), rgd = le64(h + 44), gd = le64(h + 52), grain_offset = le64(h + 60);
    capacity = le64(h + 8);
    bool compressed = le16(h + 73) == 1;
    if (version > 3) return vmdk_fail(v, VMDK_E_VERSION, version, 0);
    if (gtes > 512) return vmdk_fail(v, VMDK_E_L2_SIZE, gtes, 0);
    uint32_t l1_entry_sectors = (uint32_t)(gtes * granularity);
    if (l1_entry_sectors == 0) return vmdk_fail(v, VMDK_E_L1_ENTRY, 0, 0);
    uint32_t l1_size = (uint32_t)((capacity + l1_entry_sectors - 1) / l1_entry_sectors);
    uint64_t backup = (hflags & FLAG_RGD) ? rgd << 9 : 0;
    if (nb_sectors(r) < grain_offset) return vmdk_fail(v, VMDK_E_TRUNCATED, grain_offset * 512, 0);
    e->kind = VMDK_SPARSE4;
    if (vmdk_add_extent(v, e, false, capacity, gd << 9, backup, l1_size, gtes, granularity)) return -1;
    e->compressed = compressed;
    if (compressed) set_create_type(v, "streamOptimized");
    e->has_marker = (hflags & FLAG_MARKER) != 0;
    e->has_zero_grain = (hflags & FLAG_ZERO_GRAIN) != 0;
    e->opened = true;
    return 0;
}

/* vmdk_open_vmfs_sparse (VMDK3 "COWD"). */
static int open_vmdk3(struct vmdk *v, struct vmdk_extent *e)
{
    uint8_t h[40];
    if (reader_read(e->r, 4, h, sizeof h)) return vmdk_fail(v, VMDK_E_IO, 4, 0);
    e->kind = VMDK_SPARSE3;
    if (vmdk_add_extent(v, e, false, le32(h + 8), (uint64_t)le32(h + 16) << 9, 0, le32(h + 20), 4096, le32(h + 12)))
        return -1;
    e->opened = true;
    return 0;
}

/* vmdk_open_sparse: the magic picks the parser. */
static int open_sparse(struct vmdk *v, struct vmdk_extent *e, uint32_t flags)
{
    uint8_t m[4];
    if (e->r->size < 4) return vmdk_fail(v, VMDK_E_TOO_SMALL, 0, 0);
    if (reader_read(e->r, 0, m, 4)) return vmdk_fail(v, VMDK_E_IO, 0, 0);
    if (be32(m) == MAGIC_COWD) return open_vmdk3(v, e);
    if (be32(m) == MAGIC_KDMV) return open_vmdk4(v, e, flags);
    return vmdk_fail(v, VMDK_E_NOT_VMDK, 0, 0);
}

struct add_ctx {
    uint32_t flags;
    uint32_t seen; /* extents the descriptor names */
};

static bool type_is(const char *t, const char *s)
{
    uint64_t k = strlen(s);
    return strlen(t) == k && memcmp(t, s, k) == 0;
}

/* One extent line qemu accepts: record it, and open it unless scanning. */
static int add_desc_extent(struct vmdk *v, const struct vmdk_desc_extent *d, void *vctx)
{
    struct add_ctx *c = vctx;
    c->seen++;
    if (c->seen > VMDK_MAX_FILES) return 0; /* counted; refused after the walk */
    struct vmdk_extent *e = &v->ext[v->n];
    memset(e, 0, sizeof *e);
    memcpy(e->type, d->type, sizeof e->type);
    memcpy(e->name, d->name, d->name_len);
    e->name_len = d->name_len;
    e->desc_flat_sectors = (uint64_t)d->flat_offset;
    bool flat = type_is(d->type, "FLAT") || type_is(d->type, "VMFS");
    v->files++;
    if (c->flags & VMDK_OPEN_SCAN) {
        /* info's first pass: the descriptor's own numbers, nothing opened */
        e->kind = flat ? VMDK_FLAT : VMDK_SPARSE4;
        uint64_t prev = v->n ? v->ext[v->n - 1].end_sector : 0, end;
        if (__builtin_add_overflow(prev, (uint64_t)d->sectors, &end) || end > I64_MAX / 512)
            return vmdk_fail(v, VMDK_E_TOO_LARGE, 0, 0);
        e->sectors = (uint64_t)d->sectors;
        e->end_sector = end;
        v->total_sectors = end;
        v->n++;
        return 0;
    }
    uint32_t input = v->r->input + v->files;
    if (input >= rt_params()->n_inputs) return vmdk_fail(v, VMDK_E_NO_FILE, v->files, 0);
    reader_from_input(&e->own, input);
    e->r = &e->own;
    if (flat) {
        if (vmdk_add_extent(v, e, true, (uint64_t)d->sectors, 0, 0, 0, 0, 0)) return -1;
        e->flat_offset = (uint64_t)d->flat_offset << 9;
        e->opened = true;
        return 0;
    }
    if (type_is(d->type, "SESPARSE")) {
        /* bdrv_apply_auto_read_only: qemu-img's read-write opens carry no auto-read-only */
        if (c->flags & VMDK_OPEN_RW) return vmdk_fail(v, VMDK_E_SE_READ_ONLY, v->n, 0);
        return vmdk_open_sesparse(v, e);
    }
    /* SPARSE, VMFSSPARSE: vmdk_read_desc then vmdk_open_sparse */
    return open_sparse(v, e, c->flags);
}

/* The descriptor at off of the image: vmdk_read_desc + vmdk_open_desc_file. */
static int open_desc_buf(struct vmdk *v, uint64_t off, uint32_t flags)
{
    const struct reader *r = v->r;
    uint64_t len = r->size < VMDK_DESC_MAX ? r->size : VMDK_DESC_MAX;
    char *buf = rt_alloc(len + 1);
    if (!buf) return rt_error(r->input, GERR_OUT_OF_MEMORY, len, 0, 0);
    if (reader_read(r, off, buf, len)) return vmdk_fail(v, VMDK_E_IO, off, len);
    buf[len] = 0;
    uint64_t n = 0;
    while (n < len && buf[n]) n++;
    v->descriptor = true;
    struct add_ctx c = {.flags = flags, .seen = 0};
    if (vmdk_parse_desc(v, buf, n, add_desc_extent, &c)) return -1;
    if (c.seen > VMDK_MAX_FILES) return vmdk_fail(v, VMDK_E_TOO_MANY, c.seen, VMDK_MAX_FILES);
    if (flags & VMDK_OPEN_SCAN) v->need_files = v->files > 0;
    return 0;
}

int vmdk_open(struct vmdk *v, const struct reader *r, uint32_t flags)
{
    memset(v, 0, sizeof *v);
    v->r = r;
    v->ext = rt_calloc(VMDK_MAX_FILES + 1, sizeof *v->ext);
    if (!v->ext) return rt_error(r->input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (r->size < 4) return vmdk_fail(v, VMDK_E_TOO_SMALL, 0, 0);
    uint8_t m[4];
    if (reader_read(r, 0, m, 4)) return vmdk_fail(v, VMDK_E_IO, 0, 0);
    uint64_t desc_offset;
    if (be32(m) == MAGIC_COWD || be32(m) == MAGIC_KDMV) {
        struct vmdk_extent *e = &v->ext[0];
        e->r = r;
        e->hosted = true;
        if (open_sparse(v, e, flags)) return -1;
        desc_offset = 0x200;
    } else {
        if (open_desc_buf(v, 0, flags)) return -1;
        desc_offset = 0;
    }
    /* vmdk_parent_open and vmdk_read_cid over DESC_SIZE bytes */
    static char d[VMDK_DESC_SIZE];
    if (reader_read(r, desc_offset, d, sizeof d)) return vmdk_fail(v, VMDK_E_IO, desc_offset, 1);
    d[sizeof d - 1] = 0;
    uint64_t n = 0;
    while (n < sizeof d && d[n]) n++;
    if (vmdk_read_cids(v, d, n)) return -1;
    return 0;
}

struct vmdk_extent *vmdk_find_extent(struct vmdk *v, uint64_t pos)
{
    uint64_t sector = pos >> 9;
    for (uint32_t i = 0; i < v->n; i++)
        if (sector < v->ext[i].end_sector) return &v->ext[i];
    return NULL;
}

/* Grain directory entry i (i < l1_size), through a window of GD_WINDOW entries. */
static int gd_entry(struct vmdk_extent *e, uint32_t i, uint32_t *out)
{
    uint32_t *win = e->l2 + e->l2_size; /* allocated with the table */
    uint64_t base = (uint64_t)(i / GD_WINDOW) * GD_WINDOW;
    if (e->gd_base != base + 1) {
        uint64_t cnt = e->l1_size - base < GD_WINDOW ? e->l1_size - base : GD_WINDOW;
        uint8_t *b = (uint8_t *)win;
        if (reader_read(e->r, e->l1_offset + base * 4, b, cnt * 4)) return -1;
        e->gd_base = base + 1;
    }
    *out = le32((const uint8_t *)(win + (i - base)));
    return 0;
}

int vmdk_cluster(struct vmdk *v, struct vmdk_extent *e, uint64_t offset, uint64_t *cluster_offset)
{
    (void)v;
    if (e->kind == VMDK_FLAT) {
        *cluster_offset = e->flat_offset;
        return VMDK_OK;
    }
    offset -= (e->end_sector - e->sectors) * 512;
    uint32_t l1_index = (uint32_t)((offset >> 9) / e->l1_entry_sectors);
    if (l1_index >= e->l1_size) return VMDK_ERROR;
    if (e->kind == VMDK_SESPARSE) return vmdk_se_cluster(e, offset, l1_index, cluster_offset);
    uint32_t l2_offset;
    e->gd_empty = false;
    if (gd_entry(e, l1_index, &l2_offset)) return VMDK_ERROR;
    e->gd_empty = !l2_offset;
    if (!l2_offset) return VMDK_UNALLOC;
    if (e->l2_cached != (uint64_t)l2_offset + 1) {
        if (reader_read(e->r, (uint64_t)l2_offset * 512, e->l2, (uint64_t)e->l2_size * 4)) return VMDK_ERROR;
        e->l2_cached = (uint64_t)l2_offset + 1;
    }
    uint32_t l2_index = (uint32_t)(((offset >> 9) / e->cluster_sectors) % e->l2_size);
    uint32_t cs = le32((const uint8_t *)(e->l2 + l2_index));
    if (e->has_zero_grain && cs == 1) return VMDK_ZEROED;
    if (!cs) return VMDK_UNALLOC;
    *cluster_offset = (uint64_t)cs << 9;
    return VMDK_OK;
}

/* bdi.cluster_size (vmdk_co_get_info): 0 when extents differ or the first is flat. */
static uint64_t info_cluster_size(const struct vmdk *v)
{
    if (!v->n) return 0;
    const struct vmdk_extent *a = &v->ext[0];
    for (uint32_t i = 1; i < v->n; i++) {
        const struct vmdk_extent *b = &v->ext[i];
        bool af = a->kind == VMDK_FLAT, bf = b->kind == VMDK_FLAT;
        if (af != bf || a->compressed != b->compressed || (!af && a->cluster_sectors != b->cluster_sectors)) return 0;
    }
    return a->kind == VMDK_FLAT ? 0 : a->cluster_sectors * 512;
}

int vmdk_emit_info(const struct vmdk *v)
{
    uint32_t input = v->r->input;
    if (emit_name(input, NAME_VMDK_CREATE_TYPE, (const uint8_t *)v->create_type, v->create_type_len)) return -1;
    if (v->has_parent && emit_name(input, NAME_BACKING_FILE, (const uint8_t *)v->parent, v->parent_len)) return -1;
    for (uint32_t i = 0; i < v->n; i++) {
        const struct vmdk_extent *e = &v->ext[i];
        static struct rec_vmdk_extent x;
        rec_init(&x, REC_VMDK_EXTENT, sizeof x);
        x.input = input;
        x.index = i;
        x.sectors = e->sectors;
        x.cluster_size = e->kind == VMDK_FLAT ? 0 : e->cluster_sectors * 512;
        x.flat_offset = e->desc_flat_sectors;
        x.flags = (e->kind == VMDK_FLAT ? VMDKX_FLAT : 0) | (e->compressed ? VMDKX_COMPRESSED : 0) |
                  (e->hosted ? VMDKX_HOSTED : 0) | (e->opened ? VMDKX_OPENED : 0);
        x.file_input = e->hosted ? input : e->r ? e->r->input : 0;
        uint16_t tl = (uint16_t)strlen(e->hosted ? "" : e->type);
        x.type_len = tl;
        memcpy(x.type, e->type, tl);
        x.name_len = e->name_len;
        memcpy(x.name, e->name, e->name_len);
        if (rt_emit(&x, sizeof x)) return -1;
    }
    struct rec_image_info i;
    rec_init(&i, REC_IMAGE_INFO, sizeof i);
    i.input = input;
    i.format = FMT_VMDK;
    i.virtual_size = v->total_sectors * 512;
    i.cluster_size = info_cluster_size(v);
    i.flags = v->has_parent ? IMGF_HAS_PARENT : 0;
    i.subformat = SUBFMT_DYNAMIC;
    i.extra[0] = v->cid;
    i.extra[1] = v->parent_cid;
    i.extra[2] = v->n;
    i.extra[3] = v->need_files ? v->files : 0;
    return rt_emit(&i, sizeof i);
}
