/*
 * A streamOptimized VMDK read in one pass (ops.VMDK_STREAM; the host side is
 * lib/convert/stdin_vmdk.ts). The host copies the stream, window by window,
 * into input 0 at the bytes' own stream offsets; this guest parses the
 * window's part in order (the header and descriptor in the first window,
 * then markers: grains carrying their LBA and deflate data, grain table,
 * grain directory, footer, end-of-stream) and writes every inflated grain
 * that is not all zeroes to output 0 (the disk window file) at its disk
 * offset, in large WRITEV batches. The existing convert guest then converts
 * the final part of that file into the target, as for a raw stream.
 *
 * What is checked, each as an ERROR record (GERR_FORMAT, a0 = VMDK_E_*):
 * the header as qemu's vmdk_open_vmdk4 checks it (version, grain table
 * size, granularity, instar's grain cap) plus a header region that fits a
 * window; the descriptor's CID lines as qemu reads them and no parent; a
 * grain's compressed size (at most two grains minus the marker, qemu's
 * buffer), its LBA (a whole grain inside the disk, after the previous
 * grain's end: grains come in disk order, see docs/pipelines.md), its
 * inflate (zlib's uncompress into one grain must end the stream and cover
 * the grain's part of the disk, as qemu's read needs); every metadata
 * marker's type and size; a footer that matches the header; an
 * end-of-stream marker before the stream ends (qemu-img's own streams, with
 * their tables in the header region, may simply end after the last grain;
 * the host then checks the grain count against those tables). A window that ends inside an
 * item stops before it (the host carries the rest to the next window); in
 * the last window that is a truncated stream.
 */
#include "vmdk.h"
#include "bytes.h"
#include "zero.h"
#include "../ops/records.h"

#define MAGIC_KDMV 0x4b444d56u
#define GD_AT_END UINT64_MAX
#define FLAG_MARKER (1u << 17)
#define FLAG_ZERO_GRAIN (1u << 2)
#define I64_MAX ((1ull << 63) - 1)
/* The header, descriptor and any tables before the first marker must fit one window. */
#define HEADER_MAX (64ull << 20)
#define OUT_BUF (8ull << 20)
#define MARKER_EOS 0u
#define MARKER_GT 1u
#define MARKER_GD 2u
#define MARKER_FOOTER 3u

struct st {
    struct vmdk v;
    struct reader r, head; /* the window; the header region (input 0 in the first window, else input 1) */
    uint64_t head_bytes, gd, table_grains;
    uint64_t gt_cached; /* grain directory index + 1 of the table in gt */
    uint32_t gt[512];
    uint64_t cap_sectors, grain, gtes, l1_size, gbytes;
    uint64_t send, from, dwin, prev_end, flags;
    uint8_t *cbuf, *gbuf, *obuf;
    uint64_t oused, written, grains;
    struct io_seg segs[LIMIT_IO_SEGS_MAX];
    uint32_t nsegs;
};

static struct st S;

static int fail(uint32_t code, uint64_t a1, uint64_t a2)
{
    return vmdk_fail(&S.v, code, a1, a2);
}

static int flush(void)
{
    if (!S.nsegs) return 0;
    int64_t n = hc_writev(S.segs, S.nsegs);
    if (n != (int64_t)S.oused) return rt_error(0, GERR_IO, 1, S.segs[0].off, 0);
    S.written += S.oused;
    S.oused = 0;
    S.nsegs = 0;
    return 0;
}

/* Queues [off, off+len) of the disk from p (len <= one grain). */
static int put(uint64_t off, const uint8_t *p, uint64_t len)
{
    if (S.oused + len > OUT_BUF || S.nsegs == LIMIT_IO_SEGS_MAX)
        if (flush()) return -1;
    memcpy(S.obuf + S.oused, p, len);
    struct io_seg *last = S.nsegs ? &S.segs[S.nsegs - 1] : 0;
    if (last && last->off + last->len == off) {
        last->len += len;
    } else {
        S.segs[S.nsegs].off = off;
        S.segs[S.nsegs].len = len;
        S.segs[S.nsegs].addr = (uint64_t)(uintptr_t)(S.obuf + S.oused);
        S.nsegs++;
    }
    S.oused += len;
    return 0;
}

