/*
 * VHDX open, BAT access, check and info: qemu 7.2 block/vhdx.c vhdx_open,
 * vhdx_parse_header, vhdx_open_region_tables, vhdx_parse_metadata,
 * vhdx_calc_bat_entries, vhdx_check_bat_entries, vhdx_co_check. The log
 * search is in log.c. Every number from the image is bounded before use;
 * qemu's integer widths (uint32_t bat_entries, the uint64_t region ends)
 * are reproduced where they change the outcome.
 */
#include "vhdx.h"
#include "vhdx_int.h"
#include "bytes.h"
#include "../ops/records.h"

#define MiB (1024ull * 1024)
#define HEADER_SIZE 4096u
#define HEADER1_OFFSET 0x10000u
#define HEADER2_OFFSET 0x20000u
#define REGION_TABLE_OFFSET 0x30000u
#define HEADER_BLOCK_SIZE 0x10000u
#define HEADER_STRUCT_SIZE 80u /* sizeof(VHDXHeader): what qemu compares */
#define METADATA_TABLE_MAX_SIZE (32u * 2048u)
#define BLOCK_SIZE_MIN MiB
#define BLOCK_SIZE_MAX (256 * MiB)
#define MAX_SECTORS_PER_BLOCK (1ull << 23)
/* BDRV_REQUEST_MAX_BYTES: qemu refuses one read longer than this with -EIO */
#define REQUEST_MAX_BYTES 0x7ffffe00ull

#define META_FILE_PARAMETER 0x01
#define META_VIRTUAL_DISK_SIZE 0x02
#define META_PAGE_83 0x04
#define META_LOGICAL_SECTOR_SIZE 0x08
#define META_PHYS_SECTOR_SIZE 0x10
#define META_PARENT_LOCATOR 0x20
#define META_ALL 0x1f
#define META_FLAGS_IS_REQUIRED 0x04
#define REGION_ENTRY_REQUIRED 0x01
#define PARAMS_HAS_PARENT 0x02

/* GUIDs as stored (MS GUID: data1..3 little-endian, data4 bytes). */
static const uint8_t bat_guid[16] = {0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
                                     0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08};
static const uint8_t metadata_guid[16] = {0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
                                          0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e};
static const struct {
    uint8_t guid[16];
    uint32_t bit;
} md_items[] = {
    {{0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b},
     META_FILE_PARAMETER},
    {{0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8},
     META_VIRTUAL_DISK_SIZE},
    {{0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46},
     META_PAGE_83},
    {{0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f},
     META_LOGICAL_SECTOR_SIZE},
    {{0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56},
     META_PHYS_SECTOR_SIZE},
    {{0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c},
     META_PARENT_LOCATOR},
};

int vhdx_fail(const struct vhdx *v, uint32_t err, uint64_t a1, uint64_t a2)
{
    return rt_error(v->input, GERR_FORMAT, err, a1, a2);
}

/* bdrv_pread: a request qemu's block layer refuses (too long, or reaching
 * past BDRV_MAX_LENGTH) is -EIO; bytes past EOF read as zero. */
int vhdx_pread(const struct vhdx *v, uint64_t off, void *buf, uint64_t len)
{
    if (len > REQUEST_MAX_BYTES || reader_read(v->r, off, buf, len)) return vhdx_fail(v, VHDX_E_IO, off, len);
    return 0;
}

/* vhdx_checksum_is_valid: CRC-32C of buf with the u32 at crc_off as zero. */
static bool checksum_ok(uint8_t *buf, uint32_t size, uint32_t crc_off)
{
    uint32_t want = le32(buf + crc_off);
    uint8_t save[4];
    memcpy(save, buf + crc_off, 4);
    memset(buf + crc_off, 0, 4);
    uint32_t got = vhdx_crc32c(0xffffffffu, buf, size);
    memcpy(buf + crc_off, save, 4);
    return got == want;
}

static void region_register(struct vhdx *v, uint64_t start, uint64_t length)
{
    /* at most 1 + 2047 registrations: the log and the region-table entries */
    v->regions[v->n_regions].start = start;
    v->regions[v->n_regions].end = start + length;
    v->n_regions++;
}

/* vhdx_region_check: newest region first, as qemu's QLIST_INSERT_HEAD list.
 * Returns true (and sends qemu's message) on an overlap. */
