/*
 * rebase_diff: the clusters `qemu-img rebase` (safe mode) copies into the
 * overlay. img_rebase walks the overlay: clusters allocated in the overlay
 * are skipped; elsewhere the old and the new backing file are read (each
 * reading as zeroes past its own end, a missing one as zeroes everywhere)
 * and where they differ the overlay gets the old contents: a write that
 * qcow2's copy-on-write rounds out to the whole cluster, so the unit here
 * is the overlay's cluster.
 *
 *   input 0            the overlay (opened alone: only its own allocation)
 *   inputs [1, arg[0]) the old backing chain (none when arg[0] == 1)
 *   inputs [arg[0], n) the new backing chain (none when arg[0] == n)
 *   arg[1]             the overlay's cluster_bits (9..21)
 *   arg[4], arg[5]     the disk bytes [from, to) compared (to == 0: up to
 *                      the disk's end); from a multiple of the cluster size.
 *                      The host runs two guests on two halves at once.
 *
 * Output: DIFF_RUN records of differing clusters, ascending and disjoint;
 * DIFF_F_OLD_ZERO marks runs wholly past the old backing file's end, where
 * qemu writes zeroes (a zero cluster) rather than copying. The data itself
 * is never reported: the host plans where it goes and copy_runs copies it.
 *
 * arg[2] == 1: classify instead (convert -n into an existing qcow2). Inputs
 * [0, n) are the source chain; every cluster (2^arg[1] bytes) of its disk
 * is reported, DIFF_F_ZERO where it reads as zeroes: by block status alone
 * with -S 0 (arg[3] == 0), else also where its stored bytes are all zero
 * (qemu-img convert's is_allocated_sectors_min over a whole cluster).
 */
#include "../chain/chain.h"
#include "records.h"

#define CHUNK (4ull << 20)

static struct chain ov, chains[2];

static struct rec_diff_run pending;
static bool have_pending;

static int flush_pending(void)
{
    if (!have_pending) return 0;
    have_pending = false;
    return rt_emit(&pending, sizeof pending);
}

static int note(uint64_t cluster, uint32_t flags)
{
    if (have_pending && pending.cluster + pending.count == cluster && pending.flags == flags) {
        pending.count++;
        return 0;
    }
    if (flush_pending()) return -1;
    rec_init(&pending, REC_DIFF_RUN, sizeof pending);
    pending.cluster = cluster;
    pending.count = 1;
    pending.flags = flags;
    have_pending = true;
    return 0;
}

/* Reads [off, off+len) of chain s into buf: zeroes past its end or with no chain. */
static int read_side(int s, bool present, uint64_t off, uint64_t len, uint8_t *buf)
{
    memset(buf, 0, len);
    if (!present) return 0;
    struct chain *c = &chains[s];
    if (off >= c->size) return 0;
    uint64_t n = c->size - off < len ? c->size - off : len;
    for (uint64_t at = off; at < off + n;) {
        uint64_t k = 0;
        int st = chain_status(c, at, off + n - at, &k);
        if (st < 0) return -1;
        if ((st & CS_DATA) && !(st & CS_ZERO)) {
            if (chain_read(c, at, k, buf + (at - off))) return -1;
        }
        at += k;
    }
    return chain_flush(c);
}

static bool all_zero(const uint8_t *b, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (b[i]) return false;
    return true;
}

