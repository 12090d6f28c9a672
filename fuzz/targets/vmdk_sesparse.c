/*
 * Fuzz target vmdk_sesparse: a seSparse extent file (guest/vmdk/sesparse.c):
 * qemu's const and volatile header checks, the extent it adds (directory
 * offset and size in wrapping arithmetic), then the lookups: every grain of
 * the first 8192 through vmdk_cluster (the directory and table windows, the
 * entry types, the split grain index), qemu's check walk (directory entries
 * without a table skipped at once) and 64 block_status calls of
 * vmdk_layer_ops. The extent is opened as a descriptor's SESPARSE line
 * opens it (vmdk.c's add_desc_extent), over the input alone: no descriptor,
 * no second input.
 *
 * Input: the extent file's bytes.
 * Invariants (abort = finding), after a successful open:
 *   - one extent: total_sectors <= INT64_MAX / 512, 4 KiB grains, 4096
 *     entries per table, at most 32 Mi directory entries;
 *   - a lookup is OK (offset a multiple of 512), UNALLOC, ZEROED or ERROR;
 *   - block_status: 0 < len <= bytes, status 0, LS_ZERO or
 *     LS_DATA|LS_OFFSET_VALID, host + len without overflow, l->data the
 *     extent's reader; positions strictly increase.
 *
 * FUZZ_SOURCES: vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c vmdk/layer.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "vmdk/vmdk.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

extern const struct layer_ops vmdk_layer_ops;

/* vmdk_open's setup for a descriptor whose one line is `RW n SESPARSE "x"`,
 * with the extent file on the image's own reader. */
static int open_extent(struct vmdk *v, const struct reader *r)
{
    memset(v, 0, sizeof *v);
    v->r = r;
    v->ext = rt_calloc(2, sizeof *v->ext);
    if (!v->ext) return -1;
    v->descriptor = true;
    memcpy(v->create_type, "seSparse", 9);
    v->create_type_len = 8;
    struct vmdk_extent *e = &v->ext[0];
    memcpy(e->type, "SESPARSE", 9);
    e->r = r;
    if (vmdk_open_sesparse(v, e)) return -1;
    CHECK(v->n == 1 && e->kind == VMDK_SESPARSE && e->opened, v->n, e->kind);
    CHECK(v->total_sectors <= ((1ull << 63) - 1) / 512, v->total_sectors, 0);
    CHECK(e->cluster_sectors == 8 && e->l2_size == 4096 && e->l1_entry_sectors == 32768, e->cluster_sectors,
          e->l2_size);
    CHECK(e->l1_size <= 32u * 1024 * 1024, e->l1_size, 0);
    return 0;
}

static void lookups(struct vmdk *v)
{
    struct vmdk_extent *e = &v->ext[0];
    for (uint64_t g = 0; g < 8192 && g * 8 < v->total_sectors; g++) {
        uint64_t co = 0;
        int st = vmdk_cluster(v, e, g * 4096, &co);
        CHECK(st == VMDK_OK || st == VMDK_UNALLOC || st == VMDK_ZEROED || st == VMDK_ERROR, (uint64_t)st, g);
        if (st == VMDK_OK) CHECK(co % 512 == 0, co, g);
    }
}

/* vmdk_check's walk (check.c opens from a descriptor; the same loop here). */
static void check_walk(struct vmdk *v)
{
    struct vmdk_extent *e = &v->ext[0];
    uint64_t steps = 0;
    for (uint64_t sector = 0; sector < v->total_sectors && steps < (1u << 20); steps++) {
        uint64_t co = 0;
        int st = vmdk_cluster(v, e, sector << 9, &co);
        if (st == VMDK_ERROR || (st == VMDK_OK && co >= e->r->size)) return;
        if (st == VMDK_UNALLOC && e->gd_empty) {
            uint64_t span = e->l1_entry_sectors, left = span - sector % span;
            sector += (left + 7) / 8 * 8;
            continue;
        }
        sector += 8;
    }
}

static void walk(struct layer *l)
{
    struct vmdk *v = l->state;
    uint64_t pos = 0;
    for (int calls = 0; calls < 64 && pos < l->length; calls++) {
        uint64_t bytes = l->length - pos, len = 0, host = 0;
        if (calls & 1) bytes = bytes > 300000 ? 300000 : bytes;
        int st = l->ops->block_status(l, pos, bytes, &len, &host);
        if (st < 0) return;
        CHECK(len > 0 && len <= bytes, len, bytes);
        CHECK(st == 0 || st == (int)LS_ZERO || st == (int)(LS_DATA | LS_OFFSET_VALID), (uint64_t)st, pos);
        if (st & LS_OFFSET_VALID) CHECK(host + len > host, host, len);
        CHECK(l->data == v->ext[0].r, pos, 0);
        pos += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader r;
    reader_from_mem(&r, data, size);
    static struct vmdk v;
    fuzz_rt_begin(data, size, FMT_VMDK);
    if (open_extent(&v, &r) == 0) {
        vmdk_emit_info(&v);
        lookups(&v);
    }
    fuzz_rt_end();
    fuzz_rt_begin(data, size, FMT_VMDK);
    if (open_extent(&v, &r) == 0) check_walk(&v);
    fuzz_rt_end();
    fuzz_rt_begin(data, size, FMT_VMDK);
    static struct layer l;
    memset(&l, 0, sizeof l);
    l.r = r;
    l.ops = &vmdk_layer_ops;
    if (open_extent(&v, &l.r) == 0) {
        l.state = &v;
        l.data = &l.r;
        l.length = v.total_sectors * 512;
        l.fmt = FMT_VMDK;
        walk(&l);
    }
    fuzz_rt_end();
    return 0;
}
