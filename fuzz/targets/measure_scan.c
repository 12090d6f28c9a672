/*
 * Fuzz target measure_scan: the allocation scan `measure` runs over an input
 * image (seed 001's fuzz_measure_scan, seed 000's invariant): for qcow2 the
 * guest's block-status walk over [0, virtual size) summed the way
 * qcow2_measure sums it (data runs rounded out to whole target clusters;
 * zero runs skipped); for vpc and vhdx the map guest's walk that measure
 * folds (guest/chain/ opened with CHAIN_F_MAP, map_chain_status over the
 * vpc/vhdx layer_ops; vhdx answers qemu_all_data there, as qemu 7.2's
 * driver has no block_status).
 *
 * Input: byte 0 = format selector (mod 5: 0 qcow2, 1 raw, 2 vpc, 3 vhdx,
 * 4 vmdk: a hosted sparse file, the map walk over vmdk_layer_ops)
 * and byte 1 = target cluster_bits selector (9 + b % 13); the rest is the
 * image: the file's bytes for qcow2, raw and vpc (vpc runs twice: as given
 * and with its footer checksums recomputed, as fuzz/targets/vpc.c), the
 * compact sparse-file description of fuzz/shim/vhdx_sparse.h for vhdx.
 * Raw input needs no scan (allocated = its length) and only checks probing.
 * Invariants (abort = finding), on every scan that completes:
 *   - allocated_bytes <= virtual_size (seed 000: entries past the virtual
 *     size never count);
 *   - the target-unit invariant: (clusters with data) * target cluster
 *     size <= virtual_size rounded up to the target cluster size;
 *   - every run lies inside [0, virtual_size), the runs tile it (each
 *     starts where the last ended) and the walk advances; vpc/vhdx runs
 *     come from the top layer with known MAP_* bits, PRESENT exactly when
 *     DATA or ZERO (there is no backing layer; an unallocated vmdk grain is
 *     exactly ZERO without PRESENT), and a vhdx layer is one
 *     DATA|PRESENT run without an offset.
 * The walk stops after 4096 runs (the rest takes the same paths).
 *
 * FUZZ_SOURCES: qcow2/map.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c chain/open.c chain/formats.c chain/map_status.c vpc/vpc.c vpc/layer.c vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c vhdx/layer.c vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c vmdk/layer.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "vpc_checksum.h"
#include "qcow2/qcow2.h"
#include "qcow2/map.h"
#include "probe/probe.h"
#include "chain/map_status.h"
#include "vhdx_sparse.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define MAX_RUNS 4096

/* Counts the target clusters [pos, end) touches that the last run did not. */
static uint64_t new_units(uint64_t pos, uint64_t end, uint64_t tcs, uint64_t *last_unit)
{
    uint64_t first = pos / tcs, last = (end - 1) / tcs, n = last - first + 1;
    if (first == *last_unit) n--;
    *last_unit = last;
    return n;
}

