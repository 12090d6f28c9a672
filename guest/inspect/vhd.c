/*
 * inspect's vpc (VHD) and vhdx checks. format_inspector has none for either
 * (its null check); instar refuses differencing disks (a parent locator
 * names another file) and, for vhdx, region table anomalies qemu's open
 * does not test: a second copy that is broken or differs from the first,
 * regions not 1 MiB aligned, regions past the end of the file. The image
 * then goes through vpc_open / vhdx_open as qemu-img would open it.
 */
#include "inspect.h"
#include "../vpc/vpc.h"
#include "../vhdx/vhdx.h"

int inspect_vpc(struct inspect *in)
{
    const uint8_t *f = in->head; /* the footer copy at offset 0 (a dynamic or differencing disk) */
    uint32_t type = be32(f + 60);
    uint32_t locators = 0;
    if (type == VPC_TYPE_DYNAMIC || type == VPC_TYPE_DIFFERENCING) {
        uint64_t off = be64(f + 16);
        uint8_t h[VPC_DYNHDR_SIZE];
        if (reader_read(in->r, off, h, sizeof h)) return inspect_open_failed(in);
        if (memcmp(h, "cxsparse", 8) == 0)
            for (int i = 0; i < 8; i++)
                if (be32(h + 0x240 + 24 * i) != 0) locators++;
    }
    if ((type == VPC_TYPE_DIFFERENCING || locators) &&
        inspect_finding(in, INSP_VPC_PARENT, type, locators, 0, NULL, 0))
        return -1;
    static struct vpc v;
    if (vpc_open(&v, in->r)) return inspect_open_failed(in);
    in->virtual_size = v.total_sectors * VPC_SECTOR;
    in->flags |= INSPF_SIZE_KNOWN;
    return 0;
}

#define RT_SIZE 65536u
#define MiB (1ull << 20)

static int region_tables(struct inspect *in)
{
    uint8_t *t = rt_alloc(2 * RT_SIZE);
    if (!t) return rt_error(0, GERR_OUT_OF_MEMORY, 2 * RT_SIZE, 0, 0);
    if (reader_read(in->r, 3 * RT_SIZE, t, 2 * RT_SIZE)) return inspect_open_failed(in);
    bool ok[2];
    for (int c = 0; c < 2; c++) {
        uint8_t *b = t + c * RT_SIZE;
        uint32_t stored = le32(b + 4);
        b[4] = b[5] = b[6] = b[7] = 0;
        uint32_t sum = vhdx_crc32c(0xffffffffu, b, RT_SIZE);
        b[4] = (uint8_t)stored, b[5] = (uint8_t)(stored >> 8), b[6] = (uint8_t)(stored >> 16);
        b[7] = (uint8_t)(stored >> 24);
        ok[c] = false;
        if (le32(b) != 0x69676572u) {
            if (inspect_finding(in, INSP_VHDX_REGION_TABLE, VHDX_RT_SIGNATURE, c, 0, NULL, 0)) return -1;
        } else if (sum != stored) {
            if (inspect_finding(in, INSP_VHDX_REGION_TABLE, VHDX_RT_CHECKSUM, c, 0, NULL, 0)) return -1;
        } else if (le32(b + 8) > 2047) {
            if (inspect_finding(in, INSP_VHDX_REGION_TABLE, VHDX_RT_COUNT, c, le32(b + 8), NULL, 0)) return -1;
        } else {
            ok[c] = true;
        }
    }
    if (ok[0] && ok[1] && memcmp(t, t + RT_SIZE, RT_SIZE) != 0 &&
        inspect_finding(in, INSP_VHDX_REGION_TABLE, VHDX_RT_COPIES_DIFFER, 0, 0, NULL, 0))
        return -1;
    const uint8_t *b = ok[0] ? t : ok[1] ? t + RT_SIZE : NULL;
    if (!b) return 0;
    uint32_t count = le32(b + 8);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = b + 16 + 32 * i;
        uint64_t off = le64(e + 16), len = le32(e + 24), end;
        if ((off % MiB) || (len % MiB) || off < MiB) {
            if (inspect_finding(in, INSP_VHDX_REGION_TABLE, VHDX_RT_ALIGNMENT, i, off, NULL, 0)) return -1;
        } else if (__builtin_add_overflow(off, len, &end) || end > in->size) {
            if (inspect_finding(in, INSP_VHDX_REGION_TABLE, VHDX_RT_PAST_END, i, off, NULL, 0)) return -1;
        }
    }
    rt_free(t);
    return 0;
}

int inspect_vhdx(struct inspect *in)
{
    if (region_tables(in)) return -1;
    static struct vhdx v;
    int rc = vhdx_open(&v, in->r, 0);
    if (v.params_bits & 2) {
        if (inspect_finding(in, INSP_VHDX_PARENT, 0, 0, 0, NULL, 0)) return -1;
    }
    if (rc) return inspect_open_failed(in);
    in->virtual_size = v.virtual_disk_size;
    in->flags |= INSPF_SIZE_KNOWN;
    return 0;
}
