// Create planner for VMDK (monolithicSparse and streamOptimized), byte-
// identical to qemu-img 7.2 `create -f vmdk` except the descriptor's CID,
// which qemu draws at random and the caller passes in. The option checks,
// the sparse layout and the descriptor serve convert's writer too
// (output_plan.ts), which also writes the multi-file subformats.
//
// The layout arithmetic follows qemu's C types on purpose, including its
// 32-bit wraps: from 2^47 bytes (128 TiB) on, qemu's 32-bit grain count
// wraps and it writes a grain directory that covers only the wrapped
// remainder (at exactly 256 TiB, none at all). qemu-img still creates,
// opens and checks such images, so instar reproduces them rather than
// refusing what qemu-img accepts.
import { fail, type FilePlan, ok, type PlanResult, type WritePatch } from "../plan.ts";

export type VmdkSubformat =
  | "monolithicSparse"
  | "streamOptimized"
  | "monolithicFlat"
  | "twoGbMaxExtentSparse"
  | "twoGbMaxExtentFlat";
export type VmdkAdapterType = "ide" | "buslogic" | "lsilogic" | "legacyESX";

const ADAPTERS: readonly string[] = ["ide", "buslogic", "lsilogic", "legacyESX"];
const SUBFORMATS: readonly string[] = [
  "monolithicSparse",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
  "streamOptimized",
];

export interface VmdkCreateOptions {
  /** Requested size in bytes (before rounding to 512). */
  size: bigint;
  /** The image path as given: its basename names the extent in the descriptor. */
  filename: string;
  subformat?: string;
  adapterType?: string;
  /** `hwversion` text; undefined or "undefined" means not set. */
  hwversion?: string;
  toolsversion?: string;
  compat6?: boolean;
  zeroedGrain?: boolean;
  backingFile?: string;
  backingFmt?: string;
}

/** qemu's random descriptor CID (a 32-bit value). */
export interface VmdkEntropy {
  cid: number;
}

export interface VmdkLayout {
  /** Size qemu records: the request rounded up to 512. */
  virtualSize: bigint;
  subformat: VmdkSubformat;
  /** Sectors, as in the header's capacity field. */
  capacity: bigint;
  grains: number;
  gtCount: number;
  gdSectors: number;
  rgdOffset: bigint;
  gdOffset: bigint;
  grainOffset: bigint;
  fileSize: bigint;
}

export interface VmdkCreatePlan extends FilePlan {
  layout: VmdkLayout;
  descriptor: string;
}

const GRANULARITY = 128n; // sectors per grain: 64 KiB grains
const GTES_PER_GT = 512; // entries per grain table
const GT_SECTORS = 4; // 512 entries * 4 bytes / 512
const DESC_OFFSET = 1n;
const DESC_SECTORS = 20n;

const u32 = (n: bigint) => Number(BigInt.asUintN(32, n));

/** The sparse-extent layout for `size`, as vmdk_init_extent computes it. */
export function vmdkLayout(size: bigint, subformat: VmdkSubformat): VmdkLayout {
  const total = ((size + 511n) / 512n) * 512n;
  const capacity = total / 512n;
  // grains, gt_count and gd_sectors are uint32_t in qemu.
  const grains = u32((capacity + GRANULARITY - 1n) / GRANULARITY);
  const gtCount = u32(BigInt(grains) + BigInt(GTES_PER_GT - 1)) / GTES_PER_GT | 0;
  const gdSectors = u32((BigInt(gtCount) * 4n + 511n) / 512n);
  const tables = BigInt(u32(BigInt(GT_SECTORS) * BigInt(gtCount)));
  const rgdOffset = DESC_OFFSET + DESC_SECTORS;
  const gdOffset = rgdOffset + BigInt(gdSectors) + tables;
  const grainOffset = ((gdOffset + BigInt(gdSectors) + tables + GRANULARITY - 1n) / GRANULARITY) *
    GRANULARITY;
  return {
    virtualSize: total,
    subformat,
    capacity,
    grains,
    gtCount: Math.floor(gtCount),
    gdSectors,
    rgdOffset,
    gdOffset,
    grainOffset,
    fileSize: grainOffset * 512n,
  };
}

