/*
 * Fuzz target vmdk_desc: the VMDK text descriptor as qemu 7.2 parses it
 * (guest/vmdk/desc.c through vmdk_open on a descriptor file): createType,
 * every extent line (qemu's sscanf rules), CID / parentCID /
 * parentFileNameHint, info's records; also the probe (qemu's vmdk_probe).
 * Opened twice: as info's first pass (VMDK_OPEN_SCAN: extents reported,
 * nothing attached) and as a chain run would (extent files missing: the
 * open must refuse, never read past input 0).
 *
 * Input: the descriptor file's bytes.
 * Invariants (abort = finding), after a successful scan open:
 *   - at most VMDK_MAX_FILES extents, each with 0 < sectors, a file name of
 *     1..511 bytes without '"', '\n', '\r', and end sectors that add up;
 *   - total_sectors * 512 <= INT64_MAX; create type shorter than 128 bytes.
 *
 * FUZZ_SOURCES: vmdk/vmdk.c vmdk/desc.c vmdk/sesparse.c probe/probe.c raw/partition.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "vmdk/vmdk.h"
#include "probe/probe.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct vmdk v;
    struct reader r;
    reader_from_mem(&r, data, size);
    fuzz_rt_begin(data, size, FMT_AUTO);
    (void)probe_input(&r, FMT_AUTO);
    fuzz_rt_end();

    fuzz_rt_begin(data, size, FMT_VMDK);
    if (vmdk_open(&v, &r, VMDK_OPEN_SCAN) == 0) {
        CHECK(v.n <= VMDK_MAX_FILES + 1, v.n, 0);
        CHECK(v.create_type_len < sizeof v.create_type, v.create_type_len, 0);
        uint64_t end = 0;
        for (uint32_t i = 0; i < v.n; i++) {
            const struct vmdk_extent *e = &v.ext[i];
            if (e->hosted) {
                end = e->end_sector;
                continue;
            }
            CHECK(e->sectors > 0 && e->name_len > 0 && e->name_len <= 511, e->sectors, e->name_len);
            for (uint32_t k = 0; k < e->name_len; k++)
                CHECK(e->name[k] != '"' && e->name[k] != '\n' && e->name[k] != '\r', k, (uint8_t)e->name[k]);
            CHECK(e->end_sector == end + e->sectors, e->end_sector, end);
            end = e->end_sector;
        }
        CHECK(v.total_sectors == end && v.total_sectors <= ((1ull << 63) - 1) / 512, v.total_sectors, end);
        vmdk_emit_info(&v);
    }
    fuzz_rt_end();

    fuzz_rt_begin(data, size, FMT_VMDK);
    if (vmdk_open(&v, &r, 0) == 0) CHECK(v.files == 0 || v.ext[0].hosted, v.files, 0);
    fuzz_rt_end();
    return 0;
}
