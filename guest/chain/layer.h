/*
 * One layer of a disk chain as the format-independent chain code sees it.
 * A format fills one `struct layer_ops` (guest/<fmt>/layer.c) and one row of
 * guest/chain/formats.c; the chain walker (guest/chain/), map, convert,
 * compare and measure's scan call only these three functions and never name
 * a format. Model: kvmtool's disk_image_operations, QEMU's BlockDriver.
 */
#ifndef INSTAR_CHAIN_LAYER_H
#define INSTAR_CHAIN_LAYER_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"

/* block_status bits: the answer of the format driver itself, with qemu's
 * BDRV_BLOCK_* meaning (io.c's generic logic lives in guest/chain/). */
#define LS_DATA 1u          /* the run may hold stored bytes: it must be read */
#define LS_ZERO 2u          /* the run reads as zeroes */
#define LS_OFFSET_VALID 8u  /* *host is where the bytes are, in *l->data */
#define LS_COMPRESSED 16u   /* the bytes come only through ops->read */
#define LS_RAW 32u          /* BDRV_BLOCK_RAW: ask the file below (holes read as zero) */
/* 0 (none of DATA/ZERO): unallocated here, the backing layer decides (zero
 * without one). */

struct layer;

struct layer_ops {
    uint32_t format; /* FMT_* */
    /*
     * Opens the layer over l->r (set by the caller to the input). Sets
     * l->length (qemu's bdrv_getlength: total_sectors * 512), l->has_backing,
     * l->state (format state from rt_alloc) and l->data (defaults to &l->r).
     * Emits an ERROR record and returns -1 on failure.
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
     * NULL for formats without such runs. 0 or -1 after an ERROR record. */
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
    /* qemu's driver has no block_status: map, measure and compare -s see
     * DATA|ALLOCATED without an offset over the whole layer. */
    bool qemu_all_data;
};

#endif
