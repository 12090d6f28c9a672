/*
 * Fuzz target vhdx: vhdx_open (normal and check mode), vhdx_check, the
 * IMAGE_INFO record, and a bounded block_status walk through vhdx_layer_ops.
 *
 * The input is the compact sparse-file description of fuzz/shim/vhdx_sparse.h
 * (VHDX metadata spreads over megabytes; seeds from fuzz/vhdx_seed.ts).
 *
 * Invariants (abort = finding), after a successful open:
 *   - 1 MiB <= block_size <= 256 MiB, a power of two; chunk_ratio ==
 *     2^23 * 512 / block_size; bat_entries <= bat_length / 8;
 *   - length == total_sectors * 512;
 *   - block_status: 0 < len <= bytes, status LS_ZERO or LS_DATA|LS_OFFSET_VALID,
 *     host + len without overflow and <= READER_MAX_END (readable; past EOF
 *     reads zero-fill as in qemu), a block inside the checked BAT starts
 *     inside the file; positions strictly increase (at most 256 calls).
 *
 * FUZZ_SOURCES: vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c vhdx/layer.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "vhdx/vhdx.h"
#include "bytes.h"
#include "vhdx_sparse.h"

#define CHECK(cond) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, 0, 0); } while (0)


static void walk(struct layer *l)
{
    struct vhdx *v = l->state;
    CHECK(v->block_size >= (1u << 20) && v->block_size <= (256u << 20));
    CHECK((v->block_size & (v->block_size - 1)) == 0);
    CHECK(v->chunk_ratio == (1ull << 32) / v->block_size);
    CHECK(v->bat_entries <= v->bat_length / 8);
    CHECK(l->length == v->total_sectors * 512);
    CHECK(l->qemu_all_data);
    uint64_t pos = 0;
    for (int calls = 0; calls < 256 && pos < l->length; calls++) {
        uint64_t bytes = l->length - pos, len = 0, host = 0;
        if (calls & 1) bytes = bytes > 300000 ? 300000 : bytes;
        int st = l->ops->block_status(l, pos, bytes, &len, &host);
        if (st < 0) return;
        CHECK(len > 0 && len <= bytes);
        CHECK(st == (int)LS_ZERO || st == (int)(LS_DATA | LS_OFFSET_VALID));
        if (st & LS_OFFSET_VALID) {
            CHECK(host <= READER_MAX_END && len <= READER_MAX_END - host);
            uint32_t idx = (uint32_t)((pos >> 9) >> v->sectors_per_block_bits);
            idx += idx >> v->chunk_ratio_bits;
            uint64_t fsize = v->r->size + ((512 - (v->r->size & 511)) & 511);
            uint64_t start = host ? host - (pos & (v->block_size - 1)) : 0;
            if (idx < v->bat_entries) CHECK(start < fsize);
        }
        CHECK(pos + len > pos);
        pos += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct vhdx_sparse f;
    struct reader r;
    vhdx_sparse_expand(data, size, &f, &r);

    static struct vhdx v;
    for (int mode = 0; mode < 2; mode++) {
        fuzz_rt_begin(data, size, FMT_VHDX);
        if (vhdx_open(&v, &r, mode ? VHDX_OPEN_CHECK : 0) == 0) {
            vhdx_emit_info(&v);
            if (mode) {
                uint64_t errs = 0;
                vhdx_check_bat(&v, &errs);
            }
        }
        fuzz_rt_end();
    }
    fuzz_rt_begin(data, size, FMT_VHDX);
    static struct layer l;
    memset(&l, 0, sizeof l);
    l.r = r;
    l.ops = &vhdx_layer_ops;
    if (l.ops->open(&l) == 0) walk(&l);
    fuzz_rt_end();
    return 0;
}
