// Size calculator for a VHDX target. qemu-img has none (`measure -O vhdx`
// fails with "Block driver 'vhdx' does not support size measurement"); this
// one predicts what a VHDX written the way qemu writes it takes: the create
// planner's empty image (headers, log, BAT, metadata and the 5 MiB reserve
// qemu leaves before the first payload block), plus one whole payload block
// per allocated block (qemu appends blocks at MiB-aligned file ends).
import { fail, ok, type PlanResult } from "../plan.ts";
import { type VhdxCreateOptions, vhdxLayout } from "./create_plan.ts";
import type { AllocationSummary, SizeEstimate } from "../types.ts";

export type { AllocationSummary, SizeEstimate };

export function vhdxMeasure(opts: VhdxCreateOptions, alloc?: AllocationSummary): PlanResult<SizeEstimate> {
  if (alloc && (alloc.allocatedBytes < 0n || alloc.virtualSize < 0n)) {
    return fail("invalid_size", "Allocation summary out of range");
  }
  const r = vhdxLayout(opts);
  if (!r.ok) return r;
  const l = r.value;
  // A fixed image already holds every block.
  if (l.subformat === "fixed") return ok({ required: l.fileSize, fullyAllocated: l.fileSize });
  let used = alloc
    ? (alloc.allocatedBytes < alloc.virtualSize ? alloc.allocatedBytes : alloc.virtualSize)
    : 0n;
  if (used > l.virtualSize) used = l.virtualSize;
  const usedBlocks = (used + l.blockSize - 1n) / l.blockSize;
  return ok({
    required: l.dataStart + usedBlocks * l.blockSize,
    fullyAllocated: l.dataStart + l.dataBlocks * l.blockSize,
  });
}
