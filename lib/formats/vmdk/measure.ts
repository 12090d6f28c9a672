// Size calculator for a VMDK target. qemu-img has none (`measure -O vmdk`
// fails with "Block driver 'vmdk' does not support size measurement"); this
// one predicts what a VMDK written the way qemu writes it takes: the create
// planner's empty image (header, descriptor, both grain directories and
// all grain tables, up to the first grain), plus per allocated 64 KiB grain:
//   monolithicSparse: the grain;
//   streamOptimized: at least one sector (marker and stream) per grain for
//   `required`, a worst-case (incompressible) grain for `fullyAllocated`:
//   12-byte marker plus zlib's compressBound(64 KiB), in whole sectors,
//   plus the grain-table, directory and footer markers and end-of-stream
//   marker a stream writer may append. Compression makes the real size
//   data-dependent: instar's own output lies between the two.
// Multi-file subformats (convert writes them, output_plan.ts) count every
// file: the descriptor file (whole sectors) plus
//   monolithicFlat, twoGbMaxExtentFlat: the flat extents' length (sparse
//   files: `required` counts the allocated bytes, as qemu's raw measure);
//   twoGbMaxExtentSparse: each 2 GiB extent's empty sparse file plus the
//   allocated grains.
import { fail, ok, type PlanResult } from "../plan.ts";
import { vmdkChoices, type VmdkCreateOptions, vmdkLayout } from "./create_plan.ts";
import { VMDK_SPLIT_SIZE } from "./extents.ts";
import type { AllocationSummary, SizeEstimate } from "../types.ts";

export type { AllocationSummary, SizeEstimate };

const GRAIN = 65536n;
/** Marker (12) + compressBound(65536) (65569), rounded up to sectors. */
export const STREAM_GRAIN_MAX = ((12n + 65569n + 511n) / 512n) * 512n;
/** A multi-file descriptor's bound per extent line and for the rest (whole sectors). */
const DESC_LINE_MAX = 80n, DESC_BASE_MAX = 1024n;

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
  const sub = c.value.subformat;
  if (sub === "monolithicFlat" || sub === "twoGbMaxExtentFlat" || sub === "twoGbMaxExtentSparse") {
    const split = sub !== "monolithicFlat";
    const extents = split ? (l.virtualSize + VMDK_SPLIT_SIZE - 1n) / VMDK_SPLIT_SIZE : 1n;
    const desc = DESC_BASE_MAX + extents * DESC_LINE_MAX;
    if (sub !== "twoGbMaxExtentSparse") {
      return ok({ required: desc + used, fullyAllocated: desc + l.virtualSize });
    }
    // Every extent but the last is 2 GiB; the last holds the rest.
    let empty = 0n;
    if (extents > 0n) {
      const last = l.virtualSize - (extents - 1n) * VMDK_SPLIT_SIZE;
      empty = (extents - 1n) * vmdkLayout(VMDK_SPLIT_SIZE, sub).fileSize + vmdkLayout(last, sub).fileSize;
    }
    return ok({ required: desc + empty + usedGrains * GRAIN, fullyAllocated: desc + empty + grains * GRAIN });
  }
  if (sub === "monolithicSparse") {
    return ok({ required: empty + usedGrains * GRAIN, fullyAllocated: empty + grains * GRAIN });
  }
  const stream = (n: bigint, grainBytes: bigint) => {
    if (n === 0n) return empty;
    if (grainBytes === 512n) return empty + n * 512n; // the least a stream grain takes
    const gts = (n + 511n) / 512n; // at most one table per 512 grains touched
    const allGts = (grains + 511n) / 512n;
    const tables = (gts < allGts ? gts : allGts) * (512n + 2048n); // marker + table
    const gd = 512n + ((allGts * 4n + 511n) / 512n) * 512n; // marker + directory
    return empty + n * grainBytes + tables + gd + 1024n + 512n; // footer marker+footer, EOS
  };
  return ok({ required: stream(usedGrains, 512n), fullyAllocated: stream(grains, STREAM_GRAIN_MAX) });
}
