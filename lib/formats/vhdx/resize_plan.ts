// Resize planner for VHDX. qemu-img 7.2 cannot resize VHDX ("Image format
// driver does not support resize"), so by default this returns that
// refusal, after the input checks. With `beyondQemu` it plans the change
// the VHDX spec allows without moving a payload block: a new
// virtual-disk-size metadata item, BAT entries in the existing BAT region
// or, when it has no room, in a new region at the end of the file (the old
// entries copied verbatim, the region table repointed, primary then
// backup), and both headers rewritten with sequence numbers n+1 and n+2
// (the spec's update order: the inactive header first, then the other).
//
// Every field of the summary comes from an untrusted image (through the
// guest) and is checked here before use.
import { fail, type FilePlan, ok, type Patch, type PlanResult, U64_MAX } from "../plan.ts";
import { storeCrc32c } from "./crc32c.ts";
import { MiB, VHDX_BLOCK_SIZE_MAX, VHDX_MAX_IMAGE_SIZE } from "./create_plan.ts";
import type { ResizeRequest } from "../types.ts";

export const VHDX_RESIZE_REFUSAL = "Image format driver does not support resize";

/** What the guest extracts from an existing VHDX for resizing. */
export interface VhdxResizeSummary {
  /** The larger of the two headers' sequence numbers (the active header's). */
  sequenceNumber: bigint;
  /** Which header slot (1 at 64 KiB, 2 at 128 KiB) is active. */
  activeHeader: 1 | 2;
  /** The active header's 4 KiB, as read. */
  header: Uint8Array;
  blockSize: bigint;
  virtualSize: bigint;
  batOffset: bigint;
  /** The BAT region's length from the region table. */
  batLength: bigint;
  /** File offset of the 8-byte virtual disk size metadata item. */
  virtualSizeItemOffset: bigint;
  /** The header's log GUID is zero: no log entries to replay first. */
  logGuidZero: boolean;
  fileSize: bigint;
  /** The 64 KiB region table as read (its CRC checked by the guest) and
   * the BAT's entry index in it: needed only to move the BAT. */
  regionTable?: Uint8Array;
  batEntry?: number;
  /** 1 + the highest payload block with data (BAT state FULLY_ or
   * PARTIALLY_PRESENT; 0: none). Known only from a scan of the BAT; when absent, only shrinks
   * inside the last block are planned. */
  allocatedBlocks?: bigint;
}

function log2(n: bigint): bigint {
  let b = 0n;
  while ((1n << b) < n) b++;
  return b;
}

function batEntriesFor(size: bigint, blockSize: bigint): bigint {
  const chunkRatio = ((1n << 23n) * 512n) / blockSize;
  const bits = log2(chunkRatio);
  const blocks = (size + blockSize - 1n) / blockSize;
  if (blocks === 0n) return 0n;
  return blocks + ((blocks - 1n) >> bits);
}

