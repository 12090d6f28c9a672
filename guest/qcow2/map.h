/* Block status of a qcow2 layer (qemu's qcow2_co_block_status over
 * qcow2_get_host_offset), returned as maximal runs. */
#ifndef INSTAR_QCOW2_MAP_H
#define INSTAR_QCOW2_MAP_H
#include "qcow2.h"

/* Status bits of one run (qemu's BDRV_BLOCK_* meaning). */
#define QST_DATA 1u
#define QST_ZERO 2u
#define QST_OFFSET_VALID 8u
#define QST_COMPRESSED 16u

/* BAD_L2 a0 low 32 bits: which corruption qemu signals (message in report). */
enum qcow2_l2_error {
    QL2_L2_UNALIGNED = 1,      /* "L2 table offset %#x unaligned (L1 index: %#x)" */
    QL2_CLUSTER_UNALIGNED = 2, /* "Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: %#x)" */
    QL2_INVALID = 3,           /* "Invalid cluster entry found  (L2 offset: %#x, L2 index: %#x)" */
    QL2_COMPRESSED_DATA_FILE = 4,
    QL2_ZERO_V2 = 5,
};

struct qcow2_mapper {
    struct qcow2 *q;
    struct table_window l1;
    struct cluster_cache l2;
};

int qcow2_mapper_init(struct qcow2_mapper *m, struct qcow2 *q);

/*
 * Status of [pos, pos+bytes) (bytes > 0, pos+bytes <= virtual size): sets
 * *len to the length of the leading run with one status and *host to its host
 * offset when QST_OFFSET_VALID. Returns the QST_* bits or -1 after emitting
 * an ERROR record.
 */
int qcow2_block_status(struct qcow2_mapper *m, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host);
#endif
