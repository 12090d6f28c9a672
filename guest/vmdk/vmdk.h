/*
 * VMDK reader: qemu 7.2's block/vmdk.c open and read paths, read-only.
 *
 * A vmdk image is either a sparse file opened directly (VMDK4 "KDMV":
 * monolithicSparse, streamOptimized; VMDK3 "COWD") or a text descriptor
 * naming extent files (monolithicFlat, twoGbMaxExtent*, vmfs, ...). The
 * descriptor is parsed here, in the guest; extent files are never opened by
 * name: the host checks each name the guest reports (VMDK_EXTENT records)
 * against its allowlist and attaches the allowed files as the inputs right
 * after the image's own, in descriptor order (one input per extent that
 * names a file). Tables are read through small windows, so memory does not
 * follow what the image claims.
 *
 * Errors are ERROR records with code GERR_FORMAT, a0 = enum vmdk_error;
 * texts qemu quotes (a createType, an extent line) come first as a NAME
 * record of kind NAME_ERROR_TEXT. lib/formats/vmdk/errors.ts holds qemu's
 * words.
 */
#ifndef INSTAR_VMDK_H
#define INSTAR_VMDK_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"

/* Extent files one image may name: every one is an input of the run, right
 * after the image itself (limits.VMDK_MAX_FILES; the run's inputs are
 * bounded by LIMIT_MAX_INPUTS). */
#define VMDK_MAX_FILES LIMIT_VMDK_MAX_FILES
/* qemu reads at most 1 MiB - 1 of a descriptor (vmdk_read_desc). */
#define VMDK_DESC_MAX ((1u << 20) - 1)
/* qemu's DESC_SIZE: the bytes vmdk_read_cid / vmdk_parent_open search. */
#define VMDK_DESC_SIZE (20u * 512)
/* A compressed grain is inflated into one buffer: instar's cap (qemu: 1 GiB). */
#define VMDK_COMPRESSED_GRAIN_MAX (4ull << 20)

