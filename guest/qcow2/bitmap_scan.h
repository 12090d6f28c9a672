/* qcow2's bitmap metadata scan, for the host's bitmap planner. */
#ifndef INSTAR_QCOW2_BITMAP_SCAN_H
#define INSTAR_QCOW2_BITMAP_SCAN_H
#include "qcow2.h"

/* Opens qcow2 image r (probed by the caller) and emits BITMAP_DIR and
 * BITMAP_ENTRY records, then the resize scan's records for its own size.
 * Set bits are judged against the first `len` bytes (UINT64_MAX: the
 * image's size; a smaller one for a shrink: bits past it are tail bits).
 * 0, or -1 after an ERROR record. */
int qcow2_bitmap_scan(const struct reader *r, uint64_t len);

/* --merge: the merged bitmap's data clusters written to a staging area of
 * the output (arguments in bitmap_scan.c). 0, or -1 after an ERROR record. */
int qcow2_bitmap_merge(const struct reader *r, const struct reader *src_r);
#endif
