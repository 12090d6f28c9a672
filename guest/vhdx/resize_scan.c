/*
 * vhdx's resize scan: opens the image as qemu's vhdx_open does (both headers
 * and the sequence-number choice, the log, the region table, the metadata,
 * the BAT entries checked against the file) and sends the host's planner:
 *
 *   RESIZE_BYTES  the active header's 4 KiB as read (VHDX_HEADER), which the
 *                 planner rewrites into both slots with the next sequence
 *                 numbers; the 64 KiB region table as read (open checked
 *                 its CRC), in which the planner repoints the BAT entry
 *                 (bat_entry) when the BAT must move
 *   RESIZE_META   last: the active header's sequence number and slot, the
 *                 log GUID's zeroness, block size, virtual disk size, the
 *                 BAT region, the virtual disk size item's file offset, and
 *                 1 + the highest payload block whose BAT state is
 *                 FULLY_PRESENT or PARTIALLY_PRESENT (a shrink may only cut
 *                 blocks qemu reads as zeroes: NOT_PRESENT, ZERO, UNMAPPED...)
 *
 * The sequence number is sent as the header holds it, 2^64 - 1 included:
 * the host refuses numbers it cannot increment twice (seed 002).
 */
#include "resize_scan.h"
#include "vhdx.h"
#include "bytes.h"
#include "../ops/records.h"

#define HEADER_SIZE 4096u
#define REGION_TABLE_AT 0x30000u
#define REGION_TABLE_SIZE 0x10000u

/* Sends [off, off+len) of the file as RESIZE_BYTES records of kind `what`. */
static int send_blob(const struct reader *r, uint32_t what, uint64_t off, uint32_t len)
{
    static struct rec_resize_bytes b;
    for (uint32_t at = 0; at < len; at += sizeof b.bytes) {
        memset(&b, 0, sizeof b);
        rec_init(&b, REC_RESIZE_BYTES, sizeof b);
        b.what = what;
        b.length = sizeof b.bytes;
        b.offset = at;
        if (reader_read(r, off + at, b.bytes, sizeof b.bytes))
            return rt_error(r->input, GERR_IO, off + at, sizeof b.bytes, 0);
        if (rt_emit(&b, sizeof b)) return -1;
    }
    return 0;
}

int vhdx_resize_scan(const struct reader *r)
{
    static struct vhdx v;
    if (vhdx_open(&v, r, 0)) return -1;
    struct rec_resize_meta m;
    rec_init(&m, REC_RESIZE_META, sizeof m);
    m.format = FMT_VHDX;
    m.subformat = v.params_bits;
    m.virtual_size = v.virtual_disk_size;
    m.block_size = v.block_size;
    m.bat_offset = v.bat_offset;
    m.bat_capacity = v.bat_length;
    m.sequence = v.header_seq;
    m.item_offset = v.vsize_item_offset;
    bool zero = true;
    for (int i = 0; i < 16; i++)
        if (v.log_guid[i]) zero = false;
    if (zero) m.flags |= RESIZE_M_VHDX_LOG_GUID_ZERO;
    if (v.curr_header == 1) m.flags |= RESIZE_M_VHDX_HEADER2;

    m.bat_entry = v.bat_rt_index;

    uint64_t hoff = v.curr_header == 1 ? 0x20000u : 0x10000u;
    if (send_blob(r, RESIZE_BLOB_VHDX_HEADER, hoff, HEADER_SIZE)) return -1;
    if (send_blob(r, RESIZE_BLOB_VHDX_REGION_TABLE, REGION_TABLE_AT, REGION_TABLE_SIZE)) return -1;
    m.n_bytes = HEADER_SIZE + REGION_TABLE_SIZE;

    /* Payload block k is BAT entry k + k / chunk_ratio; open checked that
     * bat_entries fit the BAT region, and the window bounds memory. */
    uint64_t bs = v.block_size;
    uint64_t blocks = (v.virtual_disk_size + bs - 1) / bs;
    for (uint64_t k = blocks; k-- > 0;) {
        uint64_t idx = k + (k >> v.chunk_ratio_bits), e;
        if (idx >= v.bat_length / 8) continue;
        if (vhdx_bat_get(&v, idx, &e)) return -1;
        /* only these states have payload qemu reads (the others read as zero) */
        uint64_t st = e & VHDX_BAT_STATE_MASK;
        if (st == VHDX_PAYLOAD_FULLY_PRESENT || st == VHDX_PAYLOAD_PARTIALLY_PRESENT) {
            m.alloc_end = k + 1;
            break;
        }
    }
    return rt_emit(&m, sizeof m);
}
