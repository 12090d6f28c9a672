/*
 * The refcount part of every qcow2 scan a host planner reads (resize,
 * snapshot, bitmap): one RESIZE_REFTABLE record per refcount-table entry
 * with an offset, and the non-zero refcounts of every cluster the refcount
 * blocks describe as RESIZE_REFRUN runs, ascending. Each scan passes its own
 * bounded emitter (its record caps and its TOO_BIG flag).
 */
#ifndef INSTAR_QCOW2_REFSCAN_H
#define INSTAR_QCOW2_REFSCAN_H
#include "qcow2.h"

/* rt_error(0, GERR_INTERNAL, QCOW2_REFSCAN_BAD_REFBLOCK, offset, 0): an
 * unaligned refcount block (qemu: corruption, -EIO). The host decoders of
 * every scan read a0 == 1 as this. */
#define QCOW2_REFSCAN_BAD_REFBLOCK 1

/* Emits one record, counting it in *count; 1 when a cap was hit (the scan
 * stops and flags itself TOO_BIG), -1 on a failed emit. */
typedef int (*qcow2_refscan_emit)(uint64_t *count, void *rec, uint32_t size);

int qcow2_scan_refcounts(struct qcow2 *q, struct cluster_cache *cache, qcow2_refscan_emit emit,
                         uint64_t *n_reftable, uint64_t *n_runs);
#endif