static void scan_qcow2(const uint8_t *img, size_t n, uint64_t tcs)
{
    static struct qcow2 q;
    static struct qcow2_mapper m;
    struct reader r;
    reader_from_mem(&r, img, n);
    fuzz_rt_begin(img, n, FMT_QCOW2);
    if (qcow2_open(&q, &r, QCOW2_OPEN_NO_IO) == 0 && qcow2_mapper_init(&m, &q) == 0) {
        uint64_t pos = 0, allocated = 0, units = 0, last_unit = UINT64_MAX;
        for (unsigned i = 0; i < MAX_RUNS && pos < q.size; i++) {
            uint64_t len = 0, host = 0;
            int st = qcow2_block_status(&m, pos, q.size - pos, &len, &host);
            if (st < 0) break;
            CHECK(len > 0 && len <= q.size - pos, pos, len);
            if ((st & QST_DATA) && !(st & QST_ZERO)) {
                allocated += len;
                /* qcow2_measure: extend to the end of the target cluster. */
                uint64_t end = pos + len, rounded = (end + tcs - 1) & ~(tcs - 1);
                units += new_units(pos, end, tcs, &last_unit);
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
}

/* The map guest's walk (guest/ops/map.c without the merging) over the chain
 * fuzz_rt_begin* attached as input 0, folded as lib/cli/measure.ts folds
 * MAP_EXTENT records: data runs that are not zero count. */
static void scan_chain(uint64_t tcs, bool unallocated)
{
    static struct chain c;
    if (chain_open_range(&c, 0, 1, 0, CHAIN_F_MAP) != 0) return;
    const struct layer *l = &c.layers[0].l;
    uint64_t size = c.size, pos = 0, allocated = 0, units = 0, last_unit = UINT64_MAX;
    CHECK(c.n == 1 && size == l->length, c.n, size);
    for (unsigned i = 0; i < MAX_RUNS && pos < size; i++) {
        struct map_entry e;
        if (map_chain_status(&c, pos, size - pos, &e)) break;
        CHECK(e.start == pos && e.length > 0 && e.length <= size - pos, pos, e.length);
        CHECK(e.depth == 0, e.depth, pos);
        CHECK((e.flags & ~(uint32_t)(MAP_DATA | MAP_ZERO | MAP_PRESENT | MAP_OFFSET_VALID | MAP_COMPRESSED)) == 0,
              e.flags, pos);
        /* vpc/vhdx answer every run (PRESENT exactly with DATA or ZERO); a vmdk
         * grain can be unallocated: no backing layer, so it reads as zero */
        if (unallocated && !(e.flags & MAP_PRESENT)) CHECK(e.flags == MAP_ZERO, e.flags, pos);
        else CHECK(!(e.flags & MAP_PRESENT) == !(e.flags & (MAP_DATA | MAP_ZERO)), e.flags, pos);
        if (l->qemu_all_data) CHECK(e.flags == (MAP_DATA | MAP_PRESENT) && e.length == size - pos, e.flags, e.length);
        if ((e.flags & MAP_DATA) && !(e.flags & MAP_ZERO)) {
            allocated += e.length;
            units += new_units(pos, pos + e.length, tcs, &last_unit);
        }
        pos += e.length;
    }
    if (pos >= size) {
        /* size <= READER_MAX_END: no overflow */
        uint64_t cap = (size + tcs - 1) & ~(tcs - 1);
        CHECK(allocated <= size, allocated, size);
        CHECK(units <= cap / tcs, units, cap);
    }
}

static void scan_vpc(const uint8_t *img, size_t n, uint64_t tcs)
{
    fuzz_rt_begin(img, n, FMT_VPC);
    scan_chain(tcs, false);
    fuzz_rt_end();
    if (n < 512) return;
    uint8_t *copy = malloc(n);
    if (!copy) return;
    memcpy(copy, img, n);
    fix_vpc_checksum(copy, n, 0);
    fix_vpc_checksum(copy, n, ((n + 511) & ~(size_t)511) - 512);
    fuzz_rt_begin(copy, n, FMT_VPC);
    scan_chain(tcs, false);
    fuzz_rt_end();
    free(copy);
}

static void scan_vmdk(const uint8_t *img, size_t n, uint64_t tcs)
{
    fuzz_rt_begin(img, n, FMT_VMDK);
    scan_chain(tcs, true);
    fuzz_rt_end();
}

static void scan_vhdx(const uint8_t *img, size_t n, uint64_t tcs)
{
    static struct vhdx_sparse f;
    static struct reader r;
    vhdx_sparse_expand(img, n, &f, &r);
    fuzz_rt_begin_reader(&r, FMT_VHDX);
    scan_chain(tcs, false);
    fuzz_rt_end();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    uint32_t fmt = data[0] % 5, tbits = 9 + data[1] % 13;
    uint64_t tcs = 1ull << tbits;
    const uint8_t *img = data + 2;
    size_t n = size - 2;
    switch (fmt) {
    case 0: scan_qcow2(img, n, tcs); break;
    case 1: {
        struct reader r;
        reader_from_mem(&r, img, n);
        fuzz_rt_begin(img, n, FMT_RAW);
        CHECK(probe_input(&r, FMT_RAW) == FMT_RAW, n, 0);
        fuzz_rt_end();
        break;
    }
    case 2: scan_vpc(img, n, tcs); break;
    case 3: scan_vhdx(img, n, tcs); break;
    case 4: scan_vmdk(img, n, tcs); break;
    }
    return 0;
}