static int classify(uint64_t cbits, bool by_content)
{
    struct chain *c = &chains[0];
    c->batch = c->defer = true;
    if (chain_open(c, 0)) return -1;
    uint64_t cs = 1ull << cbits, size = c->size;
    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    for (uint64_t off = 0; off < size;) {
        uint64_t n = size - off < CHUNK ? size - off : CHUNK;
        /* Per cluster of this chunk: does any part need its bytes read? */
        bool any_data = false;
        static uint8_t has_data[CHUNK >> 9];
        uint64_t nc = (n + cs - 1) >> cbits;
        memset(has_data, 0, nc);
        for (uint64_t at = off; at < off + n;) {
            uint64_t k = 0;
            int st = chain_status(c, at, off + n - at, &k);
            if (st < 0) return -1;
            if ((st & CS_DATA) && !(st & CS_ZERO)) {
                for (uint64_t x = (at - off) >> cbits; x <= (at + k - 1 - off) >> cbits; x++) has_data[x] = 1;
                if (by_content) {
                    if (chain_read(c, at, k, buf + (at - off))) return -1;
                    any_data = true;
                }
            } else if (by_content) {
                memset(buf + (at - off), 0, k);
            }
            at += k;
        }
        if (any_data && chain_flush(c)) return -1;
        for (uint64_t x = 0; x < nc; x++) {
            uint64_t len = n - (x << cbits) < cs ? n - (x << cbits) : cs;
            bool zero = !has_data[x] || (by_content && all_zero(buf + (x << cbits), len));
            if (note((off >> cbits) + x, zero ? DIFF_F_ZERO : 0)) return -1;
        }
        off += n;
        hc_progress(off, size);
    }
    return flush_pending();
}

int op_main(void)
{
    const struct params *p = rt_params();
    uint64_t na = p->arg[0], cbits = p->arg[1];
    if (p->arg[2] == 1) {
        if (cbits < 9 || cbits > 21) return rt_error(0, GERR_BAD_PARAMS, 9, na, cbits);
        return classify(cbits, p->arg[3] != 0);
    }
    if (na < 1 || na > p->n_inputs || cbits < 9 || cbits > 21) return rt_error(0, GERR_BAD_PARAMS, 9, na, cbits);
    uint64_t cs = 1ull << cbits;
    bool has_old = na > 1, has_new = na < p->n_inputs;
    if (chain_open_range(&ov, 0, 1, 0, 0)) return -1;
    for (int s = 0; s < 2; s++) chains[s].batch = chains[s].defer = true;
    if (has_old && chain_open_range(&chains[0], 1, (uint32_t)na - 1, 0, 0)) return -1;
    if (has_new && chain_open_range(&chains[1], (uint32_t)na, p->n_inputs - (uint32_t)na, 0, 0)) return -1;
    uint64_t old_size = has_old ? chains[0].size : 0;
    uint8_t *buf[2] = {rt_alloc(CHUNK), rt_alloc(CHUNK)};
    if (!buf[0] || !buf[1]) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    uint64_t size = ov.size, from = p->arg[4];
    if (p->arg[5] != 0 && p->arg[5] < size) size = p->arg[5];
    if (from > size || (from & (cs - 1))) return rt_error(0, GERR_BAD_PARAMS, 14, from, size);
    for (uint64_t off = from; off < size;) {
        uint64_t k = 0;
        int st = chain_status(&ov, off, size - off, &k);
        if (st < 0) return -1;
        /* Allocated in the overlay (data or zero clusters): nothing to do. */
        uint64_t end = off + k;
        if (st & CS_ALLOCATED) {
            off = end;
            continue;
        }
        /* The run is unallocated; compare it cluster-aligned (the overlay's
         * allocation unit is the cluster, so runs start and end on one
         * except at the disk's end). */
        for (uint64_t at = off; at < end;) {
            uint64_t n = end - at < CHUNK ? end - at : CHUNK;
            if (read_side(0, has_old, at, n, buf[0]) || read_side(1, has_new, at, n, buf[1])) return -1;
            for (uint64_t c = 0; c < n; c += cs) {
                uint64_t len = n - c < cs ? n - c : cs;
                if (memcmp(buf[0] + c, buf[1] + c, len) == 0) continue;
                uint32_t flags = at + c >= old_size ? DIFF_F_OLD_ZERO : 0;
                if (note((at + c) >> cbits, flags)) return -1;
            }
            at += n;
            hc_progress(at, size);
        }
        off = end;
    }
    return flush_pending();
}