static bool region_overlaps_slow(struct vhdx *v, uint64_t start, uint64_t length)
{
    uint64_t end = start + length;
    for (uint32_t k = v->n_regions; k-- > 0;) {
        const struct vhdx_region *r = &v->regions[k];
        v->region_work++;
        if (!(start >= r->end || end <= r->start)) {
            emit_check_msg(v->input, CMSG_VHDX_REGION_OVERLAP, start, end, r->start, r->end);
            return true;
        }
    }
    return false;
}

/* After the region table: sort the regions by start (insertion sort, n <=
 * 2048, runs once) and keep the running maximum of end, so a range that
 * overlaps nothing is answered by one binary search. */
static void regions_index(struct vhdx *v)
{
    uint32_t n = v->n_regions;
    for (uint32_t i = 0; i < n; i++) {
        struct vhdx_region x = v->regions[i];
        uint32_t j = i;
        while (j > 0 && v->sorted[j - 1].start > x.start) {
            v->sorted[j] = v->sorted[j - 1];
            j--;
        }
        v->sorted[j] = x;
    }
    for (uint32_t i = 0; i < n; i++)
        v->max_end[i] = i == 0 || v->sorted[i].end > v->max_end[i - 1] ? v->sorted[i].end : v->max_end[i - 1];
}

static bool region_overlaps(struct vhdx *v, uint64_t start, uint64_t length)
{
    uint64_t end = start + length;
    /* overlap with r  <=>  r.start < end && r.end > start */
    uint32_t lo = 0, hi = v->n_regions; /* count of regions with start < end */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v->sorted[mid].start < end) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0 || v->max_end[lo - 1] <= start) return false;
    return region_overlaps_slow(v, start, length);
}

/* vhdx_parse_header */
static int parse_header(struct vhdx *v)
{
    static uint8_t h[2][HEADER_SIZE];
    bool valid[2] = {false, false};
    uint64_t seq[2] = {0, 0};
    const uint32_t offs[2] = {HEADER1_OFFSET, HEADER2_OFFSET};
    for (int i = 0; i < 2; i++) {
        if (vhdx_pread(v, offs[i], h[i], HEADER_SIZE)) return -1;
        if (checksum_ok(h[i], HEADER_SIZE, 4) && le32(h[i]) == 0x64616568u /* "head" */ && le16(h[i] + 66) == 1) {
            seq[i] = le64(h[i] + 8);
            valid[i] = true;
        }
    }
    int cur;
    if (valid[0] && !valid[1]) cur = 0;
    else if (!valid[0] && valid[1]) cur = 1;
    else if (!valid[0] && !valid[1]) return vhdx_fail(v, VHDX_E_NO_HEADER, 0, 0);
    else if (seq[0] > seq[1]) cur = 0;
    else if (seq[1] > seq[0]) cur = 1;
    else if (!memcmp(h[0], h[1], HEADER_STRUCT_SIZE)) cur = 0; /* Disk2VHD writes two identical headers */
    else return vhdx_fail(v, VHDX_E_NO_HEADER, 0, 0);
    const uint8_t *c = h[cur];
    v->curr_header = cur;
    v->header_seq = seq[cur];
    memcpy(v->log_guid, c + 48, 16);
    v->log_version = le16(c + 64);
    v->log_length = le32(c + 68);
    v->log_offset = le64(c + 72);
    region_register(v, v->log_offset, v->log_length);
    return 0;
}

