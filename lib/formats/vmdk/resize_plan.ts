// Resize planner for VMDK. qemu-img 7.2 cannot resize vmdk images ("Image
// format driver does not support resize"), so by default this returns that
// refusal. With `beyondQemu` it plans a monolithicSparse or streamOptimized
// (qemu's: grain directory in the header) resize that needs no new tables:
// the new capacity must stay within what the existing grain directory
// covers (qemu allocates grain tables for the whole capacity at create time
// and never allocates one later), and the header's capacity plus the
// descriptor's extent size and cylinder count are rewritten. A shrink needs
// `allocatedGrains` (from the scan) and may only cut grains without data; a
// streamOptimized grow is refused when a partial last grain holds data.
import { fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import type { ResizeRequest } from "../types.ts";

export const VMDK_RESIZE_REFUSAL = "Image format driver does not support resize";

/** What the guest extracts from an existing sparse VMDK for resizing. */
export interface VmdkResizeSummary {
  subformat: "monolithicSparse" | "streamOptimized";
  /** Header capacity, in sectors. */
  capacity: bigint;
  /** Sectors per grain. */
  granularity: bigint;
  numGtesPerGt: bigint;
  /** Grain directory entries (grain tables) the image has. */
  gdEntries: bigint;
  /** Embedded descriptor position and size, in sectors. */
  descriptorOffset: bigint;
  descriptorSectors: bigint;
  /** The descriptor text, as read (untrusted). */
  descriptor: string;
  fileSize: bigint;
  /** 1 + the highest grain holding data (0: none); a shrink is refused without it. */
  allocatedGrains?: bigint;
}

/** The descriptor with the extent size and cylinder count for `sectors`. */
export function resizedDescriptor(text: string, sectors: bigint): string | undefined {
  const extent = /^(RW )(\d+)( SPARSE ".*")$/m;
  if (!extent.test(text)) return undefined;
  const headsM = /^ddb\.geometry\.heads = "(\d+)"$/m.exec(text);
  const heads = headsM ? BigInt(headsM[1]) : 16n;
  if (heads === 0n || heads > 255n) return undefined;
  let out = text.replace(extent, `$1${sectors}$3`);
  out = out.replace(
    /^(ddb\.geometry\.cylinders = ")(-?\d+)(")$/m,
    `$1${(sectors * 512n) / (63n * heads * 512n)}$3`,
  );
  return out;
}

export function planVmdkResize(s: VmdkResizeSummary, req: ResizeRequest): PlanResult<FilePlan> {
  if (!req.beyondQemu) return fail("unsupported", VMDK_RESIZE_REFUSAL);
  const size = req.newSize;
  if (size <= 0n || size % 512n !== 0n) {
    return fail("invalid_size", "New VMDK size must be a positive multiple of 512");
  }
  const sectors = size / 512n;
  if (sectors < s.capacity && !req.shrink) {
    return fail("invalid_size", "Use the --shrink option to perform a shrink operation.");
  }
  if (
    s.granularity === 0n || s.granularity > 0x200000n || s.numGtesPerGt === 0n || s.numGtesPerGt > 0xffffffffn
  ) {
    return fail("invalid_option", "VMDK grain geometry out of range");
  }
  if (sectors < s.capacity) {
    // A grain starting at or past the new end must hold no data.
    const alloc = s.allocatedGrains;
    if (alloc === undefined) return fail("unsupported", "Shrinking a VMDK is not supported");
    if (alloc > 0n && (alloc - 1n) * s.granularity >= sectors) {
      return fail("unsupported", "Cannot shrink: VMDK grains past the new end hold data");
    }
  }
  if (sectors > s.capacity && s.subformat === "streamOptimized" && s.capacity % s.granularity !== 0n) {
    // qemu compresses a partial last grain short (only the bytes below the
    // capacity): past them its read fails, so that grain must hold no data.
    const last = (s.capacity + s.granularity - 1n) / s.granularity;
    if (s.allocatedGrains === undefined || s.allocatedGrains >= last) {
      return fail(
        "unsupported",
        "Cannot grow: the partial last grain of the streamOptimized VMDK holds data",
      );
    }
  }
  // The grain tables already there bound the new capacity.
  const covered = s.gdEntries * s.numGtesPerGt * s.granularity;
  if (sectors > covered) return fail("unsupported", "The VMDK grain directory has no room for the new size");
  if (s.fileSize < 512n || s.fileSize > (1n << 63n) - 1n) {
    return fail("invalid_size", "File size out of range");
  }
  const dStart = s.descriptorOffset * 512n;
  const dLen = s.descriptorSectors * 512n;
  if (s.descriptorOffset < 1n || dLen === 0n || dLen > 1n << 20n || dStart + dLen > s.fileSize) {
    return fail("invalid_option", "VMDK descriptor out of range");
  }
  const text = resizedDescriptor(s.descriptor, sectors);
  if (text === undefined) return fail("invalid_option", "VMDK descriptor has no single sparse extent");
  const bytes = new TextEncoder().encode(text);
  if (BigInt(bytes.length) > dLen) return fail("unsupported", "The new VMDK descriptor does not fit");
  const area = new Uint8Array(Number(dLen));
  area.set(bytes);
  const cap = new Uint8Array(8);
  new DataView(cap.buffer).setBigUint64(0, sectors, true);
  const patches: Patch[] = [
    { kind: "write", offset: 12n, bytes: cap }, // header capacity (after "KDMV", version, flags)
    { kind: "write", offset: dStart, bytes: area },
  ];
  return ok({ patches, fileSize: s.fileSize });
}
