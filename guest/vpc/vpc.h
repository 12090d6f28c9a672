/*
 * VHD ("vpc") parser: the footer, the dynamic disk header and the block
 * allocation table, with the semantics of qemu 7.2's block/vpc.c vpc_open,
 * so instar accepts and refuses exactly the images qemu-img does, with the
 * same message (ERROR records GERR_FORMAT, a0 = enum vpc_error; the host's
 * lib/formats/vpc/errors.ts holds qemu's texts).
 *
 * qemu 7.2 facts this follows (verified against qemu-img 7.2.22):
 *   - the footer is read at offset 0; without "conectix" there it is read at
 *     bdrv_getlength(file) - 512, where the file length is rounded UP to whole
 *     sectors (so a legacy 511-byte footer at the end still opens), and it
 *     must then say type 2 (fixed) or the image is "invalid VPC image";
 *   - a bad footer checksum is fatal ("Incorrect header checksum"); the
 *     dynamic header's checksum is never checked;
 *   - a footer at offset 0 means "dynamic" whatever its type field says
 *     (differencing disks open as dynamic disks, their parent is ignored);
 *     reads and block status then go straight to the file when the type
 *     field says fixed (2), through the BAT otherwise;
 *   - the size is cyls*heads*secs sectors, or current_size/512 when the
 *     creator app is "win ", "qem2", "d2v ", "CTXS" or "tap\0", or the
 *     geometry is 65535x16x255; more than 0xff000000 sectors is EFBIG;
 *   - sector bitmaps are ignored: an allocated block is read whole.
 * Every image-derived number is bounded before use; the BAT is never held
 * whole in memory (it is scanned and looked up through a 1 MiB window).
 */
#ifndef INSTAR_VPC_H
#define INSTAR_VPC_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"

#define VPC_SECTOR 512u
#define VPC_FOOTER_SIZE 512u
#define VPC_DYNHDR_SIZE 1024u
#define VPC_TYPE_FIXED 2u
#define VPC_TYPE_DYNAMIC 3u
#define VPC_TYPE_DIFFERENCING 4u
#define VPC_MAX_SECTORS 0xff000000ull                   /* 2040 GiB */
#define VPC_MAX_GEOMETRY (65535ull * 16 * 255)           /* CHS that means "use current_size" */
#define VPC_BAT_UNALLOCATED 0xffffffffu
/* qemu's BDRV_REQUEST_MAX_BYTES: a longer BAT read fails with -EIO. */
#define VPC_REQUEST_MAX_BYTES 0x7ffffe00ull
/* BAT entries per window (lookups and the open-time scan): at most 1 MiB,
 * one hypercall's worth; smaller when the whole BAT is smaller. */
#define VPC_BAT_WINDOW 262144u

/*
 * ERROR records: code GERR_FORMAT, a0 = one of these, a1/a2 as noted. The
 * texts (after qemu-img's "Could not open 'FILE': ") are qemu 7.2's.
 */
enum vpc_error {
    VPCE_READ_FOOTER = 1,     /* "Unable to read VHD header" */
    VPCE_FILE_TOO_SMALL = 2,  /* "File too small for a VHD header" */
    VPCE_INVALID = 3,         /* "invalid VPC image" */
    VPCE_CHECKSUM = 4,        /* "Incorrect header checksum"; a1 stored, a2 computed */
    VPCE_TOO_LARGE = 5,       /* EFBIG: "Could not open 'FILE': File too large"; a1 = sectors */
    VPCE_READ_DYNHDR = 6,     /* "Error reading dynamic VHD header"; a1 = offset */
    VPCE_DYNHDR_MAGIC = 7,    /* "Invalid header magic" */
    VPCE_BLOCK_SIZE = 8,      /* "Invalid block size %u", a1 = block size */
    VPCE_TOO_MANY_BLOCKS = 9, /* "Too many blocks" */
    VPCE_TABLE_TOO_SMALL = 10, /* "Page table too small"; a1 = max_table_entries */
    VPCE_TABLE_TOO_LARGE = 11, /* "Max Table Entries too large (%d)", a1 = the u32 (printed as int32) */
    VPCE_READ_TABLE = 12,     /* "Error reading pagetable"; a1 = offset, a2 = bytes */
    VPCE_TRUNCATED = 13,      /* "block-vpc: free_data_block_offset points after the end of file.
                                 The image has been truncated." (one line); a1 = offset, a2 = file length */
};

/*
 * IMAGE_INFO.extra[] for FMT_VPC:
 *   extra[0] = geometry: cyls << 16 | heads << 8 | secs_per_cyl (the footer's)
 *   extra[1] = the footer's current_size (bytes, as stored)
 *   extra[2] = creator_app (4 bytes big-endian) << 32 | VPC_X_* bits
 *   extra[3] = max_table_entries when the BAT was read (footer at 0), else 0
 * virtual_size is total_sectors * 512; cluster_size is what qemu-img info
 * prints (the block size unless the footer type is fixed, else 0 = none).
 */
#define VPC_X_FOOTER_AT_END 1u   /* the footer came from the end of the file */
#define VPC_X_SIZE_FROM_FOOTER 2u /* total_sectors came from current_size, not CHS */

struct vpc {
    const struct reader *r;
    uint64_t file_len;       /* bdrv_getlength(file): size rounded up to 512 */
    uint64_t total_sectors;
    uint64_t current_size;
    uint32_t type;           /* footer type field */
    uint32_t creator_app;    /* big-endian 4 bytes */
    uint16_t cyls;
    uint8_t heads, secs;
    bool footer_at_end;
    bool size_from_footer;
    bool dynamic;            /* the dynamic header and BAT were read */
    uint32_t block_size;
    uint32_t bitmap_size;
    uint32_t max_table_entries;
    uint64_t bat_offset;
    uint64_t free_data_block_offset;
    /* BAT window: entries [win_first, win_first + win_n) decoded. */
    uint32_t *win;
    uint64_t win_first;
    uint32_t win_n;
    uint32_t win_cap;        /* entries the window holds */
};

/* Block status bits (qemu's BDRV_BLOCK_*). */
#define VPC_ST_DATA 1u
#define VPC_ST_ZERO 2u
#define VPC_ST_OFFSET_VALID 8u
#define VPC_ST_RECURSE 64u /* qemu asks the file below whether the range is a hole */

/* vpc_open: 0, or -1 after an ERROR record (input r->input). */
int vpc_open(struct vpc *v, const struct reader *r);

/* bdrv_getlength of the vpc layer. */
static inline uint64_t vpc_length(const struct vpc *v) { return v->total_sectors * VPC_SECTOR; }

/*
 * vpc_co_block_status for [pos, pos+bytes) inside the disk (bytes > 0):
 * *len = the leading run, *host its file offset when VPC_ST_OFFSET_VALID.
 * Returns VPC_ST_* bits, or -1 after an ERROR record (a BAT read failed).
 */
int vpc_block_status(struct vpc *v, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host);

/* Emits one IMAGE_INFO record. */
int vpc_emit_info(const struct vpc *v);

/* The BAT entry of block idx of a dynamic disk: VPC_BAT_UNALLOCATED past
 * the table, else a sector number; -1 after an ERROR record. */
int64_t vpc_bat_get(struct vpc *v, uint64_t idx);

#endif
