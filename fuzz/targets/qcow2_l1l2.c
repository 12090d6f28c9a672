/*
 * Fuzz target qcow2_l1l2: the qcow2 L1/L2 lookup behind `map` and the read
 * path (qcow2_block_status: L1 window, L2 cluster cache, standard and
 * extended L2 entries, subclusters, compressed descriptors), walked from
 * guest offset 0 towards the virtual size like `map` walks it.
 *
 * Input: the image file's bytes.
 * Invariants (abort = finding), for every run qcow2_block_status returns:
 *   - 0 < len <= the bytes asked for (no empty or overlong runs, so the
 *     walk always advances and never passes the virtual size);
 *   - only known status bits; COMPRESSED only with DATA and never with
 *     OFFSET_VALID (a compressed run has no plain host offset);
 *   - with OFFSET_VALID, host + len does not overflow and (no external data
 *     file) the run's host offset is cluster-aligned in-cluster-consistent:
 *     host % cluster_size == pos % cluster_size.
 * The walk stops after 4096 runs: images whose metadata is larger than
 * that take the same code paths on the first runs.
 *
 * FUZZ_SOURCES: qcow2/map.c qcow2/header.c qcow2/tables.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "qcow2/qcow2.h"
#include "qcow2/map.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define MAX_RUNS 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct qcow2 q;
    static struct qcow2_mapper m;
    struct reader r;
    reader_from_mem(&r, data, size);
    fuzz_rt_begin(data, size, FMT_QCOW2);
    if (qcow2_open(&q, &r, 0) == 0 && qcow2_mapper_init(&m, &q) == 0) {
        uint64_t pos = 0;
        for (unsigned i = 0; i < MAX_RUNS && pos < q.size; i++) {
            uint64_t len = 0, host = 0, want = q.size - pos;
            int st = qcow2_block_status(&m, pos, want, &len, &host);
            if (st < 0) break;
            CHECK(len > 0 && len <= want, pos, len);
            CHECK((st & ~(int)(QST_DATA | QST_ZERO | QST_OFFSET_VALID | QST_COMPRESSED)) == 0, pos, (uint64_t)st);
            if (st & QST_COMPRESSED) CHECK((st & QST_DATA) && !(st & QST_OFFSET_VALID), pos, (uint64_t)st);
            if (st & QST_OFFSET_VALID) {
                uint64_t end;
                CHECK(!__builtin_add_overflow(host, len, &end), host, len);
                if (!q.has_data_file) CHECK((host & (q.cluster_size - 1)) == (pos & (q.cluster_size - 1)), pos, host);
            }
            pos += len;
        }
    }
    fuzz_rt_end();
    return 0;
}