function le16(b: Uint8Array, at: number, v: number) {
  new DataView(b.buffer, b.byteOffset).setUint16(at, v, true);
}
function le32(b: Uint8Array, at: number, v: number) {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v >>> 0, true);
}
function le64(b: Uint8Array, at: number, v: bigint) {
  new DataView(b.buffer, b.byteOffset).setBigUint64(at, BigInt.asUintN(64, v), true);
}

/** The "KDMV" magic and the sparse extent header (79 bytes, as qemu writes them). */
export function encodeVmdkHeader(l: VmdkLayout, zeroedGrain: boolean): Uint8Array {
  const compress = l.subformat === "streamOptimized";
  const b = new Uint8Array(4 + 75);
  b.set([0x4b, 0x44, 0x4d, 0x56], 0); // "KDMV"
  le32(b, 4, compress ? 3 : zeroedGrain ? 2 : 1); // version
  // flags: valid newline test, redundant GD; zeroed grains; compressed + markers
  let flags = 0x1 | 0x2;
  if (zeroedGrain) flags |= 0x4;
  if (compress) flags |= 0x10000 | 0x20000;
  le32(b, 8, flags);
  le64(b, 12, l.capacity);
  le64(b, 20, GRANULARITY);
  le64(b, 28, DESC_OFFSET);
  le64(b, 36, DESC_SECTORS);
  le32(b, 44, GTES_PER_GT);
  le64(b, 48, l.rgdOffset);
  le64(b, 56, l.gdOffset);
  le64(b, 64, l.grainOffset);
  // byte 72: filler; 73..76: the "\n \r\n" line-ending check bytes
  b.set([0x0a, 0x20, 0x0d, 0x0a], 73);
  le16(b, 77, compress ? 1 : 0); // deflate
  return b;
}

/** One grain directory: entry i points at the i-th grain table after it. */
export function encodeGrainDirectory(l: VmdkLayout, at: bigint): Uint8Array {
  const b = new Uint8Array(l.gdSectors * 512);
  const dv = new DataView(b.buffer);
  const first = u32(at + BigInt(l.gdSectors));
  // Entries are uint32 in qemu: they wrap rather than fail.
  for (let i = 0; i < l.gtCount; i++) dv.setUint32(i * 4, (first + i * GT_SECTORS) >>> 0, true);
  return b;
}

function basename(path: string): string {
  // g_path_get_basename: trailing slashes ignored; "" -> ".", "/" -> "/".
  if (path === "") return ".";
  const trimmed = path.replace(/\/+$/, "");
  if (trimmed === "") return "/";
  return trimmed.slice(trimmed.lastIndexOf("/") + 1);
}

/** The descriptor text. `extents` replaces the one embedded SPARSE line
 * (multi-file subformats: qemu's extent lines, in order). */
export function vmdkDescriptor(
  l: VmdkLayout,
  filename: string,
  cid: number,
  hw: string,
  adapter: VmdkAdapterType,
  tools: string,
  extents?: string[],
): string {
  const heads = adapter === "ide" ? 16n : 255n;
  // qemu holds the size in an int64: a request rounded up to 2^63 is
  // negative there, and the cylinder count comes out negative (C division
  // truncates toward zero, as BigInt division does).
  const signedSize = BigInt.asIntN(64, l.virtualSize);
  const cylinders = signedSize / (63n * heads * 512n);
  const sectors = BigInt.asIntN(64, (l.virtualSize + 511n) / 512n);
  return "# Disk DescriptorFile\n" +
    "version=1\n" +
    `CID=${(cid >>> 0).toString(16)}\n` +
    "parentCID=ffffffff\n" +
    `createType="${l.subformat}"\n` +
    "\n" +
    "# Extent description\n" +
    (extents ? extents.join("") : `RW ${sectors} SPARSE "${basename(filename)}"\n`) +
    "\n" +
    "# The Disk Data Base\n" +
    "#DDB\n" +
    "\n" +
    `ddb.virtualHWVersion = "${hw}"\n` +
    `ddb.geometry.cylinders = "${cylinders}"\n` +
    `ddb.geometry.heads = "${heads}"\n` +
    'ddb.geometry.sectors = "63"\n' +
    `ddb.adapterType = "${adapter}"\n` +
    `ddb.toolsVersion = "${tools}"\n`;
}

