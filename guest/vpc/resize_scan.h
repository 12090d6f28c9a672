/* vpc's resize metadata scan, for the host's planner (lib/formats/vpc/resize_plan.ts). */
#ifndef INSTAR_VPC_RESIZE_SCAN_H
#define INSTAR_VPC_RESIZE_SCAN_H
#include "reader.h"

/* Opens input r as vpc (qemu's vpc_open) and emits RESIZE_BYTES (the footer,
 * and the dynamic header of a dynamic disk) then RESIZE_META. 0, or -1
 * after an ERROR record. */
int vpc_resize_scan(const struct reader *r);
#endif