/* vhdx_open_region_tables */
static int open_region_tables(struct vhdx *v)
{
    uint8_t *buf = rt_alloc(HEADER_BLOCK_SIZE);
    if (!buf) return rt_error(v->input, GERR_OUT_OF_MEMORY, HEADER_BLOCK_SIZE, 0, 0);
    int ret = -1;
    if (vhdx_pread(v, REGION_TABLE_OFFSET, buf, HEADER_BLOCK_SIZE)) goto out;
    if (!checksum_ok(buf, HEADER_BLOCK_SIZE, 4)) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_RT_CHECKSUM, le32(buf + 4));
        goto out;
    }
    if (le32(buf) != 0x69676572u /* "regi" */) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_RT_SIGNATURE, le32(buf));
        goto out;
    }
    uint32_t count = le32(buf + 8);
    if (count > 2047) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_RT_COUNT, count);
        goto out;
    }
    bool bat_found = false, md_found = false;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = buf + 16 + 32 * i;
        uint64_t off = le64(e + 16);
        uint32_t len = le32(e + 24), bits = le32(e + 28);
        if (region_overlaps_slow(v, off, len)) {
            ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_REGION_OVERLAP, i);
            goto out;
        }
        region_register(v, off, len);
        if (!memcmp(e, bat_guid, 16)) {
            if (bat_found) {
                ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_RT_DUPLICATE, i);
                goto out;
            }
            bat_found = true;
            v->bat_offset = off;
            v->bat_length = len;
            v->bat_rt_index = i;
            continue;
        }
        if (!memcmp(e, metadata_guid, 16)) {
            if (md_found) {
                ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_RT_DUPLICATE, i);
                goto out;
            }
            md_found = true;
            v->metadata_offset = off;
            v->metadata_length = len;
            continue;
        }
        if (bits & REGION_ENTRY_REQUIRED) {
            ret = vhdx_fail(v, VHDX_E_NOTSUP, VHDX_NOTSUP_REGION, i);
            goto out;
        }
    }
    if (!bat_found || !md_found) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_RT_MISSING, (bat_found ? 1 : 0) | (md_found ? 2 : 0));
        goto out;
    }
    ret = 0;
out:
    rt_free(buf);
    return ret;
}

static int read_md(struct vhdx *v, uint32_t item_off, void *out, uint32_t len)
{
    /* metadata_offset <= READER_MAX_END (its table was read): no overflow */
    return vhdx_pread(v, v->metadata_offset + item_off, out, len);
}

/* vhdx_parse_metadata */
static int parse_metadata(struct vhdx *v)
{
    uint8_t *buf = rt_alloc(METADATA_TABLE_MAX_SIZE);
    if (!buf) return rt_error(v->input, GERR_OUT_OF_MEMORY, METADATA_TABLE_MAX_SIZE, 0, 0);
    int ret = -1;
    if (vhdx_pread(v, v->metadata_offset, buf, METADATA_TABLE_MAX_SIZE)) goto out;
    if (memcmp(buf, "metadata", 8)) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_MD_SIGNATURE, le64(buf));
        goto out;
    }
    uint32_t count = le16(buf + 10);
    if ((uint64_t)count * 32 > METADATA_TABLE_MAX_SIZE - 32) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_MD_COUNT, count);
        goto out;
    }
    uint32_t present = 0;
    uint32_t item_off[6] = {0};
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = buf + 32 + 32 * i;
        bool known = false;
        for (uint32_t k = 0; k < sizeof md_items / sizeof md_items[0]; k++) {
            if (memcmp(e, md_items[k].guid, 16)) continue;
            if (present & md_items[k].bit) {
                ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_MD_DUPLICATE, i);
                goto out;
            }
            present |= md_items[k].bit;
            item_off[k] = le32(e + 16);
            known = true;
            break;
        }
        if (!known && (le32(e + 24) & META_FLAGS_IS_REQUIRED)) {
            ret = vhdx_fail(v, VHDX_E_NOTSUP, VHDX_NOTSUP_METADATA, i);
            goto out;
        }
    }
    if (present != META_ALL) {
        ret = vhdx_fail(v, VHDX_E_NOTSUP, VHDX_NOTSUP_MD_MISSING, present);
        goto out;
    }
    uint8_t p[8];
    if (read_md(v, item_off[0], p, 8)) goto out;
    v->block_size = le32(p);
    v->params_bits = le32(p + 4);
    if (v->params_bits & PARAMS_HAS_PARENT) {
        /* qemu 7.2 does not support differencing images */
        if (present & META_PARENT_LOCATOR) ret = vhdx_fail(v, VHDX_E_NOTSUP, VHDX_NOTSUP_DIFFERENCING, 0);
        else ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_PARENT_LOCATOR, 0);
        goto out;
    }
    if (read_md(v, item_off[1], p, 8)) goto out;
    v->virtual_disk_size = le64(p);
    v->vsize_item_offset = v->metadata_offset + item_off[1];
    if (read_md(v, item_off[3], p, 4)) goto out;
    v->logical_sector_size = le32(p);
    if (read_md(v, item_off[4], p, 4)) goto out;
    v->physical_sector_size = le32(p);
    if (v->block_size < BLOCK_SIZE_MIN || v->block_size > BLOCK_SIZE_MAX) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_BLOCK_SIZE, v->block_size);
        goto out;
    }
    if (v->logical_sector_size != 512) {
        ret = vhdx_fail(v, VHDX_E_NOTSUP, VHDX_NOTSUP_SECTOR_SIZE, v->logical_sector_size);
        goto out;
    }
    uint32_t spb = v->block_size / 512;
    uint64_t chunk_ratio = MAX_SECTORS_PER_BLOCK * 512 / v->block_size;
    if (spb & (spb - 1)) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_SECTORS_PER_BLOCK, spb);
        goto out;
    }
    if (chunk_ratio & (chunk_ratio - 1)) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_CHUNK_RATIO, chunk_ratio);
        goto out;
    }
    if (v->block_size & (v->block_size - 1)) {
        ret = vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_BLOCK_SIZE, v->block_size);
        goto out;
    }
    /* 1 MiB <= block_size <= 256 MiB, a power of two: 16 <= chunk_ratio <= 4096 */
    v->chunk_ratio = chunk_ratio;
    v->sectors_per_block_bits = (uint32_t)__builtin_ctz(spb);
    v->chunk_ratio_bits = (uint32_t)__builtin_ctzll(chunk_ratio);
    v->block_size_bits = (uint32_t)__builtin_ctz(v->block_size);
    ret = 0;