/* The geometry every window shares (from the header, or carried by the host). */
static int geometry(uint32_t version, uint64_t capacity, uint64_t granularity, uint64_t gtes)
{
    if (version > 3) return fail(VMDK_E_VERSION, version, 0);
    if (gtes > 512) return fail(VMDK_E_L2_SIZE, gtes, 0);
    uint32_t l1e = (uint32_t)(gtes * granularity);
    if (l1e == 0) return fail(VMDK_E_L1_ENTRY, 0, 0);
    if (granularity > 0x200000) return fail(VMDK_E_GRANULARITY, granularity, 0);
    if (granularity * 512 > VMDK_COMPRESSED_GRAIN_MAX) return fail(VMDK_E_GRAIN_CAP, granularity * 512, 0);
    if (capacity > I64_MAX / 512) return fail(VMDK_E_TOO_LARGE, capacity, 0);
    uint64_t l1 = (uint32_t)((capacity + l1e - 1) / l1e);
    if (l1 > 32u * 1024 * 1024) return fail(VMDK_E_L1_SIZE, l1, 0);
    S.cap_sectors = capacity;
    S.grain = granularity;
    S.gtes = gtes;
    S.l1_size = l1;
    S.gbytes = granularity * 512;
    return 0;
}

/* The header's grain directory and tables (qemu reads the disk through them): they must lie in the header
 * region, which stays readable (input 1) for the whole stream. Counts the grains they reference. */
static int count_tables(void)
{
    uint64_t end;
    if (__builtin_mul_overflow(S.gd, 512ull, &end) || __builtin_add_overflow(end, S.l1_size * 4, &end) ||
        end > S.head_bytes)
        return fail(VMDK_E_ST_TABLES, S.gd, 0);
    static uint8_t win[4096]; /* directory entries read 1024 at a time */
    for (uint64_t i = 0; i < S.l1_size; i++) {
        uint64_t k = i % 1024;
        if (k == 0) {
            uint64_t n = S.l1_size - i < 1024 ? S.l1_size - i : 1024;
            if (reader_read(&S.head, S.gd * 512 + i * 4, win, n * 4)) return fail(VMDK_E_IO, S.gd * 512, 0);
        }
        uint64_t t = le32(win + 4 * k);
        if (!t) continue;
        if (t * 512 + S.gtes * 4 > S.head_bytes) return fail(VMDK_E_ST_TABLES, t, 1);
        if (reader_read(&S.head, t * 512, S.gt, S.gtes * 4)) return fail(VMDK_E_IO, t * 512, 0);
        for (uint64_t j = 0; j < S.gtes; j++) {
            uint32_t e = le32((const uint8_t *)(S.gt + j));
            if (e && !((S.flags & VMDKS_ZERO_GRAIN) && e == 1)) S.table_grains++;
        }
    }
    return 0;
}

/* The grain for disk sector lba lies at stream byte pos: is that where the header's tables say? */
static int check_table(uint64_t lba, uint64_t pos)
{
    uint64_t idx = lba / S.grain, l1 = idx / S.gtes, l2 = idx % S.gtes;
    if (S.gt_cached != l1 + 1) {
        uint8_t g[4];
        if (reader_read(&S.head, S.gd * 512 + l1 * 4, g, 4)) return fail(VMDK_E_IO, S.gd * 512, 0);
        uint64_t t = le32(g);
        if (!t) return fail(VMDK_E_ST_MISMATCH, lba, pos / 512);
        if (t * 512 + S.gtes * 4 > S.head_bytes) return fail(VMDK_E_ST_TABLES, t, 1);
        if (reader_read(&S.head, t * 512, S.gt, S.gtes * 4)) return fail(VMDK_E_IO, t * 512, 0);
        S.gt_cached = l1 + 1;
    }
    if (le32((const uint8_t *)(S.gt + l2)) != pos / 512) return fail(VMDK_E_ST_MISMATCH, lba, pos / 512);
    return 0;
}

/* The header (sector 0 of the header region): geometry, flags, the header region's size and the grain
 * directory. The first window also checks the descriptor and the tables. Returns 1 when the stream is not
 * streamOptimized with markers. */
