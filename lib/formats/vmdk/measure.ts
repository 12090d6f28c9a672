// Size calculator for a VMDK target. qemu-img has none (`measure -O vmdk`
// fails with "Block driver 'vmdk' does not support size measurement"); this
// one predicts what a VMDK written the way qemu writes it takes: the create
// planner's empty image (header, descriptor, both grain directories and
// all grain tables, up to the first grain), plus per allocated 64 KiB grain:
//   monolithicSparse: the grain;
//   streamOptimized: a worst-case (incompressible) grain: 12-byte marker
//   plus zlib's compressBound(64 KiB), in whole sectors; and, once anything
//   is written, the grain-table, directory and footer markers and the
//   end-of-stream marker qemu appends when it closes the image.
import { fail, ok, type PlanResult } from "../plan.ts";
import { vmdkChoices, type VmdkCreateOptions, vmdkLayout } from "./create_plan.ts";
import type { AllocationSummary, SizeEstimate } from "../types.ts";

export type { AllocationSummary, SizeEstimate };

const GRAIN = 65536n;
/** Marker (12) + compressBound(65536) (65569), rounded up to sectors. */
export const STREAM_GRAIN_MAX = ((12n + 65569n + 511n) / 512n) * 512n;

export function vmdkMeasure(opts: VmdkCreateOptions, alloc?: AllocationSummary): PlanResult<SizeEstimate> {
  if (alloc && (alloc.allocatedBytes < 0n || alloc.virtualSize < 0n)) {
    return fail("invalid_size", "Allocation summary out of range");
  }
  const c = vmdkChoices(opts);
  if (!c.ok) return c;
  const l = vmdkLayout(opts.size, c.value.subformat);
  const empty = l.fileSize;
  // The true grain count (qemu's 32-bit count wraps above 128 TiB; the data
  // still has to go somewhere).
  const grains = (l.virtualSize + GRAIN - 1n) / GRAIN;
  let used = alloc
    ? (alloc.allocatedBytes < alloc.virtualSize ? alloc.allocatedBytes : alloc.virtualSize)
    : 0n;
  if (used > l.virtualSize) used = l.virtualSize;
  const usedGrains = (used + GRAIN - 1n) / GRAIN;
  if (c.value.subformat === "monolithicSparse") {
    return ok({ required: empty + usedGrains * GRAIN, fullyAllocated: empty + grains * GRAIN });
  }
  const stream = (n: bigint) => {
    if (n === 0n) return empty;
    const gts = (n + 511n) / 512n; // at most one table per 512 grains touched
    const allGts = (grains + 511n) / 512n;
    const tables = (gts < allGts ? gts : allGts) * (512n + 2048n); // marker + table
    const gd = 512n + ((allGts * 4n + 511n) / 512n) * 512n; // marker + directory
    return empty + n * STREAM_GRAIN_MAX + tables + gd + 1024n + 512n; // footer marker+footer, EOS
  };
  return ok({ required: stream(usedGrains), fullyAllocated: stream(grains) });
}
