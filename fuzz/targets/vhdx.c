/*
 * Fuzz target vhdx: vhdx_open (normal and check mode), vhdx_check, the
 * IMAGE_INFO record, and a bounded block_status walk through vhdx_layer_ops.
 *
 * A VHDX file spreads its metadata over megabytes (headers at 64/128 KiB,
 * region table at 192 KiB, log, BAT and metadata at 1 MiB multiples), so the
 * input is a compact description the target expands into a sparse virtual
 * file (everything not listed reads as zero):
 *   [0,4)      file size in 512-byte units
 *   [4]        flags: 1 fix both header CRCs, 2 fix the region table CRC,
 *              4 fix the CRC of the log entry at the log's start
 *   [8,16)     file[0, 8)                       file identifier
 *   [16,272)   file[64 KiB, +256)               header 1
 *   [272,528)  file[128 KiB, +256)              header 2
 *   [528,1040) file[192 KiB, +512)              region table (15 entries)
 *   [1040,1552) file[M, +512)                   metadata table (M: the metadata region)
 *   [1552,1616) 8 bytes at M + offset of metadata entry i, i < 8
 *   [1616,2640) file[B, +1024)                  BAT (B: the BAT region)
 *   [2640,...) file[L, +n), n <= 8192           log start (L: header 1's log offset)
 * Missing input bytes are zero. fuzz/vhdx_seed.ts turns a real image into
 * this form (fuzz/make_corpus.sh).
 *
 * Invariants (abort = finding), after a successful open:
 *   - 1 MiB <= block_size <= 256 MiB, a power of two; chunk_ratio ==
 *     2^23 * 512 / block_size; bat_entries <= bat_length / 8;
 *   - length == total_sectors * 512;
 *   - block_status: 0 < len <= bytes, status LS_ZERO or LS_DATA|LS_OFFSET_VALID,
 *     host + len without overflow and <= READER_MAX_END (readable; past EOF
 *     reads zero-fill as in qemu), a block inside the checked BAT starts
 *     inside the file; positions strictly increase (at most 256 calls).
 *
 * FUZZ_SOURCES: vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c vhdx/layer.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "vhdx/vhdx.h"
#include "bytes.h"

#define CHECK(cond) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, 0, 0); } while (0)


#define MAX_SEGS 16
struct seg {
    uint64_t off;
    const uint8_t *p;
    uint64_t len;
};
struct vfile {
    uint64_t size;
    uint32_t n;
    struct seg s[MAX_SEGS];
};

static int vread(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    const struct vfile *f = ctx;
    memset(buf, 0, len);
    for (uint32_t i = 0; i < f->n; i++) {
        const struct seg *s = &f->s[i];
        if (s->off >= off + len || s->off + s->len <= off) continue;
        uint64_t from = s->off > off ? s->off : off;
        uint64_t to = s->off + s->len < off + len ? s->off + s->len : off + len;
        memcpy((uint8_t *)buf + (from - off), s->p + (from - s->off), to - from);
    }
    return 0;
}

static void add(struct vfile *f, uint64_t off, const uint8_t *p, uint64_t len)
{
    if (!len || f->n >= MAX_SEGS) return;
    if (off > UINT64_MAX - len) len = UINT64_MAX - off;
    f->s[f->n++] = (struct seg){off, p, len};
}

static uint8_t in[2640 + 8192];
static uint8_t scratch[65536];

/* CRC-32C over file[off, off+len) with the u32 at off+4 zeroed, stored in
 * the segment that holds off+4 (the segment starts at off). */
static void fix_crc(struct vfile *f, uint8_t *segp, uint64_t off, uint64_t len)
{
    memset(segp + 4, 0, 4);
    vread(f, off, scratch, len);
    uint32_t c = vhdx_crc32c(0xffffffffu, scratch, len);
    for (int i = 0; i < 4; i++) segp[4 + i] = (uint8_t)(c >> (8 * i));
}

