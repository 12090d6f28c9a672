/*
 * Fuzz target raw_partition: format probing (probe_input: qcow2 magic,
 * other formats' head and tail signatures) and raw partition-table
 * detection (raw_partition_kind: MBR, protective MBR + GPT), as `info`
 * and `check` run them on an input without -f.
 *
 * Input: the image file's bytes.
 * Invariants (abort = finding):
 *   - probing with FMT_AUTO gives FMT_RAW, FMT_QCOW2, FMT_VPC, FMT_VHDX or
 *     FMT_VMDK (vmdk only with "KDMV"/"COWD" at 0 or a line "version=1..3")
 *     (or -1 only on an I/O error, which a memory buffer never has); vpc
 *     only with "conectix" and vhdx only with "vhdxfile" at byte 0;
 *   - probing with an explicit format returns that format;
 *   - raw_partition_kind returns PART_NONE, PART_MBR or PART_GPT, and
 *     PART_GPT only with "EFI PART" at byte 512.
 *
 * FUZZ_SOURCES: probe/probe.c raw/partition.c
 */
#define _GNU_SOURCE /* memmem */
#include <string.h>
#include "fuzz_rt.h"
#include "probe/probe.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader r;
    reader_from_mem(&r, data, size);
    fuzz_rt_begin(data, size, FMT_AUTO);
    int f = probe_input(&r, FMT_AUTO);
    CHECK(f == FMT_RAW || f == FMT_QCOW2 || f == FMT_VPC || f == FMT_VHDX || f == FMT_VMDK, (uint64_t)f, size);
    if (f == FMT_VMDK)
        CHECK(size >= 4 && (memcmp(data, "KDMV", 4) == 0 || memcmp(data, "COWD", 4) == 0 ||
                            memmem(data, size, "version=", 8) != NULL),
              size, 0);
    if (f == FMT_VPC) CHECK(size >= 8 && memcmp(data, "conectix", 8) == 0, size, 0);
    if (f == FMT_VHDX) CHECK(size >= 8 && memcmp(data, "vhdxfile", 8) == 0, size, 0);
    CHECK(probe_input(&r, FMT_RAW) == FMT_RAW, size, 0);
    CHECK(probe_input(&r, FMT_QCOW2) == FMT_QCOW2, size, 0);
    int k = raw_partition_kind(&r);
    CHECK(k == PART_NONE || k == PART_MBR || k == PART_GPT, (uint64_t)k, size);
    if (k == PART_GPT) CHECK(size >= 520 && memcmp(data + 512, "EFI PART", 8) == 0, size, 0);
    raw_emit_info(&r);
    fuzz_rt_end();
    return 0;
}
