/*
 * qemu 7.2's vmdk_co_check: every grain of the disk in order, its lookup
 * (get_cluster_offset) and, for an allocated grain, whether its offset lies
 * inside the extent file. The first problem ends the walk with one line on
 * stderr (CHECK_MSG), one corruption and qemu's return value as the errno
 * of "Check failed" (VMDK_ERROR is -1: EPERM's text). A clean walk reports
 * nothing. A grain directory entry without a table skips its whole span.
 */
#include "vmdk.h"
#include "../ops/records.h"

static int emit_msg(uint32_t input, uint32_t code, uint64_t a)
{
    struct rec_check_msg m;
    rec_init(&m, REC_CHECK_MSG, sizeof m);
    m.code = code;
    m.input = input;
    m.a[0] = a;
    return rt_emit(&m, sizeof m);
}

int vmdk_check(const struct reader *r)
{
    static struct vmdk v;
    if (vmdk_open(&v, r, 0)) return -1;
    struct rec_check c;
    rec_init(&c, REC_CHECK, sizeof c);
    c.input = r->input;
    uint64_t total = v.total_sectors;
    for (uint64_t sector = 0; sector < total;) {
        struct vmdk_extent *e = vmdk_find_extent(&v, sector << 9);
        if (!e) {
            if (emit_msg(r->input, CMSG_VMDK_NO_EXTENT, sector)) return -1;
            c.flags = 22;
            break;
        }
        uint64_t co = 0;
        int st = vmdk_cluster(&v, e, sector << 9, &co);
        if (st == VMDK_ERROR) {
            if (emit_msg(r->input, CMSG_VMDK_NO_CLUSTER, sector)) return -1;
            c.flags = 1;
            break;
        }
        if (st == VMDK_OK && co >= e->r->size) {
            if (emit_msg(r->input, CMSG_VMDK_PAST_EOF, sector)) return -1;
            c.flags = 22;
            break;
        }
        if (st == VMDK_UNALLOC && e->gd_empty) {
            /* no grain table: every grain of the table's span is unallocated
             * (what the per-grain walk would find, without 4096 lookups) */
            uint64_t rel = sector - (e->end_sector - e->sectors), span = e->l1_entry_sectors;
            uint64_t left = span - rel % span, cs = e->cluster_sectors;
            if (left > e->end_sector - sector) left = e->end_sector - sector;
            /* the walk's first position at or past the span's (or extent's) end */
            sector += (left + cs - 1) / cs * cs;
            continue;
        }
        sector += e->cluster_sectors;
    }
    if (c.flags) c.corruptions = 1;
    return rt_emit(&c, sizeof c);
}
