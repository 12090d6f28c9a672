/*
 * VHDX parser: qemu 7.2's block/vhdx.c + vhdx-log.c open path, read-only.
 *
 * Open follows vhdx_open step by step: file identifier, both headers (CRC-32C,
 * sequence-number choice), the log (vhdx_parse_log: an active log sequence
 * means qemu refuses a read-only open), the region table, the metadata
 * region, the BAT bounds, and (outside check mode) vhdx_check_bat_entries.
 * The BAT is never held whole: it is read through a window, so a 64 TiB disk
 * with a 2 GiB BAT costs the same memory as a small one.
 *
 * Errors are ERROR records with code GERR_FORMAT, a0 = enum vhdx_error,
 * a1/a2 as documented per value; lib/formats/vhdx/errors.ts holds qemu's
 * texts. Lines qemu prints with error_report() while opening or checking
 * (region overlaps, BAT entries past EOF) are CHECK_MSG records
 * (CMSG_VHDX_*), sent before the ERROR record or the CHECK record.
 */
#ifndef INSTAR_VHDX_H
#define INSTAR_VHDX_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"

/* ERROR(GERR_FORMAT).a0. qemu-img prints "Could not open 'FILE': " and then
 * the text below (lib/formats/vhdx/errors.ts). */
enum vhdx_error {
    /* "Could not open 'FILE': Input/output error" (a read qemu's block layer
     * refuses: past BDRV_MAX_LENGTH, or longer than BDRV_REQUEST_MAX_BYTES).
     * a1 = file offset, a2 = length */
    VHDX_E_IO = 1,
    /* "Could not open 'FILE': Invalid argument" (-EINVAL). a1 = enum
     * vhdx_inval (which test; not printed), a2 = the value tested */
    VHDX_E_INVAL = 2,
    /* "Could not open 'FILE': Operation not supported" (-ENOTSUP). a1 = enum
     * vhdx_notsup, a2 = the value */
    VHDX_E_NOTSUP = 3,
    /* "No valid VHDX header found" */
    VHDX_E_NO_HEADER = 4,
    /* "VHDX image file 'FILE' opened read-only, but contains a log that needs
     * to be replayed" + hint "To replay the log, run:\nqemu-img check -r all
     * 'FILE'". a1 = log entries in the active sequence, a2 = its sequence number */
    VHDX_E_LOG_REPLAY = 5,
    /* instar's own: qemu 7.2's log search would loop forever or take
     * unbounded time on this log (an entry spanning the whole log, or
     * overlapping entries). a1 = log sectors visited */
    VHDX_E_LOG_LOOP = 6,
    /* Reading the disk: qemu's vhdx_co_readv fails with -EIO for BAT states
     * 4 and 7 (PARTIALLY_PRESENT). a1 = guest offset, a2 = BAT state */
    VHDX_E_READ_STATE = 7,
    /* instar's own: a read would index the BAT past its region (qemu reads
     * past its heap buffer there). a1 = guest offset, a2 = BAT index */
    VHDX_E_BAT_RANGE = 8,
    /* bdrv_open_driver after a successful vhdx_open: total_sectors * 512
     * does not fit int64 (virtual disk size >= 2^63): "Could not refresh
     * total sector count: File too large". a1 = total_sectors */
    VHDX_E_TOO_LARGE = 9,
    /* instar's own: check's region-overlap tests would exceed
     * VHDX_REGION_WORK comparisons (qemu walks every region for every
     * payload entry; 2047 regions and a BAT of overlapping entries take it
     * minutes). a1 = BAT entry reached */
    VHDX_E_CHECK_WORK = 10,
};

#define VHDX_REGION_WORK (1ull << 27)
/* VHDX_E_READ_STATE's a2 for a FULLY_PRESENT block whose file range reaches
 * past BDRV_MAX_LENGTH: qemu's read of it fails with -EIO too. */
#define VHDX_READ_PAST_MAX 8

enum vhdx_inval {
    VHDX_INVAL_SIGNATURE = 1,      /* file identifier is not "vhdxfile" */
    VHDX_INVAL_LOG_OFFSET = 2,     /* log offset < 1 MiB or not a multiple of it */
    VHDX_INVAL_LOG_VERSION = 3,
    VHDX_INVAL_LOG_LENGTH = 4,     /* not a multiple of 1 MiB */
    VHDX_INVAL_LOG_DESCRIPTOR = 5, /* a valid log entry with an invalid descriptor */
    VHDX_INVAL_RT_CHECKSUM = 6,
    VHDX_INVAL_RT_SIGNATURE = 7,
    VHDX_INVAL_RT_COUNT = 8,       /* > 2047 entries */
    VHDX_INVAL_REGION_OVERLAP = 9,
    VHDX_INVAL_RT_DUPLICATE = 10,
    VHDX_INVAL_RT_MISSING = 11,    /* no BAT or no metadata region */
    VHDX_INVAL_MD_SIGNATURE = 12,
    VHDX_INVAL_MD_COUNT = 13,      /* > 2047 entries */
    VHDX_INVAL_MD_DUPLICATE = 14,
    VHDX_INVAL_PARENT_LOCATOR = 15, /* has_parent without a parent locator */
    VHDX_INVAL_BLOCK_SIZE = 16,
    VHDX_INVAL_SECTORS_PER_BLOCK = 17,
    VHDX_INVAL_CHUNK_RATIO = 18,
    VHDX_INVAL_BAT_LENGTH = 19,    /* the BAT region holds fewer than bat_entries */
    VHDX_INVAL_BAT_ENTRY = 20,     /* vhdx_check_bat_entries failed (messages sent) */
};