static int header(bool first)
{
    uint8_t h[512];
    if ((first && S.send < 512) || reader_read(&S.head, 0, h, sizeof h)) return first ? 1 : fail(VMDK_E_IO, 0, 0);
    uint32_t hflags = le32(h + 8);
    uint64_t capacity = le64(h + 12), desc_offset = le64(h + 28);
    if (be32(h) != MAGIC_KDMV || (capacity == 0 && desc_offset) || le16(h + 77) != 1 || !(hflags & FLAG_MARKER))
        return first ? 1 : fail(VMDK_E_IO, 0, 1);
    if (geometry(le32(h + 4), capacity, le64(h + 20), le32(h + 44))) return -1;
    S.gd = le64(h + 56);
    if (S.gd == GD_AT_END) S.flags |= VMDKS_GD_AT_END;
    else S.flags |= VMDKS_TABLES;
    if (hflags & FLAG_ZERO_GRAIN) S.flags |= VMDKS_ZERO_GRAIN;
    uint64_t overhead = le64(h + 64);
    if (overhead > HEADER_MAX / 512) return fail(VMDK_E_ST_HEADER, overhead * 512, 0);
    if (overhead == 0) return fail(VMDK_E_TRUNCATED, 0, 0);
    S.head_bytes = overhead * 512;
    if (!first) return S.head_bytes > S.head.size ? fail(VMDK_E_IO, S.head_bytes, 2) : 0;
    if (S.head_bytes > S.send) {
        if (!(rt_params()->arg[0] & VMDKS_FINAL)) return fail(VMDK_E_ST_HEADER, S.head_bytes, 0);
        return fail(VMDK_E_TRUNCATED, S.head_bytes, 0);
    }
    /* vmdk_parent_open and vmdk_read_cid over DESC_SIZE bytes at 0x200 */
    static char d[VMDK_DESC_SIZE];
    if (reader_read(&S.r, 0x200, d, sizeof d)) return fail(VMDK_E_IO, 0x200, 1);
    d[sizeof d - 1] = 0;
    uint64_t n = 0;
    while (n < sizeof d && d[n]) n++;
    if (vmdk_read_cids(&S.v, d, n)) return -1;
    if (S.v.has_parent) return fail(VMDK_E_ST_PARENT, 0, 0);
    if ((S.flags & VMDKS_TABLES) && count_tables()) return -1;
    return 0;
}

/* The footer sector f: what qemu reads instead of the header when gd_offset is GD_AT_END. */
static bool footer_matches(const uint8_t *f)
{
    if (be32(f) != MAGIC_KDMV || le32(f + 4) > 3 || le16(f + 77) != 1 || !(le32(f + 8) & FLAG_MARKER)) return false;
    if (le64(f + 12) != S.cap_sectors || le64(f + 20) != S.grain || le32(f + 44) != S.gtes) return false;
    return le64(f + 56) != GD_AT_END && le64(f + 64) != 0;
}

static uint64_t sectors_for(uint64_t bytes)
{
    return (bytes + 511) / 512;
}

