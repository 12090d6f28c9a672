/*
 * vpc's resize scan: opens the image exactly as info does (vpc_open: the
 * footer checksum, the dynamic header, the BAT against the file) and sends
 * the host's planner what it rewrites and what it must check:
 *
 *   RESIZE_BYTES  the 512-byte footer as read (VPC_FOOTER), and for a
 *                 dynamic disk the 1024-byte dynamic header (VPC_DYNHEADER)
 *   RESIZE_META   last: footer type, current_size, block size, BAT offset
 *                 and max_table_entries, and 1 + the highest allocated BAT
 *                 index (a shrink may only cut unallocated blocks)
 *
 * The BAT walk goes through vpc.c's window, so it costs at most the BAT's
 * size in reads and 1 MiB of memory. Every value is still the image's: the
 * host bounds each before its planner uses it.
 */
#include "resize_scan.h"
#include "vpc.h"
#include "bytes.h"
#include "../ops/records.h"

static int emit_bytes(uint32_t what, const uint8_t *p, uint32_t len)
{
    static struct rec_resize_bytes b;
    for (uint32_t at = 0; at < len; at += sizeof b.bytes) {
        uint32_t n = len - at < sizeof b.bytes ? len - at : (uint32_t)sizeof b.bytes;
        memset(&b, 0, sizeof b);
        rec_init(&b, REC_RESIZE_BYTES, sizeof b);
        b.what = what;
        b.length = n;
        b.offset = at;
        memcpy(b.bytes, p + at, n);
        if (rt_emit(&b, sizeof b)) return -1;
    }
    return 0;
}

int vpc_resize_scan(const struct reader *r)
{
    static struct vpc v;
    if (vpc_open(&v, r)) return -1;
    struct rec_resize_meta m;
    rec_init(&m, REC_RESIZE_META, sizeof m);
    m.format = FMT_VPC;
    m.subformat = v.type;
    m.virtual_size = v.current_size;
    /* the footer where vpc_open found it: offset 0, or the last sector */
    uint8_t f[VPC_FOOTER_SIZE];
    uint64_t foff = v.footer_at_end ? v.file_len - VPC_FOOTER_SIZE : 0;
    if (reader_read(r, foff, f, sizeof f)) return rt_error(r->input, GERR_IO, foff, sizeof f, 0);
    if (emit_bytes(RESIZE_BLOB_VPC_FOOTER, f, sizeof f)) return -1;
    m.n_bytes = sizeof f;
    if (v.dynamic) {
        uint8_t h[VPC_DYNHDR_SIZE];
        uint64_t hoff = be64(f + 16); /* vpc_open read the header there */
        if (reader_read(r, hoff, h, sizeof h)) return rt_error(r->input, GERR_IO, hoff, sizeof h, 0);
        if (emit_bytes(RESIZE_BLOB_VPC_DYNHEADER, h, sizeof h)) return -1;
        m.n_bytes += sizeof h;
        m.flags |= RESIZE_M_VPC_DYNAMIC;
        m.block_size = v.block_size;
        m.bat_offset = v.bat_offset;
        m.bat_capacity = v.max_table_entries;
        /* max_table_entries <= 2^29: bounded by the BAT open already read */
        for (uint64_t i = v.max_table_entries; i-- > 0;) {
            int64_t e = vpc_bat_get(&v, i);
            if (e < 0) return -1;
            if ((uint32_t)e != VPC_BAT_UNALLOCATED) {
                m.alloc_end = i + 1;
                break;
            }
        }
    }
    return rt_emit(&m, sizeof m);
}
