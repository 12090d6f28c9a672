// The raw resize planner: qemu's raw driver passes the truncate straight to
// the file (file-posix raw_co_truncate), so growing and shrinking are both a
// change of the file length, with no byte written. Growing leaves a sparse
// tail that reads as zeroes, as ftruncate does for qemu; with
// --preallocation=falloc/full the new tail is allocated (a zero patch, which
// the resize applier writes as real zeroes).
import { fail, type FilePlan, I64_MAX, ok, type PlanResult } from "../plan.ts";

export interface RawResizeOptions {
  /** Current length of the file (host fact). */
  fileSize: bigint;
  newSize: bigint;
  preallocation: "off" | "metadata" | "falloc" | "full";
}

/** qemu's BDRV_MAX_LENGTH: INT64_MAX rounded down to a multiple of 1 GiB. */
export const BDRV_MAX_LENGTH = I64_MAX - (I64_MAX % (1n << 30n));

export function planRawResize(opts: RawResizeOptions): PlanResult<FilePlan> {
  if (opts.newSize < 0n || opts.newSize > BDRV_MAX_LENGTH) {
    return fail("invalid_size", `offset(${opts.newSize}) exceeds maximum(${BDRV_MAX_LENGTH})`);
  }
  if (opts.fileSize < 0n) return fail("invalid_size", "File size out of range");
  switch (opts.preallocation) {
    case "off":
      return ok({ patches: [], fileSize: opts.newSize });
    case "metadata":
      // file-posix has no metadata to preallocate.
      return fail("invalid_option", "Unsupported preallocation mode: metadata");
    default:
      // falloc (posix_fallocate) and full (zeroes written) both leave the new
      // tail allocated and reading as zeroes. The applier writes zeroes for
      // both: the same content and allocation, slower than fallocate for a
      // big tail. Only a grow gets here (img_resize refuses the rest).
      if (opts.newSize <= opts.fileSize) return ok({ patches: [], fileSize: opts.newSize });
      return ok({
        patches: [{ kind: "zero", offset: opts.fileSize, length: opts.newSize - opts.fileSize }],
        fileSize: opts.newSize,
      });
  }
}
