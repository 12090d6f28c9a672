/*
 * A disk chain: input `first` the top layer, each next input the backing
 * file of the one before, every layer opened through its format's
 * layer_ops (guest/chain/layer.h). Reading guest-virtual byte ranges
 * (read.c) and qemu's bdrv_block_status_above over the chain (status.c)
 * never name a format; map's view of the same chain is map_status.c.
 */
#ifndef INSTAR_CHAIN_CHAIN_H
#define INSTAR_CHAIN_CHAIN_H
#include "layer.h"
#include "extents.h"

/* One layer plus what the chain keeps for it. */
struct chain_layer {
    struct layer l;
    struct reader data_r;     /* the attached data file, when l.data_file */
    struct file_extents ext;  /* the file's holes, for LS_RAW runs (status.c) */
};

struct chain {
    struct chain_layer layers[LIMIT_CHAIN_MAX];
    uint32_t n;
    uint64_t size;   /* the top layer's virtual size */
    bool read_data;  /* set when the last read copied stored bytes (not only zeroes) */
    /* batch: reads of stored bytes are queued and issued as one READV per
     * input at the end of chain_read (a VM exit costs ~30 us; a 2 MiB chunk
     * of a qcow2 image can be dozens of separate cluster runs). */
    bool batch;
    /* defer: with batch, chain_read leaves the queue for chain_flush, so a
     * caller reading many runs of one chunk pays one exit for all of them;
     * the buffers must not be used before the flush. */
    bool defer;
    /* precise: chain_status answers with the layers' precise runs even
     * where qemu's driver reports all data (qemu_all_data). convert sets
     * it: qemu reads those runs and finds zeroes, so what it writes is the
     * same, but a 64 TiB sparse VHDX then costs its allocated blocks, not
     * 64 TiB of zeroes. compare keeps qemu's view (-s compares it). */
    bool precise;
    struct io_seg segs[LIMIT_IO_SEGS_MAX];
    uint32_t n_segs;
    uint32_t seg_input;
    uint64_t seg_bytes;
};

/* chain_open_range flags. CHAIN_F_MAP: map's view (qemu-img map): layers
 * answer LS_RECURSE, external data files are neither required nor attached. */
#define CHAIN_F_MAP 1u

/*
 * Opens the chain over inputs [first, first+count): input 0 is probed (the
 * host may leave its format FMT_AUTO), lower layers must be named by the
 * host (it resolved them through its allowlist). The chain ends at a layer
 * without a backing file. data_input is the input index of the top layer's
 * external data file, or 0 when none is attached (the chain then stops
 * before that input). Emits an ERROR record and returns -1 on failure.
 */
int chain_open_range(struct chain *c, uint32_t first, uint32_t count, uint32_t data_input, uint32_t flags);

/* The same over all attached inputs (convert: one chain). */
int chain_open(struct chain *c, uint32_t data_input);

/* Reads [off, off+len) of the top layer's virtual disk (must lie inside it). */
int chain_read(struct chain *c, uint64_t off, uint64_t len, uint8_t *buf);

/* Issues the reads chain_read queued in defer mode. */
int chain_flush(struct chain *c);

/* chain_status bits, qemu's BDRV_BLOCK_* meaning as
 * bdrv_block_status_above(bs, NULL) reports them. */
#define CS_DATA 1u /* with CS_ZERO (a hole under a recursed data run): reads as zeroes */
#define CS_ZERO 2u
#define CS_ALLOCATED 4u
#define CS_OFFSET_VALID 8u
#define CS_EOF 16u /* the run reaches the end (compare -s sees it) */

/*
 * Block status of the whole chain at [off, off+len) (inside the disk, len >
 * 0), as qemu-img convert and compare see it through
 * bdrv_block_status_above: sets *n (0 < *n <= len) to the length of the
 * leading run and returns its CS_* bits; CS_DATA means the run may hold
 * stored bytes (it must be read), otherwise it reads as zeroes without
 * reading (zero clusters, unallocated everywhere, holes of raw files, past
 * a layer's end). -1 after an ERROR record.
 */
int chain_status(struct chain *c, uint64_t off, uint64_t len, uint64_t *n);

/*
 * The top layer's own block status (qemu's bdrv_block_status, which
 * qemu-img convert -B asks): as chain_status, but a run the top layer does
 * not allocate returns 0 (left to the backing file), or CS_ZERO where qemu
 * calls it zero (a qcow2/vmdk layer without a backing file, or a run
 * starting past the backing file's end). A layer whose qemu driver has no
 * block_status answers DATA or ZERO|ALLOCATED from its precise runs.
 */
int chain_top_status(struct chain *c, uint64_t off, uint64_t len, uint64_t *n);
#endif
