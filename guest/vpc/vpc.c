/*
 * VHD footer, dynamic header and BAT, in the order qemu 7.2's vpc_open
 * checks them, so the first error is the one qemu-img prints. See vpc.h for
 * the qemu facts reproduced here.
 */
#include "vpc.h"
#include "bytes.h"
#include "../ops/records.h"

static int fail(const struct vpc *v, uint32_t code, uint64_t a1, uint64_t a2)
{
    return rt_error(v->r->input, GERR_FORMAT, code, a1, a2);
}

/* vpc_checksum: one's complement of the byte sum, checksum field as zero. */
static uint32_t footer_checksum(const uint8_t *f)
{
    uint32_t sum = 0;
    for (uint32_t i = 0; i < VPC_FOOTER_SIZE; i++)
        if (i < 64 || i >= 68) sum += f[i];
    return ~sum;
}

/* creator apps whose images qemu sizes by current_size (vpc_open's table) */
static bool creator_uses_current_size(uint32_t app)
{
    return app == 0x77696e20u    /* "win " */
        || app == 0x71656d32u    /* "qem2" */
        || app == 0x64327620u    /* "d2v " */
        || app == 0x43545853u    /* "CTXS" */
        || app == 0x74617000u;   /* "tap\0" (qemu compares 4 bytes) */
}

/* Loads the BAT window holding entry idx (< max_table_entries). */
static int load_window(struct vpc *v, uint64_t idx)
{
    uint64_t first = idx - idx % v->win_cap;
    uint64_t n = v->max_table_entries - first;
    if (n > v->win_cap) n = v->win_cap;
    /* bat_offset + 4 * max_table_entries was checked at open */
    uint64_t off = v->bat_offset + first * 4;
    uint8_t *raw = (uint8_t *)v->win;
    if (reader_read(v->r, off, raw, n * 4)) {
        v->win_n = 0;
        return rt_error(v->r->input, GERR_IO, off, n * 4, 0);
    }
    for (uint64_t i = 0; i < n; i++) v->win[i] = be32(raw + 4 * i);
    v->win_first = first;
    v->win_n = (uint32_t)n;
    return 0;
}

/* The BAT entry for block idx: VPC_BAT_UNALLOCATED past the table (qemu's
 * get_image_offset), 0..0xfffffffe a sector number; -1 after an ERROR. */
static int64_t bat_entry(struct vpc *v, uint64_t idx)
{
    if (idx >= v->max_table_entries) return VPC_BAT_UNALLOCATED;
    if (idx < v->win_first || idx - v->win_first >= v->win_n)
        if (load_window(v, idx)) return -1;
    return v->win[idx - v->win_first];
}

