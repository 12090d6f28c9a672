/*
 * Fuzz target vmdk_onepass: the one-pass streamOptimized reader of
 * `convert -f vmdk -` (guest/vmdk/stream.c, ops.VMDK_STREAM): the header,
 * descriptor and header grain tables, then every marker, grain inflates and
 * the table check, over the input as a stream's first window: once as the
 * whole stream (FINAL), once cut where the first input byte says (the
 * window stops before an item it does not hold whole).
 *
 * Input: the file's bytes.
 * Invariants (abort = finding): every write of inflated grains lies inside
 * the run's output cap (the window's disk span plus one grain), as the
 * VMM enforces it (fuzz/shim: fuzz_rt_allow_writes); records are well formed.
 *
 * FUZZ_SOURCES: vmdk/stream.c vmdk/grain.c vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c
 * FUZZ_LIBS: z
 */
#include <string.h>
#include "fuzz_rt.h"
#include "vmdk/vmdk.h"

#define DWIN (8ull << 20)

static void run(const uint8_t *data, size_t size, uint64_t flags, uint64_t send)
{
    fuzz_rt_begin(data, size, FMT_RAW);
    struct params *p = (struct params *)rt_params();
    p->arg[0] = flags;
    p->arg[1] = 0;
    p->arg[2] = send;
    p->arg[3] = 0;
    p->arg[4] = DWIN;
    fuzz_rt_allow_writes(DWIN + VMDK_COMPRESSED_GRAIN_MAX);
    (void)vmdk_stream_run();
    vmdk_stream_release(); /* zlib's state lives outside the fuzz heap */
    fuzz_rt_end();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size, VMDKS_FIRST | VMDKS_FINAL, size);
    if (size > 0) run(data, size, VMDKS_FIRST, size * data[0] / 256);
    return 0;
}