/* ERROR(GERR_FORMAT).a0: qemu-img prints "Could not open 'FILE': " + text. */
enum vmdk_error {
    VMDK_E_IO = 1,              /* "Input/output error" (a1 offset) */
    VMDK_E_TOO_SMALL = 2,       /* "File is too small, not a valid image" */
    VMDK_E_INVALID_DESC = 3,    /* "invalid VMDK image descriptor" */
    VMDK_E_UNSUPPORTED_TYPE = 4,/* "Unsupported image type '%s'" (text) */
    VMDK_E_INVALID_LINE = 5,    /* "Invalid extent line: %s" (text) */
    VMDK_E_NOT_VMDK = 6,        /* "Image not in VMDK format" */
    VMDK_E_FOOTER_READ = 7,     /* "Failed to read footer: Input/output error" */
    VMDK_E_INVALID_FOOTER = 8,  /* "Invalid footer" */
    VMDK_E_VERSION = 9,         /* "Unsupported VMDK version %u" (a1) */
    VMDK_E_L2_SIZE = 10,        /* "L2 table size too big" */
    VMDK_E_L1_ENTRY = 11,       /* "L1 entry size is invalid" */
    VMDK_E_TRUNCATED = 12,      /* "File truncated, expecting at least %ld bytes" (a1) */
    VMDK_E_GRANULARITY = 13,    /* "Invalid granularity, image may be corrupt" */
    VMDK_E_L1_SIZE = 14,        /* "L1 size too big" */
    VMDK_E_L1_READ = 15,        /* "Could not read l1 [backup ]table from extent '%s'" (a1 = the extent file's
                                   input - the image's, a2 = 1: backup) */
    VMDK_E_INVAL = 16,          /* "Invalid argument" (-EINVAL without a message: CID, parent hint) */
    VMDK_E_READ = 17,           /* a read of the disk failed as qemu's does: a1 = errno (EIO, EINVAL) */
    VMDK_E_TOO_MANY = 18,       /* instar: more than VMDK_MAX_FILES extent files (a1 = count) */
    VMDK_E_NESTED = 19,         /* instar: an extent that is itself a descriptor */
    /* 20: unused (was instar's refusal of SESPARSE extents) */
    VMDK_E_GRAIN_CAP = 21,      /* instar: compressed grain above VMDK_COMPRESSED_GRAIN_MAX (a1 bytes) */
    VMDK_E_TOO_LARGE = 22,      /* "Could not refresh total sector count: File too large" */
    VMDK_E_NO_FILE = 23,        /* the host attached fewer extent files than the descriptor names */
    /* seSparse (sesparse.c): qemu's check_se_sparse_const_header / _volatile_header */
    VMDK_E_SE_MAGIC = 24,       /* "Bad const header magic: 0x%016llx" (a1) */
    VMDK_E_SE_VERSION = 25,     /* "Unsupported version: 0x%016llx" (a1) */
    VMDK_E_SE_GRAIN = 26,       /* "Unsupported grain size: %llu" (a1) */
    VMDK_E_SE_GT_SIZE = 27,     /* "Unsupported grain table size: %llu" (a1) */
    VMDK_E_SE_FLAGS = 28,       /* "Unsupported flags: 0x%016llx" (a1) */
    VMDK_E_SE_RESERVED = 29,    /* "Unsupported reserved bits: %s" (text: four 0x%016llx) */
    VMDK_E_SE_PAD = 30,         /* "Unsupported non-zero const header padding" */
    VMDK_E_SE_VOL_READ = 31,    /* "Could not read volatile header from file '%s': Input/output error"
                                   (a1 offset, a2 = the extent file's input - the image's) */
    VMDK_E_SE_VOL_MAGIC = 32,   /* "Bad volatile header magic: 0x%016llx" (a1) */
    VMDK_E_SE_DIRTY = 33,       /* "Image is dirty, Replaying journal not supported" */
    VMDK_E_SE_VOL_PAD = 34,     /* "Unsupported non-zero volatile header padding" */
    VMDK_E_SE_READ_ONLY = 35,   /* "No write support for seSparse images available" (a read-write open) */
    /* A streamOptimized stream read in one pass (stream.c); a1, a2 as noted */
    VMDK_E_ST_TRUNCATED = 40,   /* the stream ends inside the item at byte a1 */
    VMDK_E_ST_NO_EOS = 41,      /* the stream ends at byte a1 without an end-of-stream marker */
    VMDK_E_ST_LBA = 42,         /* a grain at sector a1 lies past the disk's end (a2 sectors) */
    VMDK_E_ST_ORDER = 43,       /* a grain at sector a1 starts before the previous grain's end (a2) */
    VMDK_E_ST_GRAIN_SIZE = 44,  /* a compressed grain of a1 bytes at byte a2 is larger than a grain allows */
    VMDK_E_ST_INFLATE = 45,     /* the grain at byte a1 does not inflate to a whole grain */
    VMDK_E_ST_MARKER = 46,      /* a marker of type a1 at byte a2 is unknown or has a wrong size */
    VMDK_E_ST_FOOTER = 47,      /* the footer at byte a1 does not match the header */
    VMDK_E_ST_HEADER = 48,      /* the header region before the first marker (a1 bytes) is too large */
    VMDK_E_ST_PARENT = 49,      /* the stream names a parent (parentFileNameHint) */
    VMDK_E_ST_TABLES = 50,      /* the header's grain directory or a grain table (at sector a1) lies outside the
                                   header region */
    VMDK_E_ST_MISMATCH = 51,    /* the grain for sector a1 lies at stream sector a2, not where its table says */
};

enum vmdk_kind { VMDK_SPARSE4 = 1, VMDK_SPARSE3 = 2, VMDK_FLAT = 3, VMDK_SESPARSE = 4 };

/* seSparse tables are read through windows of this many 64-bit entries
 * (one grain directory window, one grain table window per extent). */
#define VMDK_SE_WINDOW 512u

struct vmdk_extent {
    const struct reader *r;   /* the file: the image or an attached input */
    struct reader own;        /* reader over an attached input */
    uint32_t kind;            /* enum vmdk_kind */
    bool compressed, has_marker, has_zero_grain, hosted, opened;
    char type[11];            /* descriptor type word; "" when hosted */
    uint16_t name_len;
    char name[512];           /* file name as the descriptor writes it */
    uint64_t sectors, end_sector;
    uint64_t flat_offset;     /* bytes (FLAT) */
    uint64_t desc_flat_sectors; /* the descriptor's offset column */
    uint64_t cluster_sectors;
    uint64_t l1_offset;       /* bytes */
    uint32_t l1_size, l1_entry_sectors, l2_size;
    uint64_t se_tables, se_grains; /* seSparse: the grain tables' and grains' sector offsets */
    /* one grain table cached (qemu keeps 16); seSparse: one window of one */
    uint32_t *l2;
    uint64_t l2_cached;       /* sector offset of the cached table + 1 (seSparse: << 4 | window); 0 none */
    uint64_t gd_base;         /* first grain directory index in the window + 1; 0 none */
    bool gd_empty;            /* the last lookup found no grain table (GD entry 0) */
};

