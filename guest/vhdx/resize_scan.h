/* vhdx's resize metadata scan, for the host's planner (lib/formats/vhdx/resize_plan.ts). */
#ifndef INSTAR_VHDX_RESIZE_SCAN_H
#define INSTAR_VHDX_RESIZE_SCAN_H
#include "reader.h"

/* Opens input r as vhdx (qemu's vhdx_open, BAT entries checked) and emits
 * RESIZE_BYTES (the active header's 4 KiB) then RESIZE_META. 0, or -1
 * after an ERROR record. */
int vhdx_resize_scan(const struct reader *r);
#endif
