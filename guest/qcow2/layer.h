/*
 * qcow2 as a chain layer (guest/chain/layer.h): the state behind l->state
 * and the pieces of qcow2_layer_ops that live in their own files, so a
 * program links only what it uses (map never decompresses; only map
 * detects metadata preallocation).
 */
#ifndef INSTAR_QCOW2_LAYER_H
#define INSTAR_QCOW2_LAYER_H
#include "../chain/layer.h"
#include "map.h"
#include "compress.h"

struct qcow2_layer {
    struct qcow2 q;
    struct qcow2_mapper m;
    bool prealloc; /* qcow2_detect_metadata_preallocation's verdict (map only) */
    /* compressed.c: the read op's cluster buffers */
    struct qcow2_decompressor dec;
    uint8_t *cbuf;        /* compressed bytes of one cluster (<= 2 clusters) */
    uint8_t *cluster;     /* the last decompressed cluster ... */
    uint64_t cluster_l2e; /* ... and the descriptor it came from; 0 = none */
    void *crypt;          /* crypt_layer.c: an encrypted image's key */
};

extern const struct layer_ops qcow2_layer_ops;

/* The read op for LS_COMPRESSED runs (compressed.c). */
int qcow2_layer_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf);

/* qcow2_detect_metadata_preallocation (prealloc.c): 1 when the image counts
 * as metadata-preallocated, 0 when not, -1 after an ERROR record. */
int qcow2_detect_prealloc(struct qcow2_layer *s, const struct reader *r);
#endif