out:
    rt_free(buf);
    return ret;
}

int vhdx_bat_get(struct vhdx *v, uint64_t idx, uint64_t *e)
{
    if (idx - v->win_first >= v->win_n || idx < v->win_first) {
        uint64_t per = VHDX_BAT_WINDOW / 8;
        uint64_t total = v->bat_length / 8;
        if (idx >= total) return rt_error(v->input, GERR_INTERNAL, idx, total, 0);
        uint64_t first = idx & ~(per - 1);
        uint64_t n = total - first < per ? total - first : per;
        /* the whole BAT passed qemu's read checks at open */
        if (reader_read(v->r, v->bat_offset + first * 8, v->win, n * 8)) {
            v->win_n = 0;
            return vhdx_fail(v, VHDX_E_IO, v->bat_offset + first * 8, n * 8);
        }
        v->win_first = first;
        v->win_n = n;
    }
    *e = le64(v->win + (idx - v->win_first) * 8);
    return 0;
}

/* bdrv_getlength(bs->file->bs): the file size rounded up to whole sectors */
static uint64_t file_length(const struct vhdx *v)
{
    return v->r->size + ((512 - (v->r->size & 511)) & 511);
}

int vhdx_check_bat(struct vhdx *v, uint64_t *errcnt)
{
    uint64_t fsize = file_length(v);
    uint64_t payblocks = v->chunk_ratio;
    uint64_t bs = v->block_size;
    uint64_t disk = v->total_sectors * 512; /* qemu's int64 product, wrapped */
    bool bad = false;
    for (uint64_t i = 0; i < v->bat_entries; i++) {
        /* entries stored past the end of the file read as zero (NOT_PRESENT) */
        if (v->bat_offset + i * 8 >= v->r->size) break;
        uint64_t e;
        if (vhdx_bat_get(v, i, &e)) return -1;
        if ((e & VHDX_BAT_STATE_MASK) != VHDX_PAYLOAD_FULLY_PRESENT) continue;
        uint64_t offset = e & VHDX_BAT_OFFSET_MASK;
        uint64_t rest = disk - i * bs;
        uint32_t block_length = (uint32_t)(bs < rest ? bs : rest);
        if (offset > (uint64_t)INT64_MAX - bs) {
            emit_check_msg(v->input, CMSG_VHDX_BAT_OFFSET_OVERFLOW, i, 0, 0, 0);
            bad = true;
            if (!errcnt) break;
            (*errcnt)++;
        }
        if (offset >= fsize) {
            emit_check_msg(v->input, CMSG_VHDX_BAT_START_PAST_EOF, i, offset, fsize, 0);
            bad = true;
            if (!errcnt) break;
            (*errcnt)++;
        } else if (offset + block_length > fsize) {
            emit_check_msg(v->input, CMSG_VHDX_BAT_END_PAST_EOF, i, offset + block_length - 1, fsize, 0);
            bad = true;
            if (!errcnt) break;
            (*errcnt)++;
        }
        if (payblocks) {
            payblocks--;
            if (v->region_work > VHDX_REGION_WORK) return vhdx_fail(v, VHDX_E_CHECK_WORK, i, 0);
            if (region_overlaps(v, offset, bs)) {
                bad = true;
                if (!errcnt) break;
                (*errcnt)++;
            }
        } else {
            payblocks = v->chunk_ratio;
        }
    }
    return bad ? 1 : 0;
}

