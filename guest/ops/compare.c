/*
 * compare: `qemu-img compare` of two chains. Inputs [0, arg[0]) are the
 * first image and its backing chain, inputs [arg[0], n) the second.
 * arg[1] bit 0: strict (-s). arg[2], arg[3]: the byte range to walk (end 0 =
 * to the end), so two guests can each take half; the host keeps the first
 * range's outcome unless it is "identical".
 *
 * qemu's img_compare walks both images by block status and reports the
 * first 512-byte sector whose contents differ, treating anything past the
 * shorter image's end as zeroes. Unallocated, zero-flagged and hole ranges
 * read as zeroes, so comparing stored bytes where either side has data and
 * skipping ranges where both read as zeroes gives the same first sector. The
 * outcome goes to the host as one COMPARE record (lib/cli/compare.ts prints
 * qemu's words for it).
 */
#include "../chain/chain.h"
#include "records.h"

#define CHUNK (8ull << 20) /* 8 MiB per READV/WRITEV pair: few exits per GiB */
#define SECTOR 512ull

static struct chain chains[2];
static struct run {
    uint64_t start, end;
    int bits;
} run[2];

static int finish(uint32_t result, uint32_t image, uint64_t offset, bool size_differs)
{
    struct rec_compare r;
    rec_init(&r, REC_COMPARE, sizeof r);
    r.result = result;
    r.image = image;
    r.offset = offset;
    r.size_differs = size_differs;
    return rt_emit(&r, sizeof r);
}

/* First differing byte of a and b (n bytes), or n. Words first. */
static uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        __builtin_memcpy(&x, a + i, 8);
        __builtin_memcpy(&y, b + i, 8);
        if (x != y) break;
    }
    for (; i < n; i++)
        if (a[i] != b[i]) return i;
    return n;
}

int op_main(void)
{
    const struct params *p = rt_params();
    uint64_t na = p->arg[0];
    bool strict = p->arg[1] & 1;
    if (na < 1 || na >= p->n_inputs) return rt_error(0, GERR_BAD_PARAMS, 7, na, 0);
    for (int s = 0; s < 2; s++) chains[s].batch = chains[s].defer = true;
    /* An open failure is reported through the ERROR record alone: the host
     * opened both images first and only reaches here for the data path. */
    if (chain_open_range(&chains[0], 0, (uint32_t)na, 0, 0)) return -1;
    if (chain_open_range(&chains[1], (uint32_t)na, p->n_inputs - (uint32_t)na, 0, 0)) return -1;
    uint64_t size[2] = {chains[0].size, chains[1].size};
    uint64_t base = size[0] > size[1] ? size[0] : size[1];
    bool differs = size[0] != size[1];
    if (strict && differs) return finish(CMP_SIZE_MISMATCH_STRICT, 0, 0, true);

    uint8_t *buf[2] = {rt_alloc(CHUNK), rt_alloc(CHUNK)};
    if (!buf[0] || !buf[1]) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    uint64_t from = p->arg[2], to = p->arg[3] ? p->arg[3] : base;
    if (from > to || to > base) return rt_error(0, GERR_BAD_PARAMS, 8, from, to);

    for (uint64_t off = from; off < to;) {
        /* Where both sides read as zeroes (and -s sees the same status),
         * skip to the nearer run end at once: work follows the data. */
        {
            int bits[2];
            uint64_t end[2];
            for (int s = 0; s < 2; s++) {
                if (off >= size[s]) {
                    bits[s] = -2;
                    end[s] = to;
                    continue;
                }
                if (off < run[s].start || off >= run[s].end) {
                    uint64_t len = 0;
                    int st = chain_status(&chains[s], off, size[s] - off, &len);
                    if (st < 0) return finish(CMP_STATUS_FAILED, (uint32_t)s, off, differs);
                    run[s] = (struct run){.start = off, .end = off + len, .bits = st};
                }
                bits[s] = run[s].bits;
                end[s] = run[s].end;
            }
            /* CS_ZERO reads as zeroes even with CS_DATA (a recursed hole of a
             * flat vmdk extent or a fixed VHD): img_compare skips those too */
            bool zero = (bits[0] == -2 || !(bits[0] & CS_DATA) || (bits[0] & CS_ZERO)) &&
                        (bits[1] == -2 || !(bits[1] & CS_DATA) || (bits[1] & CS_ZERO));
            bool same = !strict || bits[0] == bits[1] || bits[0] == -2 || bits[1] == -2;
            uint64_t stop = end[0] < end[1] ? end[0] : end[1];
            if (stop > to) stop = to;
            if (zero && same && stop - off >= CHUNK) {
                off = stop;
                hc_progress(off - from, to - from);
                continue;
            }
        }
        uint64_t n = to - off < CHUNK ? to - off : CHUNK;
        bool data = false;
        uint64_t status_mismatch = UINT64_MAX;
        /* Walk both chains' status runs in step. Each side's run is asked
         * for up to its image's end, as img_compare asks, and kept while the
         * walk is inside it: qemu's EOF bit depends on the run's length. */
        for (uint64_t at = off; at < off + n;) {
            int cls[2];
            uint64_t k[2];
            for (int s = 0; s < 2; s++) {
                if (at >= size[s]) {
                    cls[s] = -2; /* past this image's end: reads as zeroes */
                    k[s] = off + n - at;
                    continue;
                }
                if (at < run[s].start || at >= run[s].end) {
                    uint64_t len = 0;
                    int st = chain_status(&chains[s], at, size[s] - at, &len);
                    if (st < 0) return finish(CMP_STATUS_FAILED, (uint32_t)s, at, differs);
                    run[s] = (struct run){.start = at, .end = at + len, .bits = st};
                }
                cls[s] = run[s].bits;
                k[s] = (run[s].end < off + n ? run[s].end : off + n) - at;
            }
            uint64_t step = k[0] < k[1] ? k[0] : k[1];
            /* -s compares the status words themselves (only inside both
             * images: past the shorter one's end qemu checks data only). */
            if (strict && cls[0] != cls[1] && cls[0] != -2 && cls[1] != -2 && status_mismatch == UINT64_MAX)
                status_mismatch = at;
            for (int s = 0; s < 2; s++) {
                uint8_t *dst = buf[s] + (at - off);
                if (cls[s] > 0 && (cls[s] & CS_DATA) && !(cls[s] & CS_ZERO)) {
                    if (chain_read(&chains[s], at, step, dst)) return finish(CMP_READ_FAILED, (uint32_t)s, at, differs);
                    data = true;
                } else {
                    memset(dst, 0, step);
                }
            }
            at += step;
        }
        for (int s = 0; s < 2; s++)
            if (chain_flush(&chains[s])) return finish(CMP_READ_FAILED, (uint32_t)s, off, differs);
        if (data) {
            uint64_t d = first_diff(buf[0], buf[1], n);
            if (d < n) {
                uint64_t where = (off + d) & ~(SECTOR - 1);
                if (status_mismatch <= where) return finish(CMP_STATUS_MISMATCH_STRICT, 0, status_mismatch, differs);
                return finish(CMP_MISMATCH, 0, where, differs);
            }
        }
        if (status_mismatch != UINT64_MAX) return finish(CMP_STATUS_MISMATCH_STRICT, 0, status_mismatch, differs);
        off += n;
        hc_progress(off - from, to - from);
    }
    return finish(CMP_IDENTICAL, 0, 0, differs);
}
