// Resize planner for VMDK. qemu-img 7.2 cannot resize vmdk images ("Image
// format driver does not support resize"), so by default this returns that
// refusal. With `beyondQemu` it plans a monolithicSparse or streamOptimized
// (qemu's: grain directory in the header) resize that needs no new tables:
// the new capacity must stay within what the existing grain directory
// covers (qemu allocates grain tables for the whole capacity at create time
// and never allocates one later), or, given the directories' offsets, new
// directories and zero grain tables are built at the end of the file (the
// old tables stay, named by the copied entries); the header's capacity
// plus the descriptor's extent size and cylinder count are rewritten. A shrink needs
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
  /**
   * The grain directory's and redundant directory's offsets, in sectors
   * (rgd 0: none). With them a grow past the grain tables the image has
   * builds new directories and tables at the end of the file; without, it
   * is refused.
   */
  gdOffset?: bigint;
  rgdOffset?: bigint;
  /**
   * The last grain table has entries past the capacity that are data (qemu
   * never reads them; after a grow it would): a grow is refused.
   */
  staleTail?: boolean;
}

/** qemu's vmdk_open_vmdk4 bound on grain directory entries ("L1 size too big"). */
const MAX_GD_ENTRIES = 32n * 1024n * 1024n;

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
  if (sectors > s.capacity && s.staleTail) {
    return fail("unsupported", "Cannot grow: the VMDK grain table has entries past the old size");
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
  if (s.fileSize < 512n || s.fileSize > (1n << 63n) - 1n) {
    return fail("invalid_size", "File size out of range");
  }
  // The grain tables already there bound the new capacity, unless new
  // directories are built.
  const covered = s.gdEntries * s.numGtesPerGt * s.granularity;
  let grown: { patches: Patch[]; fileSize: bigint } | undefined;
  if (sectors > covered) {
    if (s.gdOffset === undefined) {
      return fail("unsupported", "The VMDK grain directory has no room for the new size");
    }
    const g = growTables(s, sectors);
    if (!g.ok) return g;
    grown = g.value;
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
  if (grown) patches.push(...grown.patches);
  return ok({ patches, fileSize: grown ? grown.fileSize : s.fileSize });
}

function u64le(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

/**
 * New directories for `sectors` at the end of the file, laid out as qemu's
 * vmdk_init_extent lays out a new image: the redundant directory and its
 * new grain tables, then the directory and its new tables. Each directory
 * starts with the old one's entries (copied verbatim: the tables they name
 * stay where they are) followed by entries naming new, zero grain tables
 * (qemu never allocates a grain table: a directory entry 0 inside the
 * capacity would make its writes fail). The file then ends on a grain
 * boundary; the header's directory offsets are rewritten.
 */
function growTables(
  s: VmdkResizeSummary,
  sectors: bigint,
): PlanResult<{ patches: Patch[]; fileSize: bigint }> {
  const span = s.numGtesPerGt * s.granularity;
  const entries = (sectors + span - 1n) / span;
  if (entries > MAX_GD_ENTRIES || s.numGtesPerGt > 512n) {
    return fail("unsupported", "The new VMDK grain directory would be too large");
  }
  const gdOffset = s.gdOffset!, rgdOffset = s.rgdOffset ?? 0n;
  const oldBytes = s.gdEntries * 4n;
  for (const at of rgdOffset ? [gdOffset, rgdOffset] : [gdOffset]) {
    if (at < 1n || at > s.fileSize / 512n || at * 512n + oldBytes > s.fileSize) {
      return fail("invalid_option", "VMDK grain directory out of range");
    }
  }
  const dirSectors = (entries * 4n + 511n) / 512n;
  const gtSectors = (s.numGtesPerGt * 4n + 511n) / 512n;
  const added = entries - s.gdEntries;
  let cursor = (s.fileSize + 511n) / 512n;
  const patches: Patch[] = [];
  const header: { offset: bigint; at: bigint }[] = [];
  for (const [old, field] of rgdOffset ? [[rgdOffset, 48n], [gdOffset, 56n]] : [[gdOffset, 56n]]) {
    const dir = cursor;
    cursor += dirSectors;
    const tables = cursor;
    cursor += added * gtSectors;
    // every new table's sector number must fit a 32-bit directory entry
    if (cursor > 0xffffffffn) return fail("unsupported", "The new VMDK grain tables would lie past 2 TiB");
    const fresh = new Uint8Array(Number(added * 4n));
    const dv = new DataView(fresh.buffer);
    for (let i = 0n; i < added; i++) dv.setUint32(Number(i * 4n), Number(tables + i * gtSectors), true);
    if (oldBytes > 0n) patches.push({ kind: "copy", offset: dir * 512n, from: old * 512n, length: oldBytes });
    patches.push({ kind: "write", offset: dir * 512n + oldBytes, bytes: fresh });
    header.push({ offset: field, at: dir });
  }
  for (const h of header) patches.push({ kind: "write", offset: h.offset, bytes: u64le(h.at) });
  const grain = s.granularity * 512n;
  const fileSize = ((cursor * 512n + grain - 1n) / grain) * grain;
  if (fileSize > (1n << 63n) - 1n) return fail("invalid_size", "File size out of range");
  return ok({ patches, fileSize });
}
