// The planner of `instar dd`: turns qemu-img dd's operands (bs=, count=,
// skip=) and the input's length into the source range copied and the size of
// the output image, with qemu-img 7.2 img_dd's arithmetic, quirks included:
// count= caps the *input position* (count * bs bytes from the start of the
// input, not from the skip offset), and a skip past that end yields an empty
// output plus a warning. Pure: no I/O; the data moves through the convert
// data path (lib/convert/pipeline.ts).
import { INT64_MAX } from "../formats/size.ts";

export interface DdOperands {
  /** bs= (1 .. INT_MAX; default 512). */
  bs: bigint;
  /** count= in bs units, when given. */
  count?: bigint;
  /** skip= in bs units, when given. */
  skip?: bigint;
}

export interface DdPlan {
  /** The first input byte copied (output byte 0). */
  from: bigint;
  /** The output's virtual size: input bytes [from, from + outSize) are copied. */
  outSize: bigint;
  /** The output image's size: outSize rounded up to whole sectors, as
   * bdrv_create sizes it (the bytes past outSize read as zeroes). */
  fileSize: bigint;
  /** qemu's "cannot skip to specified offset" warning (exit status stays 0). */
  cannotSkip: boolean;
}

/** img_dd's size and position computation for an input of `inputLength` bytes. */
export function planDd(op: DdOperands, inputLength: bigint): DdPlan {
  const bs = op.bs;
  if (bs < 1n || bs > 0x7fffffffn) throw new RangeError("bs out of range");
  if (inputLength < 0n) throw new RangeError("negative input length");
  let size = inputLength;
  if (op.count !== undefined && op.count <= INT64_MAX / bs && op.count * bs < size) size = op.count * bs;
  const skip = op.skip ?? 0n;
  // Overflow means the offset lies beyond the input's end.
  if (op.skip !== undefined && (skip > INT64_MAX / bs || size < bs * skip)) {
    return { from: size, outSize: 0n, fileSize: 0n, cannotSkip: true };
  }
  const from = skip * bs;
  const outSize = size - from;
  return { from, outSize, fileSize: (outSize + 511n) / 512n * 512n, cannotSkip: false };
}
