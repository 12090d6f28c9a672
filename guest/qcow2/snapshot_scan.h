/* qcow2's snapshot metadata scan, for the host's snapshot planner. */
#ifndef INSTAR_QCOW2_SNAPSHOT_SCAN_H
#define INSTAR_QCOW2_SNAPSHOT_SCAN_H
#include "qcow2.h"

/* Opens qcow2 image r (probed by the caller) and emits QCOW2_INFO, the
 * refcounts, the snapshot table and the L1/L2 entries rt_params() asks for,
 * then SNAP_SUMMARY. 0, or -1 after an ERROR record. */
int qcow2_snapshot_scan(const struct reader *r);
#endif
