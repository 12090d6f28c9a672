/*
 * qcow2 parser state and the on-disk constants it decodes (qcow2 spec,
 * docs/interop/qcow2.txt). Semantics follow qemu 7.2's qcow2_do_open so that
 * instar accepts and refuses exactly the images qemu-img does, with the same
 * error (reported as an ERROR record; the host prints qemu's text).
 */
#ifndef INSTAR_QCOW2_H
#define INSTAR_QCOW2_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"
#include "../ops/records.h"

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_HEADER_READ 112 /* v3 header incl. compression type + padding */

#define QCOW2_INCOMPAT_DIRTY 1ull
#define QCOW2_INCOMPAT_CORRUPT 2ull
#define QCOW2_INCOMPAT_DATA_FILE 4ull
#define QCOW2_INCOMPAT_COMPRESSION 8ull
#define QCOW2_INCOMPAT_EXTL2 16ull
#define QCOW2_INCOMPAT_MASK 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS 1ull
#define QCOW2_AUTOCLEAR_BITMAPS 1ull
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW 2ull

#define QCOW2_EXT_END 0u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_CRYPTO_HEADER 0x0537be77u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define QCOW2_CRYPT_LUKS 2u

#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO 1ull
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define QCOW2_REFT_RESERVED_MASK 0x1ffull
#define QCOW2_BITMAP_ALL_ALLOC 0xffffffffull

#define QCOW2_MAX_REFTABLE_SIZE (8ull << 20)
#define QCOW2_MAX_L1_SIZE (32ull << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_SNAPSHOT_HEADER_SIZE 40u
#define QCOW2_MAX_SNAPSHOT_EXTRA_DATA 1024u
#define QCOW2_MAX_BITMAPS 65535u
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024ull * 65535)

/* BAD_EXTENSION a1: which extension check failed (message in the report). */
enum qcow2_ext_error {
    QEXT_TOO_LARGE = 1,
    QEXT_BACKING_FORMAT_TOO_LONG = 2,
    QEXT_CRYPTO_NOT_LUKS = 3,
    QEXT_CRYPTO_SIZE = 4,
    QEXT_BITMAPS_LENGTH = 5,
    QEXT_BITMAPS_RESERVED = 6,
    QEXT_BITMAPS_TOO_MANY = 7,
    QEXT_BITMAPS_ZERO = 8,
    QEXT_BITMAPS_DIR_OFFSET = 9,
    QEXT_BITMAPS_DIR_SIZE = 10,
    QEXT_CRYPTO_OFFSET = 11,  /* a0 = cluster size (not the magic), a2 = the misaligned offset */
    QEXT_CRYPTO_OUTSIDE = 12, /* "Request for data outside of extension header" */
    QEXT_CRYPTO_READ = 13,    /* a read of the extension or the header clusters failed */
};

/* BAD_BITMAP a0: qemu's bitmap loading at open (qcow2_load_dirty_bitmaps). */
enum qcow2_bitmap_error {
    QBM_DIR_SIZE_ZERO = 1,   /* "Requested bitmap directory size is zero" */
    QBM_BROKEN_DIR = 2,      /* "Broken bitmap directory" */
    QBM_TOO_MANY = 3,        /* "More bitmaps found than specified in header extension" */
    QBM_EXTRA_DATA = 4,      /* "Bitmap extra data is not supported" */
    QBM_CONSTRAINTS = 5,     /* "Bitmap '%s' doesn't satisfy the constraints" */
    QBM_TOO_FEW = 6,         /* "Less bitmaps found than specified in header extension" */
    QBM_TABLE = 7,           /* "Could not read bitmap_table table from image for bitmap '%s': Invalid argument" */
    QBM_DATA = 8,            /* "Could not read bitmap '%s' from image: Invalid argument" */
    QBM_DIR_EIO = 9,         /* "Failed to read bitmap directory: Input/output error" */
    QBM_TABLE_EIO = 10,      /* "Could not read bitmap_table table from image for bitmap '%s': Input/output error" */
};

enum qcow2_cluster_type {
    QCT_UNALLOCATED,
    QCT_ZERO_PLAIN,
    QCT_ZERO_ALLOC,
    QCT_NORMAL,
    QCT_COMPRESSED,
};