int vhdx_open(struct vhdx *v, const struct reader *r, uint32_t flags)
{
    memset(v, 0, sizeof *v);
    v->r = r;
    v->input = r->input;
    uint8_t sig[8];
    if (vhdx_pread(v, 0, sig, 8)) return -1;
    if (memcmp(sig, "vhdxfile", 8)) return vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_SIGNATURE, le64(sig));
    if (parse_header(v)) return -1;
    if (vhdx_parse_log(v)) return -1;
    if (open_region_tables(v)) return -1;
    if (parse_metadata(v)) return -1;
    regions_index(v);

    v->total_sectors = v->virtual_disk_size >> 9;
    /* vhdx_calc_bat_entries, in qemu's uint32_t arithmetic */
    uint64_t bs = v->block_size;
    uint32_t data_blocks = (uint32_t)((v->virtual_disk_size + bs - 1) / bs);
    v->bat_entries = data_blocks + ((uint32_t)(data_blocks - 1) >> v->chunk_ratio_bits);
    if (v->bat_entries > v->bat_length / 8)
        return vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_BAT_LENGTH, v->bat_entries);
    /* qemu reads the whole BAT region in one request */
    uint64_t end;
    if (v->bat_length > REQUEST_MAX_BYTES || __builtin_add_overflow(v->bat_offset, v->bat_length, &end) ||
        end > READER_MAX_END)
        return vhdx_fail(v, VHDX_E_IO, v->bat_offset, v->bat_length);
    v->win = rt_alloc(VHDX_BAT_WINDOW);
    if (!v->win) return rt_error(v->input, GERR_OUT_OF_MEMORY, VHDX_BAT_WINDOW, 0, 0);
    if (!(flags & VHDX_OPEN_CHECK)) {
        int st = vhdx_check_bat(v, NULL);
        if (st < 0) return -1;
        if (st > 0) return vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_BAT_ENTRY, 0);
    }
    /* the block layer's refresh_total_sectors, right after the driver's open */
    if (v->total_sectors > (uint64_t)INT64_MAX / 512) return vhdx_fail(v, VHDX_E_TOO_LARGE, v->total_sectors, 0);
    return 0;
}

int vhdx_emit_info(const struct vhdx *v)
{
    struct rec_image_info ii;
    rec_init(&ii, REC_IMAGE_INFO, sizeof ii);
    ii.input = v->input;
    ii.format = FMT_VHDX;
    ii.virtual_size = v->total_sectors * 512; /* <= 2^64 - 512: vds >> 9 << 9 */
    ii.cluster_size = v->block_size;
    ii.flags = 0;
    ii.subformat = (v->params_bits & 1) ? SUBFMT_FIXED : SUBFMT_DYNAMIC;
    ii.extra[0] = v->log_length;
    ii.extra[1] = (uint64_t)v->logical_sector_size | (uint64_t)v->physical_sector_size << 32;
    ii.extra[2] = v->bat_entries;
    ii.extra[3] = v->bat_offset;
    return rt_emit(&ii, sizeof ii);
}

int vhdx_check(const struct reader *r)
{
    static struct vhdx v;
    if (vhdx_open(&v, r, VHDX_OPEN_CHECK)) return -1;
    struct rec_check c;
    rec_init(&c, REC_CHECK, sizeof c);
    c.input = r->input;
    uint64_t errs = 0;
    if (vhdx_check_bat(&v, &errs) < 0) return -1;
    /* qemu counts in an int */
    c.corruptions = (uint64_t)(int64_t)(int32_t)(uint32_t)errs;
    return rt_emit(&c, sizeof c);
}
