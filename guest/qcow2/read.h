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
};

struct qread_chain {
    struct qread_layer layers[LIMIT_MAX_INPUTS];
    uint32_t n;
    uint64_t size;   /* the top layer's virtual size */
    bool read_data;  /* set when the last read copied stored bytes (not only zeroes) */
};

/*
 * Opens the chain from the attached inputs. data_input is the input index of
 * the top layer's external data file, or 0 when none is attached (the chain
 * then stops before that input). Emits an ERROR record and returns -1 on
 * failure.
 */
int qread_open(struct qread_chain *c, uint32_t data_input);

/* Reads [off, off+len) of the top layer's virtual disk (must lie inside it). */
int qread_read(struct qread_chain *c, uint64_t off, uint64_t len, uint8_t *buf);
#endif