struct qcow2 {
    const struct reader *r;
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint64_t size; /* virtual size in bytes */
    uint64_t incompat, compat, autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint32_t compression_type;
    uint32_t crypt_method;
    uint64_t backing_offset;
    uint32_t backing_size;
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint64_t reftable_entries;
    uint64_t snapshots_offset;
    uint32_t nb_snapshots;

    bool extl2;
    bool has_data_file;
    uint32_t l2_entry_bytes; /* 8, or 16 with extended L2 */
    uint32_t l2_bits;        /* log2 entries per L2 table */
    uint64_t l2_entries;
    uint32_t refblock_bits;  /* log2 entries per refcount block */
    uint64_t refcount_max;
    uint32_t csize_shift;
    uint64_t csize_mask;
    uint64_t cluster_offset_mask;

    uint32_t flags; /* Q2F_* */
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_offset, bitmap_dir_size;

    uint16_t backing_len, backing_format_len, data_file_len;
    uint8_t backing[LIMIT_NAME_MAX];
    uint8_t backing_format[16];
    uint8_t data_file[LIMIT_NAME_MAX];

    uint64_t *reftable; /* loaded by qcow2_load_reftable */

    /* The full-disk-encryption header extension (LUKS): where the header
     * clusters are, and the opened header (guest/qcow2/crypt_header.c). */
    uint64_t crypto_offset, crypto_length;
    void *crypto;
};

/* Opens the LUKS header in the clusters the crypto header extension names
 * (qcrypto_block_open with QCRYPTO_BLOCK_OPEN_NO_IO): sets q->crypto. A weak
 * symbol in header.c: programs that do not link crypt_header.c skip it. */
int qcow2_crypto_open_header(struct qcow2 *q);

/* Opening modes: check mode skips what qemu skips with BDRV_O_CHECK. */
#define QCOW2_OPEN_CHECK 1u
/* BDRV_O_NO_IO (qemu-img info): a LUKS image may lack its crypto header. */
#define QCOW2_OPEN_NO_IO 2u
/* Internal flag bit beyond the Q2F_* the host sees. */
#define Q2F_HAS_CRYPTO_HEADER (1u << 31)

/*
 * Decodes and validates the header at input r (in qcow2_do_open's order).
 * On failure emits NAME/ERROR records for input r->input and returns -1.
 */
int qcow2_open(struct qcow2 *q, const struct reader *r, uint32_t mode);

/* Emits QCOW2_INFO and the NAME records (backing file/format, data file). */
int qcow2_emit_info(const struct qcow2 *q);

/* One internal snapshot's L1 table, as the check walks it. */
struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    uint32_t extra_size;
    uint64_t id_offset; /* id string and name in the file (not NUL-terminated) */
    uint64_t name_offset;
    uint16_t id_len, name_len;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec, vm_state_size, icount;
    uint64_t disk_size; /* UINT64_MAX: the extra data does not record it */
};

/* BAD_SNAPSHOT_TABLE a0 values beyond qcow2_validate_table's 1 (too large)
 * and 2 (offset invalid). */
#define QSNAP_EXTRA_TOO_LARGE 3 /* a1 = entry index, a2 = extra_data_size */
#define QSNAP_TOO_BIG 4     /* a1 = overhanging snapshots (nb - index), a2 = the entry's extra_data_size;
                             * *table_size = the length of the entries before it */
#define QSNAP_READ_FAILED 5 /* "Failed to read snapshot table: Input/output error" */

/*
 * qcow2_do_read_snapshots without repair: walks the snapshot table, fills
 * list (nb_snapshots entries, may be NULL) and *table_size. Returns 0, or a
 * QSNAP_* kind with arg1 and arg2 set (QSNAP_READ_FAILED when qemu's read
 * would fail), or -1 on I/O error.
 */
/* check -r all (qcow2_do_read_snapshots with repair): set, entries with
 * more than 1024 bytes of extra data are walked past (their extra_size
 * kept) instead of stopping the walk; qemu keeps their first 1024 bytes
 * when it writes the table anew. */
extern int qcow2_snapshots_drop_extra;
int qcow2_read_snapshots(const struct qcow2 *q, struct qcow2_snapshot *list, uint64_t *table_size,
                         uint64_t *arg1, uint64_t *arg2);

