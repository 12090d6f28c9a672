/* qcow2's resize metadata scan, for the host's resize planner. */
#ifndef INSTAR_QCOW2_RESIZE_SCAN_H
#define INSTAR_QCOW2_RESIZE_SCAN_H
#include "qcow2.h"

/* Opens qcow2 image r (probed by the caller) and emits QCOW2_INFO, the
 * RESIZE_* records for a resize to new_size, then RESIZE_SUMMARY.
 * rt_params()->arg[1] bit 0 asks for the grow-range check. 0, or -1 after
 * an ERROR record. */
int qcow2_resize_scan(const struct reader *r, uint64_t new_size);
#endif
