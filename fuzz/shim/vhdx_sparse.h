/*
 * The compact VHDX input of fuzz/targets/vhdx.c and measure_scan's vhdx
 * selector, expanded into a sparse virtual file (everything not listed reads
 * as zero). A VHDX file spreads its metadata over megabytes, so the fuzzer
 * mutates only the parts that matter:
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
 * this form (fuzz/make_corpus.sh). Included by one target each (static
 * state): link vhdx/crc32c.c.
 */
#ifndef INSTAR_FUZZ_VHDX_SPARSE_H
#define INSTAR_FUZZ_VHDX_SPARSE_H
#include <stdbool.h>
#include <string.h>
#include "reader.h"
#include "bytes.h"
#include "vhdx/vhdx.h"

#define VHDX_SPARSE_MAX_SEGS 16
struct vhdx_sparse_seg {
    uint64_t off;
    const uint8_t *p;
    uint64_t len;
};
struct vhdx_sparse {
    uint64_t size;
    uint32_t n;
    struct vhdx_sparse_seg s[VHDX_SPARSE_MAX_SEGS];
};

static int vhdx_sparse_read(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    const struct vhdx_sparse *f = ctx;
    memset(buf, 0, len);
    for (uint32_t i = 0; i < f->n; i++) {
        const struct vhdx_sparse_seg *s = &f->s[i];
        if (s->off >= off + len || s->off + s->len <= off) continue;
        uint64_t from = s->off > off ? s->off : off;
        uint64_t to = s->off + s->len < off + len ? s->off + s->len : off + len;
        memcpy((uint8_t *)buf + (from - off), s->p + (from - s->off), to - from);
    }
    return 0;
}

static void vhdx_sparse_add(struct vhdx_sparse *f, uint64_t off, const uint8_t *p, uint64_t len)
{
    if (!len || f->n >= VHDX_SPARSE_MAX_SEGS) return;
    if (off > UINT64_MAX - len) len = UINT64_MAX - off;
    f->s[f->n++] = (struct vhdx_sparse_seg){off, p, len};
}

static uint8_t vhdx_sparse_in[2640 + 8192];
static uint8_t vhdx_sparse_scratch[65536];

/* CRC-32C over file[off, off+len) with the u32 at off+4 zeroed, stored in
 * the segment that holds off+4 (the segment starts at off). */
static void vhdx_sparse_fix_crc(struct vhdx_sparse *f, uint8_t *segp, uint64_t off, uint64_t len)
{
    memset(segp + 4, 0, 4);
    vhdx_sparse_read(f, off, vhdx_sparse_scratch, len);
    uint32_t c = vhdx_crc32c(0xffffffffu, vhdx_sparse_scratch, len);
    for (int i = 0; i < 4; i++) segp[4 + i] = (uint8_t)(c >> (8 * i));
}

/* Expands data[0, size) into *f (which points into a static copy of the
 * input: one expansion at a time) and sets *r to read it as input 0. */
static void vhdx_sparse_expand(const uint8_t *data, size_t size, struct vhdx_sparse *f, struct reader *r)
{
    uint8_t *in = vhdx_sparse_in;
    memset(in, 0, sizeof vhdx_sparse_in);
    memcpy(in, data, size < sizeof vhdx_sparse_in ? size : sizeof vhdx_sparse_in);
    size_t logn = size > 2640 ? size - 2640 : 0;
    if (logn > 8192) logn = 8192;

    memset(f, 0, sizeof *f);
    f->size = (uint64_t)le32(in) * 512;
    uint8_t flags = in[4];
    vhdx_sparse_add(f, 0, in + 8, 8);
    vhdx_sparse_add(f, 0x10000, in + 16, 256);
    vhdx_sparse_add(f, 0x20000, in + 272, 256);
    vhdx_sparse_add(f, 0x30000, in + 528, 512);
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
        vhdx_sparse_add(f, M, in + 1040, 512);
        for (int i = 0; i < 8; i++) {
            const uint8_t *e = in + 1040 + 32 + 32 * i;
            vhdx_sparse_add(f, M + le32(e + 16), in + 1552 + 8 * i, 8);
        }
    }
    if (hasB) vhdx_sparse_add(f, B, in + 1616, 1024);
    uint64_t L = le64(in + 16 + 72);
    vhdx_sparse_add(f, L, in + 2640, logn);
    if (flags & 1) {
        vhdx_sparse_fix_crc(f, in + 16, 0x10000, 4096);
        vhdx_sparse_fix_crc(f, in + 272, 0x20000, 4096);
    }
    if (flags & 2) vhdx_sparse_fix_crc(f, in + 528, 0x30000, 65536);
    if (flags & 4) {
        uint32_t el = le32(in + 2640 + 8);
        if (el >= 64 && el <= sizeof vhdx_sparse_scratch && L <= READER_MAX_END)
            vhdx_sparse_fix_crc(f, in + 2640, L, el);
    }
    r->ctx = f;
    r->size = f->size;
    r->input = 0;
    r->from_input = false;
    r->read = vhdx_sparse_read;
}
#endif
