/*
 * Fuzz target inspect: the upload gate's checks (guest/inspect/, every
 * header parser they call: qcow2_open, vpc_open, vhdx_open, vmdk_open in
 * scan mode, the probe) over the input as a file, then as a stream's window
 * (the first half and the last 1536 bytes, as `instar inspect -` hands a
 * long stream to the guest).
 *
 * Input: the image file's bytes.
 * Invariants (abort = finding):
 *   - inspect_run returns 0 (it always sends its summary);
 *   - at least one record (the summary) is emitted;
 *   - in stream mode no byte outside the window is read from the input
 *     (the window reader refuses such reads instead of passing them on).
 *
 * FUZZ_SOURCES: inspect/core.c inspect/qcow2.c inspect/vmdk.c inspect/vhd.c inspect/disk.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c vpc/vpc.c vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "inspect/inspect.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

static uint64_t win_prefix, win_tail;

/* The input as memory, checking that a stream's window is respected. */
static int guarded_read(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    CHECK(win_tail == win_prefix || off + len <= win_prefix || off >= win_tail, off, len);
    memcpy(buf, (const uint8_t *)ctx + off, len);
    return 0;
}

static void run(const uint8_t *data, size_t size, bool stream)
{
    static struct reader mem, r;
    static struct inspect_window w;
    fuzz_rt_begin(data, size, FMT_AUTO);
    reader_from_mem(&mem, data, size);
    mem.read = guarded_read;
    win_prefix = stream ? size / 2 : size;
    if (stream && win_prefix < INSPECT_HEAD) win_prefix = size < INSPECT_HEAD ? size : INSPECT_HEAD;
    win_tail = stream ? (size > INSPECT_TAIL ? size - INSPECT_TAIL : 0) : size;
    if (win_tail < win_prefix) win_tail = win_prefix;
    inspect_window_init(&w, &r, &mem, stream, win_prefix, win_tail);
    CHECK(inspect_run(&r) == 0, size, stream);
    CHECK(fuzz_rt_records() >= 1, size, stream);
    fuzz_rt_end();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size, false);
    run(data, size, true);
    return 0;
}
