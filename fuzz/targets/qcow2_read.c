/*
 * Fuzz target qcow2_read: the read path `convert` and `compare` use
 * (guest/chain/ over qcow2's and raw's layer_ops): opening the input as a
 * one-layer chain (probe, header, mapper), chain block status, and reads
 * that resolve normal, zero, unallocated and subclusters and decompress
 * compressed clusters (zlib, zstd, guest/qcow2/compressed.c) through the
 * cluster cache.
 *
 * Input: the image file's bytes (format probed, as without -f).
 * The walk covers at most the first 4 MiB of the disk in at most 256 status
 * calls, reading data runs in pieces of at most 64 KiB.
 * Invariants (abort = finding):
 *   - chain_status returns -1 or only known CS_* bits, and then a run
 *     0 < n <= asked;
 *   - chain_read returns 0 or -1 (never partial success), and a run without
 *     CS_DATA "reads as zeroes": reading it gives only zero bytes;
 *   - no read outside the input, well-formed records, ASan/UBSan clean.
 *
 * FUZZ_SOURCES: chain/open.c chain/formats.c chain/read.c chain/status.c chain/extents.c qcow2/compressed.c qcow2/compress.c qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c raw/layer.c probe/probe.c raw/partition.c
 * FUZZ_LIBS: z zstd
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include "fuzz_rt.h"
#include "chain/chain.h"
#include "qcow2/layer.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define WALK_MAX (4ull << 20)
#define PIECE (64u << 10)
#define CS_KNOWN (CS_DATA | CS_ZERO | CS_ALLOCATED | CS_OFFSET_VALID | CS_EOF)

static void release(struct chain *c)
{
    for (uint32_t i = 0; i < c->n; i++) {
        const struct layer *l = &c->layers[i].l;
        if (l->fmt != FMT_QCOW2 || !l->state) continue;
        struct qcow2_decompressor *d = &((struct qcow2_layer *)l->state)->dec;
        if (!d->state) continue;
        if (d->type == 0) inflateEnd(d->state);
        else ZSTD_freeDCtx(d->state);
        d->state = NULL;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct chain c;
    static uint8_t buf[PIECE];
    memset(&c, 0, sizeof c);
    fuzz_rt_begin(data, size, FMT_AUTO);
    if (chain_open(&c, 0) == 0) {
        uint64_t end = c.size < WALK_MAX ? c.size : WALK_MAX, pos = 0;
        for (unsigned i = 0; i < 256 && pos < end; i++) {
            uint64_t n = 0, want = end - pos;
            int st = chain_status(&c, pos, want, &n);
            CHECK(st == -1 || (st >= 0 && (st & ~(int)CS_KNOWN) == 0), pos, (uint64_t)st);
            if (st < 0) break;
            CHECK(n > 0 && n <= want, pos, n);
            uint64_t piece = n < PIECE ? n : PIECE;
            int rr = chain_read(&c, pos, piece, buf);
            CHECK(rr == 0 || rr == -1, pos, (uint64_t)rr);
            if (rr == 0 && !(st & CS_DATA)) {
                for (uint64_t k = 0; k < piece; k++) CHECK(buf[k] == 0, pos + k, buf[k]);
            }
            if (rr < 0) break;
            pos += n;
        }
    }
    release(&c);
    fuzz_rt_end();
    return 0;
}
