/* vmdk's resize metadata scan, for the host's planner (lib/formats/vmdk/resize_plan.ts). */
#ifndef INSTAR_VMDK_RESIZE_SCAN_H
#define INSTAR_VMDK_RESIZE_SCAN_H
#include "reader.h"

/* Opens input r as vmdk (vmdk_open, as info does) and, for a single hosted
 * VMDK4 sparse file, emits RESIZE_BYTES (the header sector, the embedded
 * descriptor) then RESIZE_META; for anything else only RESIZE_META (the
 * host refuses from its flags). 0, or -1 after an ERROR record. */
int vmdk_resize_scan(const struct reader *r);
#endif
