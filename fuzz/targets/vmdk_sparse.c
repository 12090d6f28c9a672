/*
 * Fuzz target vmdk_sparse: a hosted sparse extent (VMDK4 "KDMV", VMDK3
 * "COWD"; guest/vmdk/vmdk.c): the header (or the footer when gd_offset is
 * GD_AT_END), the grain directory and grain tables through their windows,
 * zeroed-grain GTEs; info's records, qemu's check walk (on small disks) and
 * 64 block_status calls of vmdk_layer_ops (each merges up to 4096 grains).
 *
 * Input: the sparse file's bytes.
 * Invariants (abort = finding), after a successful open:
 *   - length == total_sectors * 512 <= INT64_MAX, one hosted extent;
 *   - block_status: 0 < len <= bytes, status 0, LS_ZERO,
 *     LS_DATA|LS_COMPRESSED or LS_DATA|LS_OFFSET_VALID, host + len without
 *     overflow, l->data the image; positions strictly increase.
 *
 * FUZZ_SOURCES: vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c vmdk/layer.c vmdk/check.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "vmdk/vmdk.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

/* grain.c is not linked here (its weak reference stays NULL): compressed
 * reads are vmdk_stream's. */
extern const struct layer_ops vmdk_layer_ops;

static void walk(struct layer *l)
{
    struct vmdk *v = l->state;
    CHECK(l->length == v->total_sectors * 512, l->length, v->total_sectors);
    CHECK(v->total_sectors <= ((1ull << 63) - 1) / 512, v->total_sectors, 0);
    uint64_t pos = 0;
    for (int calls = 0; calls < 64 && pos < l->length; calls++) {
        uint64_t bytes = l->length - pos, len = 0, host = 0;
        if (calls & 1) bytes = bytes > 300000 ? 300000 : bytes;
        int st = l->ops->block_status(l, pos, bytes, &len, &host);
        if (st < 0) return;
        CHECK(len > 0 && len <= bytes, len, bytes);
        CHECK(st == 0 || st == (int)LS_ZERO || st == (int)(LS_DATA | LS_COMPRESSED) ||
                  st == (int)(LS_DATA | LS_OFFSET_VALID),
              (uint64_t)st, pos);
        if (st & LS_OFFSET_VALID) CHECK(host + len > host, host, len);
        CHECK(l->data == &l->r, pos, 0);
        pos += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader r;
    reader_from_mem(&r, data, size);
    static struct vmdk v;
    fuzz_rt_begin(data, size, FMT_VMDK);
    if (vmdk_open(&v, &r, VMDK_OPEN_SCAN) == 0) vmdk_emit_info(&v);
    fuzz_rt_end();
    fuzz_rt_begin(data, size, FMT_VMDK);
    /* qemu's check visits every grain: only small disks here */
    if (vmdk_open(&v, &r, 0) == 0 && v.n == 1 && v.ext[0].cluster_sectors &&
        v.total_sectors / v.ext[0].cluster_sectors < 65536)
        vmdk_check(&r);
    fuzz_rt_end();
    fuzz_rt_begin(data, size, FMT_VMDK);
    static struct layer l;
    memset(&l, 0, sizeof l);
    l.r = r;
    l.want_recurse = true;
    l.ops = &vmdk_layer_ops;
    if (l.ops->open(&l) == 0) walk(&l);
    fuzz_rt_end();
    return 0;
}