enum vhdx_notsup {
    VHDX_NOTSUP_REGION = 1,        /* an unknown region marked required */
    VHDX_NOTSUP_METADATA = 2,      /* an unknown metadata item marked required */
    VHDX_NOTSUP_MD_MISSING = 3,    /* required items missing, or a parent locator present */
    VHDX_NOTSUP_DIFFERENCING = 4,  /* has_parent with a parent locator */
    VHDX_NOTSUP_SECTOR_SIZE = 5,   /* logical sector size other than 512 */
};

/* BAT states (qemu 7.2 vhdx.h) */
#define VHDX_PAYLOAD_NOT_PRESENT 0
#define VHDX_PAYLOAD_UNDEFINED 1
#define VHDX_PAYLOAD_ZERO 2
#define VHDX_PAYLOAD_UNMAPPED 3
#define VHDX_PAYLOAD_UNMAPPED_V095 5
#define VHDX_PAYLOAD_FULLY_PRESENT 6
#define VHDX_PAYLOAD_PARTIALLY_PRESENT 7
#define VHDX_BAT_STATE_MASK 7ull
#define VHDX_BAT_OFFSET_MASK 0xfffffffffff00000ull

#define VHDX_MAX_REGIONS 2048 /* the log + 2047 region-table entries */
#define VHDX_BAT_WINDOW (64u << 10) /* bytes of BAT held at once */

/* vhdx_open flags */
#define VHDX_OPEN_CHECK 1u /* BDRV_O_CHECK: skip vhdx_check_bat_entries */

struct vhdx_region {
    uint64_t start, end; /* end = start + length, wrapping as qemu's uint64_t */
};

struct vhdx {
    const struct reader *r;
    uint32_t input;
    int curr_header;
    uint64_t header_seq;
    uint8_t log_guid[16];
    uint16_t log_version;
    uint64_t log_offset;
    uint32_t log_length;
    uint64_t bat_offset;
    uint32_t bat_length;
    uint32_t bat_rt_index;         /* the BAT's entry in the region table */
    uint64_t metadata_offset;
    uint32_t metadata_length;
    uint32_t block_size;
    uint32_t params_bits;          /* file parameters: 1 leave_blocks_allocated, 2 has_parent */
    uint64_t virtual_disk_size;
    uint64_t vsize_item_offset;    /* file offset of the virtual disk size item */
    uint32_t logical_sector_size;
    uint32_t physical_sector_size;
    uint32_t sectors_per_block_bits;
    uint32_t chunk_ratio_bits;
    uint64_t chunk_ratio;
    uint32_t block_size_bits;
    uint32_t bat_entries;          /* qemu's (uint32_t) count, bitmap entries included */
    uint64_t total_sectors;        /* virtual_disk_size >> 9 */
    /* Registered regions in qemu's order (qemu walks them newest first). */
    uint32_t n_regions;
    struct vhdx_region regions[VHDX_MAX_REGIONS];
    /* Regions sorted by start with the running maximum of end: a no-overlap
     * answer in O(log n) (qemu's linear walk only runs when one overlaps). */
    struct vhdx_region sorted[VHDX_MAX_REGIONS];
    uint64_t max_end[VHDX_MAX_REGIONS];
    uint64_t region_work; /* comparisons spent by region_overlaps_slow */
    /* BAT window: entries [win_first, win_first + win_n) in win. */
    uint8_t *win;
    uint64_t win_first;
    uint64_t win_n;
};

/* CRC-32C (Castagnoli), qemu's crc32c(): crc is the running value (start
 * 0xffffffff); returns the finished value (xor 0xffffffff). */
uint32_t vhdx_crc32c(uint32_t crc, const uint8_t *p, uint64_t len);

/* 0, or -1 after an ERROR record (and CHECK_MSG lines qemu prints). */
int vhdx_open(struct vhdx *v, const struct reader *r, uint32_t flags);
/* BAT entry `idx` (idx < bat_length / 8) into *e; 0 or -1 after an ERROR. */
int vhdx_bat_get(struct vhdx *v, uint64_t idx, uint64_t *e);
/* vhdx_check_bat_entries; errcnt NULL: stop at the first problem. Returns
 * 0, 1 when problems were found (CHECK_MSG lines sent), -1 on internal error. */
int vhdx_check_bat(struct vhdx *v, uint64_t *errcnt);

/*
 * IMAGE_INFO record: virtual_size = total_sectors * 512, cluster_size =
 * block size, subformat FIXED when the file parameters say
 * leave_blocks_allocated else DYNAMIC, flags 0 (an open with a log to replay
 * or a parent fails). extra[]:
 *   [0] log length in bytes (header's log_length)
 *   [1] logical sector size | physical sector size << 32
 *   [2] BAT entries (qemu's bat_entries, sector-bitmap entries included)
 *   [3] BAT region file offset
 */
int vhdx_emit_info(const struct vhdx *v);

/* The chain layer (guest/vhdx/layer.c, guest/chain/layer.h). */
struct layer_ops;
extern const struct layer_ops vhdx_layer_ops;

/* qemu 7.2 vhdx_co_check without repair: CHECK_MSG lines + one CHECK record.
 * Opens input 0 itself (in check mode). 0 or -1 after an ERROR record. */
int vhdx_check(const struct reader *r);

#endif