int vmdk_stream_run(void)
{
    const struct params *p = rt_params();
    memset(&S, 0, sizeof S); /* one run per VM; a fuzz target runs many */
    uint64_t flags = p->arg[0];
    bool first = flags & VMDKS_FIRST, final = flags & VMDKS_FINAL;
    if (p->n_inputs != (first ? 1u : 2u)) return rt_error(0, GERR_BAD_PARAMS, 1, p->n_inputs, 0);
    reader_from_input(&S.r, 0);
    reader_from_input(&S.head, first ? 0 : 1);
    S.v.r = &S.r;
    S.flags = flags & VMDKS_FOOTER;
    uint64_t pos = p->arg[1];
    S.send = p->arg[2];
    S.from = p->arg[3];
    S.dwin = p->arg[4];
    S.prev_end = p->arg[7];
    if (S.send > S.r.size || pos > S.send || S.dwin < 512) return rt_error(0, GERR_BAD_PARAMS, 2, pos, S.send);
    struct rec_vmdk_stream out;
    rec_init(&out, REC_VMDK_STREAM, sizeof out);
    int h = header(first);
    if (h < 0) return -1;
    if (h > 0) {
        out.flags = VMDKS_NOT_STREAM;
        return rt_emit(&out, sizeof out);
    }
    if (first) {
        pos = S.head_bytes;
    } else if (p->arg[5] != S.cap_sectors || p->arg[6] != (S.grain | S.gtes << 32) || pos < S.head_bytes) {
        return rt_error(0, GERR_BAD_PARAMS, 4, p->arg[5], p->arg[6]);
    }
    uint64_t cap_bytes = S.cap_sectors * 512;
    if (S.from > cap_bytes || S.prev_end > cap_bytes + S.gbytes) return rt_error(0, GERR_BAD_PARAMS, 3, S.from, 0);
    S.cbuf = rt_alloc(2 * S.gbytes);
    S.gbuf = rt_alloc(S.gbytes);
    S.obuf = rt_alloc(OUT_BUF);
    if (!S.cbuf || !S.gbuf || !S.obuf) return rt_error(0, GERR_OUT_OF_MEMORY, S.gbytes, 0, 0);
    uint64_t frontier = 0;
    bool stopped_at_grain = false;
    for (;;) {
        if (pos + 512 > S.send) {
            if (!final) break;
            if (pos < S.send) return fail(VMDK_E_ST_TRUNCATED, pos, 0);
            /* qemu-img's streams end after their last grain, without an end-of-stream marker: the host
             * checks that the header's tables name no grain the stream did not hold */
            if (!(S.flags & VMDKS_TABLES)) return fail(VMDK_E_ST_NO_EOS, pos, 0);
            S.flags |= VMDKS_EOS;
            break;
        }
        uint8_t m[512];
        if (reader_read(&S.r, pos, m, sizeof m)) return fail(VMDK_E_IO, pos, 0);
        uint64_t val = le64(m);
        uint32_t size = le32(m + 8);
        if (size) {
            /* a grain: {lba, size, deflate data}, padded to a sector */
            if (size > 2 * S.gbytes - 12) return fail(VMDK_E_ST_GRAIN_SIZE, size, pos);
            uint64_t item = sectors_for(12 + (uint64_t)size) * 512;
            if (pos + item > S.send) {
                if (final) return fail(VMDK_E_ST_TRUNCATED, pos, 0);
                break;
            }
            uint64_t lba = val;
            if (lba >= S.cap_sectors || lba % S.grain) return fail(VMDK_E_ST_LBA, lba, S.cap_sectors);
            uint64_t at = lba * 512;
            if (at < S.prev_end) return fail(VMDK_E_ST_ORDER, lba, S.prev_end / 512);
            if (at >= S.from + S.dwin) {
                /* this window's disk span is full: the next starts at this grain */
                frontier = at;
                stopped_at_grain = true;
                break;
            }
            if ((S.flags & VMDKS_TABLES) && check_table(lba, pos)) return -1;
            if (reader_read(&S.r, pos, S.cbuf, 12 + (uint64_t)size)) return fail(VMDK_E_IO, pos, 0);
            uint64_t need = cap_bytes - at < S.gbytes ? cap_bytes - at : S.gbytes, got = 0;
            if (vmdk_inflate(&S.v, S.cbuf + 12, size, S.gbuf, S.gbytes, &got) || got < need)
                return fail(VMDK_E_ST_INFLATE, pos, 0);
            if (!buf_is_zero(S.gbuf, need) && put(at, S.gbuf, need)) return -1;
            S.prev_end = at + S.gbytes;
            S.grains++;
            pos += item;
            continue;
        }
        /* a metadata marker: {sectors, 0, type, padding}, then that many sectors */
        uint32_t type = le32(m + 12);
        uint64_t want;
        switch (type) {
        case MARKER_EOS: want = 0; break;
        case MARKER_GT: want = sectors_for(S.gtes * 4); break;
        case MARKER_GD: want = sectors_for(S.l1_size * 4); break;
        case MARKER_FOOTER: want = 1; break;
        default: return fail(VMDK_E_ST_MARKER, type, pos);
        }
        if (val != want) return fail(VMDK_E_ST_MARKER, type, pos);
        uint64_t item = 512 + want * 512;
        if (pos + item > S.send) {
            if (final) return fail(VMDK_E_ST_TRUNCATED, pos, 0);
            break;
        }
        if (type == MARKER_FOOTER) {
            uint8_t f[512];
            if (reader_read(&S.r, pos + 512, f, sizeof f)) return fail(VMDK_E_IO, pos, 0);
            /* qemu reads the footer only when the header says GD_AT_END; it must say the same */
            if ((S.flags & VMDKS_GD_AT_END) && !footer_matches(f)) return fail(VMDK_E_ST_FOOTER, pos, 0);
            S.flags |= VMDKS_FOOTER;
        }
        pos += item;
        if (type == MARKER_EOS) {
            /* qemu finds a GD_AT_END stream's footer 1536 bytes before the end (the host checks the end) */
            if ((S.flags & VMDKS_GD_AT_END) && !(S.flags & VMDKS_FOOTER)) return fail(VMDK_E_ST_FOOTER, pos, 1);
            S.flags |= VMDKS_EOS;
            break;
        }
    }
    if (flush()) return -1;
    if (S.flags & VMDKS_EOS) {
        frontier = cap_bytes;
    } else if (!stopped_at_grain) {
        frontier = S.prev_end < cap_bytes ? S.prev_end : cap_bytes;
        if (frontier < S.from) frontier = S.from;
    }
    out.flags = S.flags;
    out.capacity = S.cap_sectors;
    out.grain = S.grain | S.gtes << 32;
    out.restart = pos;
    out.frontier = frontier;
    out.prev_end = S.prev_end;
    out.grains = S.grains;
    out.bytes_written = S.written;
    out.table_grains = S.table_grains;
    out.head = S.head_bytes;
    return rt_emit(&out, sizeof out);
}

#ifdef INSTAR_HOSTED
#include <zlib.h>
/* Hosted runs (the fuzz target) end zlib's inflate state, which zlib mallocs outside the guest heap. */
void vmdk_stream_release(void)
{
    if (S.v.z) inflateEnd(S.v.z);
    S.v.z = NULL;
}
#endif
