/*
 * Fuzz target measure_scan: the allocation scan `measure` runs over an input
 * image (seed 001's fuzz_measure_scan, seed 000's invariant): the guest's
 * qcow2 block-status walk over [0, virtual size), summed the way
 * qcow2_measure sums it (data runs rounded out to whole target clusters;
 * zero runs skipped).
 *
 * Input: byte 0 = format selector (mod 2: 0 qcow2, 1 raw) and byte 1 =
 * target cluster_bits selector (9 + b % 13); the rest is the image.
 * Raw input needs no scan (allocated = its length) and only checks probing.
 * Invariants (abort = finding), on every scan that completes:
 *   - allocated_bytes <= virtual_size (seed 000: entries past the virtual
 *     size never count);
 *   - the target-unit invariant: (clusters with data) * target cluster
 *     size <= virtual_size rounded up to the target cluster size;
 *   - every run lies inside [0, virtual_size) and the walk advances.
 * The walk stops after 4096 runs (the rest takes the same paths).
 *
 * FUZZ_SOURCES: qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c
 */
#include <string.h>
#include "fuzz_rt.h"
#include "qcow2/qcow2.h"
#include "qcow2/map.h"
#include "probe/probe.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define MAX_RUNS 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    uint32_t fmt = data[0] % 2, tbits = 9 + data[1] % 13;
    const uint8_t *img = data + 2;
    size_t n = size - 2;
    static struct qcow2 q;
    static struct qcow2_mapper m;
    struct reader r;
    reader_from_mem(&r, img, n);
    fuzz_rt_begin(img, n, fmt ? FMT_RAW : FMT_QCOW2);
    if (fmt == 1) {
        CHECK(probe_input(&r, FMT_RAW) == FMT_RAW, n, 0);
    } else if (qcow2_open(&q, &r, QCOW2_OPEN_NO_IO) == 0 && qcow2_mapper_init(&m, &q) == 0) {
        uint64_t tcs = 1ull << tbits, pos = 0, allocated = 0, units = 0, last_unit = UINT64_MAX;
        unsigned i = 0;
        for (; i < MAX_RUNS && pos < q.size; i++) {
            uint64_t len = 0, host = 0;
            int st = qcow2_block_status(&m, pos, q.size - pos, &len, &host);
            if (st < 0) break;
            CHECK(len > 0 && len <= q.size - pos, pos, len);
            if ((st & QST_DATA) && !(st & QST_ZERO)) {
                allocated += len;
                /* qcow2_measure: extend to the end of the target cluster. */
                uint64_t end = pos + len, rounded = (end + tcs - 1) & ~(tcs - 1);
                for (uint64_t u = pos / tcs; u <= (end - 1) / tcs; u++) {
                    if (u != last_unit) units++;
                    last_unit = u;
                    if (units > 1u << 20) break; /* bounded work; the check below still holds */
                }
                pos = rounded < q.size ? rounded : q.size;
            } else {
                pos += len;
            }
        }
        if (pos >= q.size) {
            uint64_t cap = (q.size + tcs - 1) & ~(tcs - 1);
            CHECK(allocated <= q.size, allocated, q.size);
            CHECK(units <= cap / tcs, units, cap);
        }
    }
    fuzz_rt_end();
    return 0;
}
