/*
 * One layer of a disk chain as the format-independent chain code sees it.
 * A format fills one `struct layer_ops` (guest/<fmt>/layer.c) and one row of
 * guest/chain/formats.c; the chain walker (guest/chain/), map, convert,
 * compare and measure's scan call only these three functions and never name
 * a format. Model: kvmtool's disk_image_operations, QEMU's BlockDriver.
 *
 * What the chain does around them (guest/chain/status.c, read.c,
 * map_status.c), so a format answers only for itself: clamping to
 * l->length and reading zeroes past it, asking the backing layer for runs
 * with neither LS_DATA nor LS_ZERO, io.c's ALLOCATED/EOF bits, batching
 * reads of LS_OFFSET_VALID runs into READV, asking the host file about
 * LS_RAW runs, and attaching an external data file (l->data_file).
 */
#ifndef INSTAR_CHAIN_LAYER_H
#define INSTAR_CHAIN_LAYER_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"

/* block_status bits: the answer of the format driver itself, with qemu's
 * BDRV_BLOCK_* meaning (io.c's generic logic lives in guest/chain/). */
#define LS_DATA 1u          /* the run holds stored bytes: with LS_OFFSET_VALID
                             * they are read at *host of *l->data, with
                             * LS_COMPRESSED through ops->read */
#define LS_ZERO 2u          /* the run reads as zeroes */
#define LS_OFFSET_VALID 8u  /* *host is where the bytes are, in *l->data */
#define LS_COMPRESSED 16u   /* the bytes come only through ops->read */
#define LS_RAW 32u          /* BDRV_BLOCK_RAW (with LS_OFFSET_VALID): the run is
                             * [*host, *host+*len) of *l->data verbatim; the
                             * chain asks the file for holes (they read as zero) */
#define LS_RECURSE 64u      /* BDRV_BLOCK_RECURSE on an LS_DATA|LS_OFFSET_VALID
                             * run: map asks the file whether it is a hole.
                             * Only answered when the caller set l->want_recurse
                             * (qcow2: metadata preallocation) */
/* 0 (none of DATA/ZERO): unallocated here, the backing layer decides (zero
 * without one). LS_OFFSET_VALID alone is such a run too (qcow2's allocated
 * but unwritten subclusters): map reports it, reads go to the backing layer. */

struct layer;

struct layer_ops {
    uint32_t format; /* FMT_* */
    /*
     * Opens the layer over l->r (the chain set it to the input, and l->fmt,
     * l->ops, l->data = &l->r, l->want_recurse). Sets l->length (qemu's
     * bdrv_getlength: total_sectors * 512), l->has_backing, l->data_file,
     * l->qemu_all_data and l->state (the format's own: rt_alloc, or a
     * static slot per input index l->r.input < LIMIT_MAX_INPUTS).
     * Checks every image-derived number it keeps. Emits an ERROR record and
     * returns -1 on failure.
     */
    int (*open)(struct layer *l);
    /*
     * Status of [pos, pos+bytes), 0 < bytes, pos+bytes <= l->length: sets
     * *len (0 < *len <= bytes) to the leading run with one status and *host
     * when LS_OFFSET_VALID. Returns LS_* bits or -1 after an ERROR record.
     * The runs must be precise enough to read from: a format whose qemu
     * driver reports less (vhdx has no block_status in qemu 7.2) sets
     * l->qemu_all_data and still answers precisely here.
     */
    int (*block_status)(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host);
    /* Reads [pos, pos+len) of a run block_status called LS_COMPRESSED;
     * NULL for formats without such runs (and in programs that never read:
     * qcow2's is a weak reference, see guest/qcow2/layer.c). 0 or -1 after
     * an ERROR record. */
    int (*read)(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf);
};

struct layer {
    const struct layer_ops *ops;
    struct reader r;           /* the image file */
    const struct reader *data; /* where LS_OFFSET_VALID offsets point: r or a data file */
    void *state;               /* the format's own */
    uint64_t length;           /* readable bytes: bdrv_getlength */
    uint32_t fmt;              /* FMT_* */
    bool has_backing;          /* the next input is this layer's backing file */
    /* LS_OFFSET_VALID offsets point into an external data file (qcow2's
     * data_file): the read path attaches the host's data input as l->data
     * (GERR_DATA_FILE_REQUIRED without one); map leaves it unattached. */
    bool data_file;
    /* Set by the caller before open: answer LS_RECURSE where qemu would
     * (only map asks; qcow2 then pays for its preallocation detection). */
    bool want_recurse;
    /* qemu's driver has no block_status: map, measure and compare -s (and
     * convert's chain_status) see DATA|ALLOCATED without an offset over the
     * whole layer; chain_read still reads through the precise block_status. */
    bool qemu_all_data;
};

#endif
