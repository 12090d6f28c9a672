/*
 * Fuzz target vmdk_stream: streamOptimized images (guest/vmdk/grain.c):
 * the footer found from the end when gd_offset is GD_AT_END, grain markers,
 * and every compressed grain the first 64 runs reach inflated through
 * vmdk_layer_ops.read (zlib), including grains whose marker size is wrong,
 * whose stream ends early or inflates past the grain.
 *
 * Input: the file's bytes.
 * Invariants (abort = finding), after a successful open:
 *   - a read of a LS_COMPRESSED run either fails (ERROR record) or fills
 *     exactly the run (the bytes past it in the buffer stay untouched);
 *   - runs advance and stay inside the disk.
 *
 * FUZZ_SOURCES: vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c vmdk/layer.c vmdk/grain.c
 * FUZZ_LIBS: z
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "vmdk/vmdk.h"
#include <zlib.h>

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define BUF (1u << 20)

extern const struct layer_ops vmdk_layer_ops;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t buf[BUF + 64];
    struct reader r;
    reader_from_mem(&r, data, size);
    fuzz_rt_begin(data, size, FMT_VMDK);
    static struct layer l;
    memset(&l, 0, sizeof l);
    l.r = r;
    l.ops = &vmdk_layer_ops;
    if (l.ops->open(&l) == 0) {
        uint64_t pos = 0;
        for (int calls = 0; calls < 64 && pos < l.length; calls++) {
            uint64_t bytes = l.length - pos, len = 0, host = 0;
            if (bytes > BUF) bytes = BUF;
            int st = l.ops->block_status(&l, pos, bytes, &len, &host);
            if (st < 0) break;
            CHECK(len > 0 && len <= bytes, len, bytes);
            if (st & LS_COMPRESSED) {
                memset(buf + len, 0xa5, 64);
                if (l.ops->read(&l, pos, len, buf) == 0) {
                    for (int k = 0; k < 64; k++) CHECK(buf[len + k] == 0xa5, len, k);
                }
            }
            pos += len;
        }
        /* zlib allocates its state with malloc, outside the fuzz heap */
        struct vmdk *v = l.state;
        if (v->z) inflateEnd(v->z);
    }
    fuzz_rt_end();
    return 0;
}
