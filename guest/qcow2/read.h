/*
 * Reading guest-virtual byte ranges of a disk: a chain of layers (input 0 the
 * top, input i+1 the backing file of input i), each raw or qcow2, resolved
 * the way qemu's qcow2 driver reads (qcow2_co_preadv_part): normal clusters
 * and subclusters from the image or its external data file, zero clusters as
 * zeroes, unallocated ranges from the backing layer (zeroes past its end or
 * without one), compressed clusters decompressed one cluster at a time.
 */
#ifndef INSTAR_QCOW2_READ_H
#define INSTAR_QCOW2_READ_H
#include "map.h"
#include "compress.h"

struct qread_layer {
    struct reader r;
    uint32_t fmt;
    uint64_t length; /* readable bytes: virtual size, or raw file size */
    struct qcow2 q;
    struct qcow2_mapper m;
    const struct reader *data; /* where data clusters live: r or the data file */
    struct reader data_r;
    struct qcow2_decompressor dec;
    uint8_t *cbuf;     /* compressed bytes of one cluster (<= 2 clusters) */
    uint8_t *cluster;  /* the last decompressed cluster ... */
    uint64_t cluster_l2e; /* ... and the descriptor it came from; 0 = none */
    /* Raw layers: the host file's data extents inside [ext_from, ext_to),
     * fetched with one EXTENTS hypercall per window (qread_status). */
    struct extent ext[LIMIT_EXTENTS_MAX];
    uint32_t n_ext;
    uint64_t ext_from, ext_to;
};

struct qread_chain {
    struct qread_layer layers[LIMIT_MAX_INPUTS];
    uint32_t n;
    uint64_t size;   /* the top layer's virtual size */
    bool read_data;  /* set when the last read copied stored bytes (not only zeroes) */
    /* batch: reads of stored bytes are queued and issued as one READV per
     * input at the end of qread_read (a VM exit costs ~30 us; a 2 MiB chunk
     * of a qcow2 image can be dozens of separate cluster runs). */
    bool batch;
    /* defer: with batch, qread_read leaves the queue for qread_flush, so a
     * caller reading many runs of one chunk pays one exit for all of them;
     * the buffers must not be used before the flush. */
    bool defer;
    struct io_seg segs[LIMIT_IO_SEGS_MAX];
    uint32_t n_segs;
    uint32_t seg_input;
    uint64_t seg_bytes;
};

/*
 * Opens the chain from the attached inputs. data_input is the input index of
 * the top layer's external data file, or 0 when none is attached (the chain
 * then stops before that input). Emits an ERROR record and returns -1 on
 * failure.
 */
int qread_open(struct qread_chain *c, uint32_t data_input);

/* Issues the reads qread_read queued in defer mode. */
int qread_flush(struct qread_chain *c);

/* The same over inputs [first, first+count) only (compare opens two chains
 * side by side; the host names every format there). */
int qread_open_range(struct qread_chain *c, uint32_t first, uint32_t count, uint32_t data_input);

/* Reads [off, off+len) of the top layer's virtual disk (must lie inside it). */
int qread_read(struct qread_chain *c, uint64_t off, uint64_t len, uint8_t *buf);

/* qread_status bits, qemu's BDRV_BLOCK_* meaning as
 * bdrv_block_status_above(bs, NULL) reports them. */
#define QRS_DATA 1u
#define QRS_ZERO 2u
#define QRS_ALLOCATED 4u
#define QRS_OFFSET_VALID 8u
#define QRS_EOF 16u /* the run reaches the end (compare -s sees it) */

/*
 * Block status of the whole chain at [off, off+len) (inside the disk, len >
 * 0), as qemu-img convert and compare see it through
 * bdrv_block_status_above: sets *n (0 < *n <= len) to the length of the
 * leading run and returns its QRS_* bits; QRS_DATA means the run may hold
 * stored bytes (it must be read), otherwise it reads as zeroes without
 * reading (zero clusters, unallocated everywhere, holes of raw files, past
 * a layer's end). -1 after an ERROR record.
 */
int qread_status(struct qread_chain *c, uint64_t off, uint64_t len, uint64_t *n);
#endif