export function planVhdxResize(s: VhdxResizeSummary, req: ResizeRequest): PlanResult<FilePlan> {
  // Seed 002 bug B: the header update writes sequence numbers n+1 and n+2.
  // A header claiming a number within 2 of 2^64 is corrupt (a real image
  // never gets there), so it is refused here, once, before any arithmetic,
  // instead of wrapping (or guarding each increment separately).
  if (s.sequenceNumber < 0n || s.sequenceNumber > U64_MAX - 2n) {
    return fail("overflow", "VHDX header sequence number is too large to update");
  }
  if (!req.beyondQemu) return fail("unsupported", VHDX_RESIZE_REFUSAL);
  if (!s.logGuidZero) return fail("unsupported", "VHDX image has a log to replay first");
  const size = req.newSize;
  if (size <= 0n || size % 512n !== 0n) {
    return fail("invalid_size", "New VHDX size must be a positive multiple of 512");
  }
  if (size > VHDX_MAX_IMAGE_SIZE) return fail("invalid_size", "Image size too large; max of 64TB");
  const bs = s.blockSize;
  if (bs < MiB || bs > VHDX_BLOCK_SIZE_MAX || (bs & (bs - 1n)) !== 0n) {
    return fail("invalid_option", "VHDX block size out of range");
  }
  if (s.virtualSize < 0n || s.virtualSize > VHDX_MAX_IMAGE_SIZE) {
    return fail("invalid_size", "VHDX virtual size out of range");
  }
  if (s.header.length !== 4096) return fail("invalid_option", "VHDX header must be 4 KiB");
  if (size < s.virtualSize && !req.shrink) {
    return fail("invalid_size", "Use the --shrink option to perform a shrink operation.");
  }
  // Shrinking must not strand allocated payload blocks: without a BAT
  // scan only shrinks inside the last block are planned, with one only
  // shrinks that cut blocks holding nothing.
  const newBlocks = (size + bs - 1n) / bs;
  if (size < s.virtualSize && newBlocks !== (s.virtualSize + bs - 1n) / bs) {
    if (s.allocatedBlocks === undefined) {
      return fail("unsupported", "Shrinking a VHDX image across blocks is not supported");
    }
    if (s.allocatedBlocks > newBlocks) {
      return fail("unsupported", "Shrinking a VHDX image over allocated blocks is not supported");
    }
  }
  const fileSize = s.fileSize;
  // The header section (1 MiB) must be there for the header writes.
  if (fileSize < MiB || fileSize > (1n << 63n) - 1n) return fail("invalid_size", "File size out of range");
  const batEnd = s.batOffset + s.batLength;
  if (s.batOffset < MiB || s.batLength > 0xffffffffn || batEnd > fileSize) {
    return fail("invalid_option", "VHDX BAT region out of range");
  }
  const oldEntries = batEntriesFor(s.virtualSize, bs), newEntries = batEntriesFor(size, bs);
  if (oldEntries * 8n > s.batLength) return fail("invalid_option", "VHDX BAT region too small");
  const item = s.virtualSizeItemOffset;
  if (item < MiB || item + 8n > fileSize || (item + 8n > s.batOffset && item < batEnd)) {
    return fail("invalid_option", "VHDX metadata item out of range");
  }
  const sizeItem = new Uint8Array(8);
  new DataView(sizeItem.buffer).setBigUint64(0, size, true);
  const header = (seq: bigint) => {
    const b = s.header.slice();
    new DataView(b.buffer).setBigUint64(8, seq, true);
    storeCrc32c(b, 4);
    return b;
  };
  const active = s.activeHeader === 1 ? 64n * 1024n : 128n * 1024n;
  const inactive = s.activeHeader === 1 ? 128n * 1024n : 64n * 1024n;
  const patches: Patch[] = [];
  let newFileSize = fileSize;
  if (newEntries * 8n > s.batLength) {
    const moved = moveBat(s, oldEntries, newEntries);
    if (!moved.ok) return moved;
    patches.push(...moved.value.patches);
    newFileSize = moved.value.fileSize;
  } else if (newEntries > oldEntries) {
    // Growing: the entries the new size adds are made NOT_PRESENT (zero)
    // explicitly, whatever another writer left in the region past the old ones.
    patches.push({
      kind: "zero",
      offset: s.batOffset + oldEntries * 8n,
      length: (newEntries - oldEntries) * 8n,
    });
  }
  patches.push(
    { kind: "write", offset: inactive, bytes: header(s.sequenceNumber + 1n) },
    { kind: "write", offset: active, bytes: header(s.sequenceNumber + 2n) },
    { kind: "write", offset: item, bytes: sizeItem },
  );
  return ok({ patches, fileSize: newFileSize });
}

const REGION_TABLE = 192n * 1024n, REGION_TABLE2 = 256n * 1024n, REGION_TABLE_SIZE = 65536;

/**
 * The BAT region has no room for the new size: a new region at the end of
 * the file (1 MiB aligned, as the spec requires and qemu checks), the old
 * entries copied into it verbatim (the rest of it is past the old end and
 * reads as zero: NOT_PRESENT), then the region table's BAT entry repointed
 * and its CRC-32C recomputed, in the primary copy (which qemu reads) and
 * the backup. qemu allocates new payload blocks at the end of the file, so
 * the old region is simply left unused.
 */
function moveBat(s: VhdxResizeSummary, oldEntries: bigint, newEntries: bigint): PlanResult<FilePlan> {
  const rt = s.regionTable, idx = s.batEntry;
  if (!rt || idx === undefined) {
    return fail("unsupported", "The VHDX BAT region has no room for the new size");
  }
  // Only the table's first 4 KiB change (header and entries 0..125).
  if (rt.length !== REGION_TABLE_SIZE || idx < 0 || idx > 125) {
    return fail("unsupported", "The VHDX BAT region has no room for the new size");
  }
  const newOffset = (s.fileSize + MiB - 1n) / MiB * MiB;
  const newLength = (newEntries * 8n + MiB - 1n) / MiB * MiB;
  if (newLength > 0xffffffffn || newOffset + newLength > (1n << 63n) - 1n) {
    return fail("invalid_size", "The VHDX BAT region would be too large");
  }
  const table = rt.slice();
  const dv = new DataView(table.buffer);
  const at = 16 + 32 * idx;
  // The entry the guest named must be the BAT region it reported.
  if (dv.getBigUint64(at + 16, true) !== s.batOffset || BigInt(dv.getUint32(at + 24, true)) !== s.batLength) {
    return fail("invalid_option", "VHDX region table does not match the BAT region");
  }
  dv.setBigUint64(at + 16, newOffset, true);
  dv.setUint32(at + 24, Number(newLength), true);
  storeCrc32c(table, 4);
  return ok({
    patches: [
      { kind: "copy", offset: newOffset, from: s.batOffset, length: oldEntries * 8n },
      { kind: "write", offset: REGION_TABLE, bytes: table.slice(0, 4096) },
      { kind: "write", offset: REGION_TABLE2, bytes: table },
    ],
    fileSize: newOffset + newLength,
  });
}
