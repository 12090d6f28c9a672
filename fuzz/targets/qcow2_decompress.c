/*
 * Fuzz target qcow2_decompress: decoding of one compressed cluster
 * (qcow2_decompress, zlib raw deflate or zstd) and the compressed
 * descriptor arithmetic (qcow2_compressed_range).
 *
 * Input: byte 0 bit 0 = compression type (0 zlib, 1 zstd); byte 1 picks
 * cluster_bits 9 + (b % 13); bytes 2..9 a big-endian L2 descriptor; the
 * rest is the compressed stream. The stream is decoded twice with the same
 * decompressor, as the read path reuses it across clusters.
 * Invariants (abort = finding):
 *   - both decodes agree (success and output bytes): the reuse/reset path
 *     leaves no state behind;
 *   - qcow2_compressed_range gives 0 < len <= (csize_mask + 1) * 512 and
 *     off + len does not overflow;
 *   - the decoder never writes past the cluster (ASan: the output buffer
 *     is an exact-size allocation).
 *
 * FUZZ_SOURCES: qcow2/compress.c qcow2/header.c qcow2/tables.c
 * FUZZ_LIBS: z zstd
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include "fuzz_rt.h"
#include "bytes.h"
#include "qcow2/qcow2.h"
#include "qcow2/compress.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

/* The real qcow2_compressed_range over the descriptor fields as
 * qcow2_open derives them from cluster_bits (qcow2 spec: the compressed
 * size field takes cluster_bits - 8 bits below bit 62). */
static void range_check(uint32_t cluster_bits, uint64_t l2e)
{
    static struct qcow2 q;
    memset(&q, 0, sizeof q);
    q.cluster_bits = cluster_bits;
    q.cluster_size = 1ull << cluster_bits;
    q.csize_shift = 62 - (cluster_bits - 8);
    q.csize_mask = (1ull << (cluster_bits - 8)) - 1;
    q.cluster_offset_mask = (1ull << q.csize_shift) - 1;
    uint64_t off, len, end;
    qcow2_compressed_range(&q, l2e, &off, &len);
    CHECK(len > 0 && len <= (q.csize_mask + 1) * 512, l2e, len);
    CHECK(!__builtin_add_overflow(off, len, &end), off, len);
}

static void release(struct qcow2_decompressor *d)
{
    if (!d->state) return;
    if (d->type == 0) inflateEnd(d->state);
    else ZSTD_freeDCtx(d->state);
    d->state = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 10) return 0;
    uint32_t type = data[0] & 1, cluster_bits = 9 + data[1] % 13;
    uint64_t cluster = 1ull << cluster_bits;
    range_check(cluster_bits, be64(data + 2));
    const uint8_t *src = data + 10;
    uint64_t src_len = size - 10;
    fuzz_rt_begin(data, size, FMT_QCOW2);
    struct qcow2_decompressor d = {.type = type, .state = NULL};
    uint8_t *a = malloc(cluster), *b = malloc(cluster);
    if (a && b) {
        int ra = qcow2_decompress(&d, a, cluster, src, src_len);
        int rb = qcow2_decompress(&d, b, cluster, src, src_len);
        CHECK(ra == rb, (uint64_t)ra, (uint64_t)rb);
        if (ra == 0) CHECK(memcmp(a, b, cluster) == 0, cluster, 0);
    }
    free(a);
    free(b);
    release(&d);
    fuzz_rt_end();
    return 0;
}