export interface VmdkChoices {
  subformat: VmdkSubformat;
  adapter: VmdkAdapterType;
  hwversion: string;
  toolsversion: string;
  zeroedGrain: boolean;
}

/** Validates options in vmdk_co_create_opts' order, with its words. */
export function vmdkChoices(o: VmdkCreateOptions): PlanResult<VmdkChoices> {
  if (o.backingFmt !== undefined && o.backingFmt !== "vmdk") {
    return fail("invalid_option", "backing_file must be a vmdk image");
  }
  if (o.size < 0n) return fail("invalid_size", "Image size must be non-negative");
  const adapter = o.adapterType ?? "ide";
  if (!ADAPTERS.includes(adapter)) return fail("invalid_option", `invalid parameter value: ${adapter}`);
  const sub = o.subformat ?? "monolithicSparse";
  if (!SUBFORMATS.includes(sub)) return fail("invalid_option", `invalid parameter value: ${sub}`);
  let hw = o.hwversion === "undefined" ? undefined : o.hwversion;
  if (o.compat6) {
    if (hw !== undefined) return fail("invalid_option", "compat6 cannot be enabled with hwversion set");
    hw = "6";
  }
  if (o.zeroedGrain && (sub === "monolithicFlat" || sub === "twoGbMaxExtentFlat")) {
    return fail("invalid_option", "Flat image can't enable zeroed grain");
  }
  if (o.backingFile !== undefined) {
    // qemu would open the backing file to read its CID: instar plans no I/O.
    return fail("unsupported", "Creating a vmdk image with a backing file is not supported by instar");
  }
  return ok({
    subformat: sub as VmdkSubformat,
    adapter: adapter as VmdkAdapterType,
    hwversion: hw ?? "4",
    toolsversion: o.toolsversion ?? "2147483647",
    zeroedGrain: o.zeroedGrain ?? false,
  });
}

export function planVmdkCreate(o: VmdkCreateOptions, entropy: VmdkEntropy): PlanResult<VmdkCreatePlan> {
  const c = vmdkChoices(o);
  if (!c.ok) return c;
  const { subformat, adapter, hwversion, toolsversion, zeroedGrain } = c.value;
  if (subformat !== "monolithicSparse" && subformat !== "streamOptimized") {
    // Split and flat subformats write several files: convert writes them
    // (output_plan.ts), create does not.
    return fail("unsupported", `subformat '${subformat}' is not supported by instar`);
  }
  const l = vmdkLayout(o.size, subformat);
  const descriptor = vmdkDescriptor(l, o.filename, entropy.cid, hwversion, adapter, toolsversion);
  const desc = new TextEncoder().encode(descriptor);
  // qemu writes the descriptor after the grain directories, so an
  // over-long one (a huge hwversion string) would overwrite the redundant
  // directory. instar refuses instead of writing a corrupt image.
  if (512n + BigInt(desc.length) > l.rgdOffset * 512n) {
    return fail("invalid_option", "The VMDK descriptor does not fit in its 20 sectors");
  }
  const patches: WritePatch[] = [{ kind: "write", offset: 0n, bytes: encodeVmdkHeader(l, zeroedGrain) }];
  if (l.gdSectors > 0) {
    patches.push({ kind: "write", offset: l.rgdOffset * 512n, bytes: encodeGrainDirectory(l, l.rgdOffset) });
    patches.push({ kind: "write", offset: l.gdOffset * 512n, bytes: encodeGrainDirectory(l, l.gdOffset) });
  }
  patches.push({ kind: "write", offset: 512n, bytes: desc });
  return ok({ layout: l, descriptor, patches, fileSize: l.fileSize });
}
