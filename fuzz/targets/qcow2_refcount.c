/*
 * Fuzz target qcow2_refcount: the whole `check` operation program
 * (guest/ops/check.c op_main, which runs guest/qcow2/check.c): the
 * refcount walk over the active and snapshot L1/L2 tables, bitmaps,
 * refcount table and blocks, the refcount comparison and the OFLAG_COPIED
 * pass, exactly as the guest runs it, with
 * the fuzz input attached as input 0 (format probed, like `check` without -f).
 *
 * Input: the image file's bytes.
 * Invariants (abort = finding): op_main returns 0 or -1 (never anything
 * else) and, when it succeeds, emitted at least one record (the CHECK
 * record or, for raw input, RAW_INFO). ASan/UBSan and the fuzz runtime's
 * checks (no read outside the input, well-formed records) apply throughout.
 *
 * FUZZ_SOURCES: ops/check.c qcow2/check.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c vmdk/check.c
 */
#include "fuzz_rt.h"
#include "rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rt_begin(data, size, FMT_AUTO);
    int r = op_main();
    if (r != 0 && r != -1) fuzz_rt_fail("invariant: op_main returns 0 or -1", (uint64_t)r, 0);
    if (r == 0 && fuzz_rt_records() == 0) fuzz_rt_fail("invariant: a successful check emits a record", 0, 0);
    fuzz_rt_end();
    return 0;
}