struct vmdk {
    const struct reader *r;   /* the image (descriptor or sparse file) */
    uint32_t n;               /* extents */
    struct vmdk_extent *ext;  /* n entries */
    uint32_t files;           /* extents that name a file (inputs after r's) */
    bool descriptor;          /* opened from a text descriptor */
    bool need_files;          /* a descriptor whose files are not attached yet */
    bool has_parent;
    uint32_t cid, parent_cid;
    uint64_t total_sectors;
    uint16_t create_type_len;
    char create_type[128];
    uint16_t parent_len;
    char parent[1024];
    /* compressed-grain buffers (grain.c) */
    uint8_t *cbuf, *grain;
    uint64_t grain_at;        /* extent index + 1 << 48 | cluster offset of the cached grain; 0 none */
    uint64_t grain_len, grain_cap;
    void *z;
};

/* vmdk_open flags */
#define VMDK_OPEN_SCAN 1u /* descriptor only: report extents, attach nothing (info's first pass) */
#define VMDK_OPEN_RW 2u   /* qemu's read-write open (BDRV_O_RDWR): seSparse extents refuse it */

/* Opens the image on r (input r->input); extents naming files are read from
 * inputs r->input + 1 ... in descriptor order unless VMDK_OPEN_SCAN. */
int vmdk_open(struct vmdk *v, const struct reader *r, uint32_t flags);
/* IMAGE_INFO, NAME (create type, parent hint) and VMDK_EXTENT records. */
int vmdk_emit_info(const struct vmdk *v);

/* qemu's get_cluster_offset for a read: VMDK_OK/UNALLOC/ZEROED/ERROR. */
#define VMDK_OK 0
#define VMDK_ERROR (-1)
#define VMDK_UNALLOC (-2)
#define VMDK_ZEROED (-3)
int vmdk_cluster(struct vmdk *v, struct vmdk_extent *e, uint64_t offset, uint64_t *cluster_offset);
/* The extent holding byte offset pos of the disk, or NULL. */
struct vmdk_extent *vmdk_find_extent(struct vmdk *v, uint64_t pos);
/* Emits ERROR(GERR_FORMAT, code, a1, a2) for v's image; returns -1. */
int vmdk_fail(const struct vmdk *v, uint32_t code, uint64_t a1, uint64_t a2);
/* Emits a NAME(ERROR_TEXT) then the error; returns -1. */
int vmdk_fail_text(const struct vmdk *v, uint32_t code, const char *s, uint64_t len);

/* vmdk_add_extent + vmdk_init_tables' bounds (the tables are read lazily):
 * appends e (its kind and reader set) to v. 0, or -1 after an ERROR record. */
int vmdk_add_extent(struct vmdk *v, struct vmdk_extent *e, bool flat, uint64_t sectors, uint64_t l1_offset,
                    uint64_t l1_backup, uint32_t l1_size, uint32_t l2_size, uint64_t cluster_sectors);
/* seSparse (sesparse.c): vmdk_open_se_sparse on e (its reader set), and
 * get_cluster_offset's seSparse branch for the extent-relative byte offset
 * (l1_index already checked against l1_size). */
int vmdk_open_sesparse(struct vmdk *v, struct vmdk_extent *e);
int vmdk_se_cluster(struct vmdk_extent *e, uint64_t offset, uint32_t l1_index, uint64_t *cluster_offset);

/* zlib's uncompress() of n bytes at src into at most cap bytes at dst (grain.c):
 * 0 and *out = the bytes produced when the stream ends inside cap, else -1. */
int vmdk_inflate(struct vmdk *v, const uint8_t *src, uint64_t n, uint8_t *dst, uint64_t cap, uint64_t *out);
/* The one-pass reader of a streamOptimized stream (stream.c, ops.VMDK_STREAM). */
int vmdk_stream_run(void);
#ifdef INSTAR_HOSTED
void vmdk_stream_release(void);
#endif

/* qemu's vmdk_co_check over the image on r (extent files from the next inputs):
 * CHECK_MSG + CHECK records. */
int vmdk_check(const struct reader *r);

/* The descriptor parser (desc.c), over a NUL-terminated buffer. */
struct vmdk_desc_extent {
    char access[11], type[11];
    int64_t sectors, flat_offset;
    uint16_t name_len;
    char name[512];
};
/* Parses the createType (into v) and the extent lines qemu accepts; calls
 * add() for each. Returns 0, or -1 after an ERROR record. */
int vmdk_parse_desc(struct vmdk *v, const char *buf, uint64_t len,
                    int (*add)(struct vmdk *v, const struct vmdk_desc_extent *d, void *ctx), void *ctx);
/* strstr-based searches qemu makes over the first DESC_SIZE bytes. */
int vmdk_read_cids(struct vmdk *v, const char *desc, uint64_t len);
#endif
