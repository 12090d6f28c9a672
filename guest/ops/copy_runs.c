/*
 * copy_runs: the data mover of the in-place writers (commit, safe rebase).
 * Inputs [0, n-1) are a chain, top first (guest/chain/); input n-1 is the
 * host's move list: arg[0] entries of three u64 LE {from, to, at}, each
 * moving the chain's guest bytes [from, to) to output offset `at`. Entries
 * must be non-empty, inside the disk, ascending and disjoint in `from`;
 * every write is bounded by the output cap (the VMM ends the run past it).
 * arg[1] is the sum of the lengths (for progress). Each chunk of a move is
 * read whole (the chain's batched reads: one READV) before it is written,
 * so a move may rewrite in place the clusters it reads (commit writes a base
 * cluster with the base's own bytes around the overlay's). Nothing is
 * reported but an ERROR on failure: the host planned where everything goes.
 * arg[2] (min_sparse, 0 = off): blocks of that many bytes, aligned in guest
 * offsets, that read as zeroes are not written (convert into a new,
 * preallocated qcow2: qemu skips its zero writes there, has_zero_init).
 */
#include "../chain/chain.h"
#include "records.h"
#include "zero.h"

#define CHUNK (8ull << 20)
#define BATCH 2048u /* list entries read per hc_read */

static struct chain chain;
static uint64_t list[3 * BATCH];

/* Sparse mode: the data runs of the chunk being moved {guest offset, length};
 * what block status calls zero is never written (qemu skips it too). */
#define MAX_RUNS 512u
static uint64_t runs[2 * MAX_RUNS];

/* Writes the non-zero `sparse`-byte blocks (aligned in guest offsets) of
 * the first nr runs; buf holds guest bytes from `off`, which go to `at` + (x - from). */
static int sparse_runs(uint32_t nr, uint64_t off, uint64_t from, uint64_t at, const uint8_t *buf, uint64_t sparse)
{
    for (uint32_t r = 0; r < nr; r++) {
        uint64_t x0 = runs[2 * r], end = x0 + runs[2 * r + 1];
        uint64_t run = x0; /* start of the pending non-zero run */
        for (uint64_t x = x0; x <= end;) {
            uint64_t k = x < end ? sparse - (x % sparse) : 0;
            if (k > end - x) k = end - x;
            if (x < end && !buf_is_zero(buf + (x - off), k)) {
                x += k;
                continue;
            }
            if (x > run && hc_write(at + (run - from), x - run, buf + (run - off)) != (int64_t)(x - run))
                return rt_error(0, GERR_IO, 1, run, 0);
            if (x == end) break;
            x += k;
            run = x;
        }
    }
    return 0;
}

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs < 2) return rt_error(0, GERR_BAD_PARAMS, 10, p->n_inputs, 0);
    uint32_t li = p->n_inputs - 1;
    uint64_t count = p->arg[0], total = p->arg[1], sparse = p->arg[2], bytes;
    if (sparse % 512 || sparse > (16ull << 20)) return rt_error(0, GERR_BAD_PARAMS, 13, sparse, 0);
    if (__builtin_mul_overflow(count, 24ull, &bytes) || bytes > p->input_size[li])
        return rt_error(li, GERR_BAD_PARAMS, 11, count, p->input_size[li]);
    chain.batch = chain.defer = true;
    if (chain_open_range(&chain, 0, li, 0, 0)) return -1;
    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    uint64_t done = 0, prev_end = 0;
    for (uint64_t i = 0; i < count; i += BATCH) {
        uint64_t n = count - i < BATCH ? count - i : BATCH;
        if (hc_read(li, i * 24, n * 24, list) != (int64_t)(n * 24)) return rt_error(li, GERR_IO, 0, i, 0);
        for (uint64_t e = 0; e < n; e++) {
            uint64_t from = list[3 * e], to = list[3 * e + 1], at = list[3 * e + 2], end_at;
            if (from >= to || to > chain.size || from < prev_end || __builtin_add_overflow(at, to - from, &end_at))
                return rt_error(li, GERR_BAD_PARAMS, 12, i + e, from);
            prev_end = to;
            for (uint64_t off = from; off < to;) {
                uint64_t len = to - off < CHUNK ? to - off : CHUNK;
                uint32_t nr = 0;
                for (uint64_t x = off; x < off + len;) {
                    uint64_t k = 0;
                    int st = chain_status(&chain, x, off + len - x, &k);
                    if (st < 0) return -1;
                    if ((st & CS_DATA) && !(st & CS_ZERO)) {
                        if (sparse && nr == MAX_RUNS) {
                            /* Full: write the runs read so far. */
                            if (chain_flush(&chain) || sparse_runs(nr, off, from, at, buf, sparse)) return -1;
                            nr = 0;
                        }
                        if (chain_read(&chain, x, k, buf + (x - off))) return -1;
                        if (sparse) {
                            runs[2 * nr] = x;
                            runs[2 * nr + 1] = k;
                            nr++;
                        }
                    } else {
                        memset(buf + (x - off), 0, k);
                    }
                    x += k;
                }
                if (chain_flush(&chain)) return -1;
                if (!sparse) {
                    if (hc_write(at + (off - from), len, buf) != (int64_t)len) return rt_error(0, GERR_IO, 1, off, 0);
                } else if (sparse_runs(nr, off, from, at, buf, sparse)) {
                    return -1;
                }
                off += len;
                done += len;
                hc_progress(done, total);
            }
        }
    }
    return 0;
}
