// The raw create planner (block/file-posix.c raw_co_create): the file is
// emptied, then set to the size rounded up to 512. preallocation=falloc and
// full allocate the whole range (full writes zeroes; instar writes zeroes
// for falloc too, which gives the same allocated, zero-filled file).
import { alignUp, fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";

export type RawPrealloc = "off" | "falloc" | "full";

export function rawCreatePlan(size: bigint, prealloc: string): PlanResult<FilePlan & { allocate: boolean }> {
  if (prealloc !== "off" && prealloc !== "falloc" && prealloc !== "full") {
    // qemu's PreallocMode parse fails for unknown words; metadata is a mode
    // raw files do not have.
    return prealloc === "metadata"
      ? fail("invalid_option", "Unsupported preallocation mode: metadata")
      : fail("invalid_option", `invalid parameter value: ${prealloc}`);
  }
  const fileSize = alignUp(size, 512n);
  if (fileSize > (1n << 63n) - 1n || size > (1n << 63n) - 512n) {
    return fail("invalid_size", "Could not resize file: Invalid argument");
  }
  const patches: Patch[] = [];
  // The allocation itself is the caller's (applyPlan leaves holes).
  return ok({ patches, fileSize, allocate: prealloc !== "off" });
}