/* info: SNAPSHOT records (packed batches) for every internal snapshot, in
 * one pass over the table, BITMAP records for
 * every persistent bitmap (both validated by qcow2_open already). */
int qcow2_emit_snapshots(const struct qcow2 *q);
/* qcow2_snapshot_load_tmp: reads snapshot `index` (0-based) instead of the
 * active layer: its L1 table, validated as qemu does, replaces q's. The
 * virtual size stays the image's. */
int qcow2_use_snapshot(struct qcow2 *q, uint64_t index);
int qcow2_emit_bitmaps(const struct qcow2 *q);
/* qcow2_validate_table(..., "Snapshot L1 table") as goto/delete do it: 0, or
 * -1 after the ERROR record qcow2_use_snapshot sends for the same fault. */
int qcow2_validate_snapshot_l1(const struct qcow2 *q, uint64_t offset, uint64_t entries);

/* Reads the whole refcount table (<= 8 MiB) into q->reftable. */
int qcow2_load_reftable(struct qcow2 *q);

enum qcow2_cluster_type qcow2_cluster_type(const struct qcow2 *q, uint64_t l2e);

/* Compressed descriptor -> host offset and byte length (qemu's semantics). */
void qcow2_compressed_range(const struct qcow2 *q, uint64_t l2e, uint64_t *off, uint64_t *len);

/*
 * Windowed access to a big-endian u64 table (L1): reads up to 1 MiB at a
 * time so huge L1 tables need not be resident.
 */
struct table_window {
    const struct reader *r;
    uint64_t offset;  /* table start in the file */
    uint64_t entries; /* table length */
    uint64_t first;   /* index of buf[0] */
    uint64_t count;   /* valid entries in buf */
    uint64_t cap;     /* buf capacity in entries */
    uint8_t *buf;
};
int table_window_init(struct table_window *w, const struct reader *r, uint64_t offset, uint64_t entries);
/* The same with a buffer of `bytes` (a multiple of 8). */
int table_window_init_sized(struct table_window *w, const struct reader *r, uint64_t offset, uint64_t entries,
                            uint64_t bytes);
/* Entry i (< entries) into *v; -1 on read failure. */
int table_window_get(struct table_window *w, uint64_t i, uint64_t *v);

/*
 * A 1 MiB read window over arbitrary bytes (the snapshot table): sequential
 * small reads cost one read per MiB. With buf NULL (no memory) every read
 * goes to the reader.
 */
struct byte_window {
    const struct reader *r;
    uint64_t start, len, cap;
    uint8_t *buf;
};
int byte_window_init(struct byte_window *w, const struct reader *r);
/* Like reader_read: 0, or -1 on overflow or a failed read. */
int byte_window_read(struct byte_window *w, uint64_t off, void *dst, uint64_t n);

/*
 * A small cache of whole clusters (L2 tables, refcount blocks), sized from
 * guest RAM at init. Returns a pointer valid until the next cache call.
 */
struct cluster_cache {
    const struct reader *r;
    uint64_t cluster_size;
    uint32_t slots;
    uint64_t tick;
    uint64_t *offsets; /* UINT64_MAX = empty */
    uint64_t *used;
    uint8_t *data;
    /* Read-ahead: metadata clusters tend to sit close together, and every
     * read is a VM exit, so misses read a larger window of the file. */
    uint8_t *win;
    uint64_t win_off, win_len, win_cap;
};
int cluster_cache_init(struct cluster_cache *c, const struct reader *r, uint64_t cluster_size, uint32_t slots);
const uint8_t *cluster_cache_get(struct cluster_cache *c, uint64_t offset);

/* Refcount of entry `index` in a refcount block of width 2^order bits. */
uint64_t qcow2_refblock_entry(const uint8_t *block, uint32_t order, uint64_t index);

/* Refcount of a host cluster per the on-disk structures: 0 on success, -1 if
 * the refcount block offset is unaligned (qemu's -EIO), -2 on read error. */
int qcow2_get_refcount(const struct qcow2 *q, struct cluster_cache *c, uint64_t cluster, uint64_t *out);

#endif
