/*
 * Fuzz target qcow2_header: the qcow2 header decoder and validator
 * (qcow2_open: header fields, extensions, backing name, snapshot table,
 * bitmap directory), then what `info` does with an opened image (info,
 * snapshot and bitmap records, the refcount table load).
 *
 * Input: the image file's bytes.
 * Invariants (abort = finding), on every successful open:
 *   - 9 <= cluster_bits <= 21 and cluster_size == 1 << cluster_bits;
 *   - l2_entries * l2_entry_bytes == cluster_size (entry size 8, or 16 with
 *     extended L2, which needs cluster_bits >= 14);
 *   - refcount_order <= 6 and refblock entries fill one cluster;
 *   - the L1 table covers the virtual size and ends before READER_MAX_END;
 *   - backing and data file names fit their record fields.
 * Besides these, ASan/UBSan reports and the fuzz runtime's checks (reads
 * outside the input, malformed records) are findings.
 *
 * FUZZ_SOURCES: qcow2/header.c qcow2/tables.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "qcow2/qcow2.h"

#define CHECK(cond) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, 0, 0); } while (0)

static void invariants(const struct qcow2 *q)
{
    CHECK(q->cluster_bits >= QCOW2_MIN_CLUSTER_BITS && q->cluster_bits <= QCOW2_MAX_CLUSTER_BITS);
    CHECK(q->cluster_size == 1ull << q->cluster_bits);
    CHECK(q->l2_entry_bytes == (q->extl2 ? 16u : 8u));
    CHECK(q->l2_entries * q->l2_entry_bytes == q->cluster_size);
    CHECK(!q->extl2 || q->cluster_bits >= 14);
    CHECK(q->refcount_order <= 6);
    CHECK(((1ull << q->refblock_bits) << q->refcount_order) == q->cluster_size * 8);
    uint32_t shift = q->cluster_bits + q->l2_bits;
    uint64_t covered = (uint64_t)q->l1_size << shift >> shift == q->l1_size ? (uint64_t)q->l1_size << shift : UINT64_MAX;
    CHECK(covered >= (q->size & ~511ull));
    CHECK(q->l1_size == 0 || q->l1_offset + (uint64_t)q->l1_size * 8 <= READER_MAX_END);
    CHECK(q->backing_len <= LIMIT_NAME_MAX && q->data_file_len <= LIMIT_NAME_MAX);
    CHECK(q->backing_format_len <= sizeof q->backing_format);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t modes[] = {0, QCOW2_OPEN_NO_IO, QCOW2_OPEN_CHECK};
    static struct qcow2 q;
    struct reader r;
    reader_from_mem(&r, data, size);
    for (unsigned i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        fuzz_rt_begin(data, size, FMT_QCOW2);
        if (qcow2_open(&q, &r, modes[i]) == 0) {
            invariants(&q);
            if (modes[i] == 0) {
                qcow2_emit_info(&q);
                qcow2_emit_snapshots(&q);
                qcow2_emit_bitmaps(&q);
            }
            qcow2_load_reftable(&q);
        }
        fuzz_rt_end();
    }
    return 0;
}