static int open_dynamic(struct vpc *v, uint64_t data_offset)
{
    uint8_t h[VPC_DYNHDR_SIZE];
    /* bdrv_pread: offsets past INT64_MAX or ending past BDRV_MAX_LENGTH fail
     * (reader_read refuses the same); past EOF reads zeroes. */
    if (reader_read(v->r, data_offset, h, sizeof h)) return fail(v, VPCE_READ_DYNHDR, data_offset, 0);
    if (memcmp(h, "cxsparse", 8)) return fail(v, VPCE_DYNHDR_MAGIC, 0, 0);
    uint64_t table_offset = be64(h + 16);
    uint32_t mte = be32(h + 28);
    uint32_t bs = be32(h + 32);
    if (bs < VPC_SECTOR || (bs & (bs - 1))) return fail(v, VPCE_BLOCK_SIZE, bs, 0);
    v->block_size = bs;
    v->bitmap_size = ((bs / (8 * 512)) + 511) & ~511u;
    uint64_t total_bytes = v->total_sectors * VPC_SECTOR; /* <= 0xff000000 * 512 */
    if (total_bytes / bs > 0xffffffffull) return fail(v, VPCE_TOO_MANY_BLOCKS, 0, 0);
    /* qemu keeps max_table_entries in an int: (uint64_t)(int)mte * bs, wrapping */
    uint64_t computed = (uint64_t)(int64_t)(int32_t)mte * bs;
    if (computed < total_bytes) return fail(v, VPCE_TABLE_TOO_SMALL, mte, 0);
    if ((int32_t)mte < 0 || mte > 0x7fffffffu / 4) return fail(v, VPCE_TABLE_TOO_LARGE, mte, 0);
    v->max_table_entries = mte;
    uint64_t table_bytes = (uint64_t)mte * 4; /* <= 2^31 - 4 */
    uint64_t table_end;
    if (table_offset > (uint64_t)INT64_MAX || table_bytes > VPC_REQUEST_MAX_BYTES ||
        __builtin_add_overflow(table_offset, table_bytes, &table_end) || table_end > READER_MAX_END)
        return fail(v, VPCE_READ_TABLE, table_offset, table_bytes);
    v->bat_offset = table_offset;
    /* free_data_block_offset only grows from here: a BAT reaching past the
     * file fails without reading it (qemu reads it first, to the same end). */
    uint64_t fdbo = (table_end + 511) & ~511ull;
    if (fdbo > v->file_len) return fail(v, VPCE_TRUNCATED, fdbo, v->file_len);
    v->win_cap = mte < VPC_BAT_WINDOW ? (mte ? mte : 1) : VPC_BAT_WINDOW;
    v->win = rt_alloc((uint64_t)v->win_cap * 4);
    if (!v->win) return rt_error(v->r->input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    v->win_n = 0;
    /* The BAT lies inside the file: the scan is bounded by the file size. */
    for (uint64_t i = 0; i < mte; i++) {
        int64_t e = bat_entry(v, i);
        if (e < 0) return -1;
        if ((uint32_t)e == VPC_BAT_UNALLOCATED) continue;
        uint64_t next = (uint64_t)e * 512 + v->bitmap_size + bs; /* < 2^42 */
        if (next > fdbo) fdbo = next;
    }
    v->free_data_block_offset = fdbo;
    if (fdbo > v->file_len) return fail(v, VPCE_TRUNCATED, fdbo, v->file_len);
    v->dynamic = true;
    return 0;
}

int vpc_open(struct vpc *v, const struct reader *r)
{
    memset(v, 0, sizeof *v);
    v->r = r;
    /* bdrv_getlength of a file: its size rounded up to whole sectors */
    if (r->size > READER_MAX_END) return fail(v, VPCE_READ_FOOTER, 0, 0);
    v->file_len = (r->size + 511) & ~511ull;
    uint8_t f[VPC_FOOTER_SIZE];
    if (reader_read(r, 0, f, sizeof f)) return fail(v, VPCE_READ_FOOTER, 0, 0);
    if (memcmp(f, "conectix", 8)) {
        if (v->file_len < VPC_FOOTER_SIZE) return fail(v, VPCE_FILE_TOO_SMALL, 0, 0);
        /* "If a fixed disk, the footer is found only at the end of the file" */
        if (reader_read(r, v->file_len - VPC_FOOTER_SIZE, f, sizeof f)) return fail(v, VPCE_READ_FOOTER, 1, 0);
        if (memcmp(f, "conectix", 8) || be32(f + 60) != VPC_TYPE_FIXED) return fail(v, VPCE_INVALID, 0, 0);
        v->footer_at_end = true;
    }
    uint32_t stored = be32(f + 64), computed = footer_checksum(f);
    if (stored != computed) return fail(v, VPCE_CHECKSUM, stored, computed);
    v->type = be32(f + 60);
    v->creator_app = be32(f + 28);
    v->current_size = be64(f + 48);
    v->cyls = be16(f + 56);
    v->heads = f[58];
    v->secs = f[59];
    uint64_t chs = (uint64_t)v->cyls * v->heads * v->secs;
    v->total_sectors = chs;
    if (creator_uses_current_size(v->creator_app) || chs == VPC_MAX_GEOMETRY) {
        v->total_sectors = v->current_size / VPC_SECTOR;
        v->size_from_footer = true;
    }
    if (v->total_sectors > VPC_MAX_SECTORS) return fail(v, VPCE_TOO_LARGE, v->total_sectors, 0);
    if (!v->footer_at_end) return open_dynamic(v, be64(f + 16));
    return 0;
}

int vpc_block_status(struct vpc *v, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    if (v->type == VPC_TYPE_FIXED) {
        /* the whole request, at the same offset in the file */
        *len = bytes;
        *host = pos;
        return VPC_ST_DATA | VPC_ST_OFFSET_VALID | VPC_ST_RECURSE;
    }
    /* Unreachable through vpc_open (only fixed footers come from the end),
     * kept so no path divides by a zero block size. */
    if (!v->dynamic) return rt_error(v->r->input, GERR_INTERNAL, 0, 0, 0);
    uint64_t bs = v->block_size;
    uint64_t n = 0;
    for (;;) {
        uint64_t idx = pos / bs, in_block = pos % bs;
        int64_t e = bat_entry(v, idx);
        if (e < 0) return -1;
        uint64_t step = bs - in_block;
        if (step > bytes) step = bytes;
        if ((uint32_t)e != VPC_BAT_UNALLOCATED) {
            if (n) break; /* an allocated block ends the unallocated run */
            /* one block at most: a bitmap sits between blocks */
            *len = step;
            *host = (uint64_t)e * 512 + v->bitmap_size + in_block;
            return VPC_ST_DATA | VPC_ST_OFFSET_VALID;
        }
        n += step;
        pos += step;
        bytes -= step;
        if (!bytes) break;
    }
    *len = n;
    return VPC_ST_ZERO;
}

int vpc_emit_info(const struct vpc *v)
{
    struct rec_image_info i;
    rec_init(&i, REC_IMAGE_INFO, sizeof i);
    i.input = v->r->input;
    i.format = FMT_VPC;
    i.virtual_size = vpc_length(v);
    /* vpc_get_info: the block size unless the footer says fixed */
    i.cluster_size = v->type != VPC_TYPE_FIXED ? v->block_size : 0;
    i.flags = 0; /* qemu 7.2 refuses a bad footer checksum: BAD_CHECKSUM never set */
    i.subformat = v->type;
    i.extra[0] = (uint64_t)v->cyls << 16 | (uint64_t)v->heads << 8 | v->secs;
    i.extra[1] = v->current_size;
    i.extra[2] = (uint64_t)v->creator_app << 32 | (v->footer_at_end ? VPC_X_FOOTER_AT_END : 0) |
                 (v->size_from_footer ? VPC_X_SIZE_FROM_FOOTER : 0);
    i.extra[3] = v->dynamic ? v->max_table_entries : 0;
    return rt_emit(&i, sizeof i);
}

int64_t vpc_bat_get(struct vpc *v, uint64_t idx)
{
    if (!v->dynamic) return rt_error(v->r->input, GERR_INTERNAL, 0, 0, 0);
    return bat_entry(v, idx);
}
