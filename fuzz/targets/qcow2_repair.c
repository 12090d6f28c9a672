/*
 * Fuzz target qcow2_repair: the `check` program with check -r's flags
 * (guest/qcow2/check.c under CHECKOP_F_REPAIR_LEAKS or _ALL): the repair
 * records (REPAIR_REFCOUNT, REPAIR_OFLAG), the OFLAG_COPIED repair pass
 * and its set of repaired L2 tables, and with -r all the refcount
 * structure rebuild's records (send_rebuild: the reference runs, the old
 * structures subtracted from the counts, REPAIR_REBUILD), refcount blocks
 * past the end of the file (the count array grown, the grown part read as
 * zeros), L2 entries made zero clusters (REPAIR_L2ZERO, the overlap check
 * against the metadata) and incomplete snapshot entries repaired.
 *
 * Input: the image file's bytes; the last byte's low bit picks the mode
 * (1: -r all, 0: -r leaks). Seeds: qcow2_refcount's.
 * Invariants (abort = finding): op_main returns 0 or -1 and, when it
 * succeeds, emitted at least one record. ASan/UBSan and the fuzz runtime's
 * checks (no read outside the input, well-formed records) apply throughout.
 *
 * FUZZ_SOURCES: ops/check.c qcow2/check.c qcow2/header.c qcow2/tables.c probe/probe.c raw/partition.c vhdx/vhdx.c vhdx/log.c vhdx/crc32c.c vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c vmdk/check.c
 */
#include "fuzz_rt.h"
#include "rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    fuzz_rt_begin(data, size, FMT_AUTO);
    /* the params the host would pass: fuzz_rt_begin zeroed them, this sets the mode */
    ((struct params *)rt_params())->flags = (data[size - 1] & 1) ? CHECKOP_F_REPAIR_ALL : CHECKOP_F_REPAIR_LEAKS;
    int r = op_main();
    if (r != 0 && r != -1) fuzz_rt_fail("invariant: op_main returns 0 or -1", (uint64_t)r, 0);
    if (r == 0 && fuzz_rt_records() == 0) fuzz_rt_fail("invariant: a successful check emits a record", 0, 0);
    fuzz_rt_end();
    return 0;
}
