// Size calculator for a VHD target. qemu-img has none (`measure -O vpc`
// fails with "Block driver 'vpc' does not support size measurement"); this
// one predicts what a VHD written the way qemu writes it takes: the create
// planner's empty image, plus per allocated 2 MiB block its 512-byte sector
// bitmap and the block itself (qemu appends both and moves the footer).
// Convert uses it to bound output size; the CLI keeps qemu's refusal.
import { fail, ok, type PlanResult } from "../plan.ts";
import {
  VPC_BAT_OFFSET,
  VPC_BLOCK_SIZE,
  vpcBatBytes,
  type VpcCreateOptions,
  vpcRoundedSize,
} from "./create_plan.ts";

export type { AllocationSummary, SizeEstimate } from "../types.ts";
import type { AllocationSummary, SizeEstimate } from "../types.ts";

/** Bytes one allocated dynamic-VHD block adds: the sector bitmap, then the data. */
export const VPC_BLOCK_COST = VPC_BLOCK_SIZE + 512n;

/**
 * required: the empty image plus the blocks `alloc` needs (its allocated
 * bytes in whole 2 MiB blocks, an optimistic packing); fullyAllocated: every
 * block present. Without `alloc` the image is taken as empty. Fixed VHDs
 * take their full size either way.
 */
export function vpcMeasure(opts: VpcCreateOptions, alloc?: AllocationSummary): PlanResult<SizeEstimate> {
  const sub = opts.subformat ?? "dynamic";
  if (sub !== "dynamic" && sub !== "fixed") {
    return fail("invalid_option", `Parameter 'subformat' does not accept value '${sub}'`);
  }
  if (alloc && (alloc.allocatedBytes < 0n || alloc.virtualSize < 0n)) {
    return fail("invalid_size", "Allocation summary out of range");
  }
  const r = vpcRoundedSize(opts.size, opts.forceSize ?? false);
  if (!r.ok) return r;
  const size = r.value.size;
  if (sub === "fixed") return ok({ required: size + 512n, fullyAllocated: size + 512n });
  const blocks = (size + VPC_BLOCK_SIZE - 1n) / VPC_BLOCK_SIZE;
  // Footer copy, dynamic header, BAT (whole sectors), footer: as created.
  const empty = VPC_BAT_OFFSET + vpcBatBytes(blocks) + 512n;
  let used = alloc
    ? (alloc.allocatedBytes < alloc.virtualSize ? alloc.allocatedBytes : alloc.virtualSize)
    : 0n;
  if (used > size) used = size;
  const usedBlocks = (used + VPC_BLOCK_SIZE - 1n) / VPC_BLOCK_SIZE;
  return ok({
    required: empty + usedBlocks * VPC_BLOCK_COST,
    fullyAllocated: empty + blocks * VPC_BLOCK_COST,
  });
}