static void walk(struct layer *l)
{
    struct vhdx *v = l->state;
    CHECK(v->block_size >= (1u << 20) && v->block_size <= (256u << 20));
    CHECK((v->block_size & (v->block_size - 1)) == 0);
    CHECK(v->chunk_ratio == (1ull << 32) / v->block_size);
    CHECK(v->bat_entries <= v->bat_length / 8);
    CHECK(l->length == v->total_sectors * 512);
    CHECK(l->qemu_all_data);
    uint64_t pos = 0;
    for (int calls = 0; calls < 256 && pos < l->length; calls++) {
        uint64_t bytes = l->length - pos, len = 0, host = 0;
        if (calls & 1) bytes = bytes > 300000 ? 300000 : bytes;
        int st = l->ops->block_status(l, pos, bytes, &len, &host);
        if (st < 0) return;
        CHECK(len > 0 && len <= bytes);
        CHECK(st == (int)LS_ZERO || st == (int)(LS_DATA | LS_OFFSET_VALID));
        if (st & LS_OFFSET_VALID) {
            CHECK(host <= READER_MAX_END && len <= READER_MAX_END - host);
            uint32_t idx = (uint32_t)((pos >> 9) >> v->sectors_per_block_bits);
            idx += idx >> v->chunk_ratio_bits;
            uint64_t fsize = v->r->size + ((512 - (v->r->size & 511)) & 511);
            uint64_t start = host ? host - (pos & (v->block_size - 1)) : 0;
            if (idx < v->bat_entries) CHECK(start < fsize);
        }
        CHECK(pos + len > pos);
        pos += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(in, 0, sizeof in);
    memcpy(in, data, size < sizeof in ? size : sizeof in);
    size_t logn = size > 2640 ? size - 2640 : 0;
    if (logn > 8192) logn = 8192;

    static struct vfile f;
    memset(&f, 0, sizeof f);
    f.size = (uint64_t)le32(in) * 512;
    uint8_t flags = in[4];
    add(&f, 0, in + 8, 8);
    add(&f, 0x10000, in + 16, 256);
    add(&f, 0x20000, in + 272, 256);
    add(&f, 0x30000, in + 528, 512);
    static const uint8_t md_guid[16] = {0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
                                        0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e};
    static const uint8_t bat_guid[16] = {0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
                                         0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08};
    uint64_t M = 0, B = 0;
    bool hasM = false, hasB = false;
    for (int i = 0; i < 15; i++) {
        const uint8_t *e = in + 528 + 16 + 32 * i;
        if (!hasM && !memcmp(e, md_guid, 16)) M = le64(e + 16), hasM = true;
        if (!hasB && !memcmp(e, bat_guid, 16)) B = le64(e + 16), hasB = true;
    }
    if (hasM) {
        add(&f, M, in + 1040, 512);
        for (int i = 0; i < 8; i++) {
            const uint8_t *e = in + 1040 + 32 + 32 * i;
            add(&f, M + le32(e + 16), in + 1552 + 8 * i, 8);
        }
    }
    if (hasB) add(&f, B, in + 1616, 1024);
    uint64_t L = le64(in + 16 + 72);
    add(&f, L, in + 2640, logn);
    if (flags & 1) {
        fix_crc(&f, in + 16, 0x10000, 4096);
        fix_crc(&f, in + 272, 0x20000, 4096);
    }
    if (flags & 2) fix_crc(&f, in + 528, 0x30000, 65536);
    if (flags & 4) {
        uint32_t el = le32(in + 2640 + 8);
        if (el >= 64 && el <= sizeof scratch && L <= READER_MAX_END) fix_crc(&f, in + 2640, L, el);
    }

    struct reader r;
    r.ctx = &f;
    r.size = f.size;
    r.input = 0;
    r.from_input = false;
    r.read = vread;

    static struct vhdx v;
    for (int mode = 0; mode < 2; mode++) {
        fuzz_rt_begin(data, size, FMT_VHDX);
        if (vhdx_open(&v, &r, mode ? VHDX_OPEN_CHECK : 0) == 0) {
            vhdx_emit_info(&v);
            if (mode) {
                uint64_t errs = 0;
                vhdx_check_bat(&v, &errs);
            }
        }
        fuzz_rt_end();
    }
    fuzz_rt_begin(data, size, FMT_VHDX);
    static struct layer l;
    memset(&l, 0, sizeof l);
    l.r = r;
    l.ops = &vhdx_layer_ops;
    if (l.ops->open(&l) == 0) walk(&l);
    fuzz_rt_end();
    return 0;
}
