// Create planner for VHDX, byte-identical to qemu-img 7.2 `create -f vhdx`
// except the values qemu draws at random (header sequence number, file and
// data write GUIDs, page 83 GUID); the caller passes those in so the planner
// stays pure. The two header checksums cover them and differ with them.
//
// Layout qemu writes (offsets in bytes):
//   0        file identifier: "vhdxfile" + UTF-16LE creator string
//   64 KiB   header 1 (sequence n), 128 KiB header 2 (sequence n + 1)
//   192 KiB  region table 1, 256 KiB region table 2 (BAT and metadata regions)
//   1 MiB    log (log_size bytes, never written at create: a hole)
//   BAT      at roundUp(1 MiB + log_size, 1 MiB), length roundUp(entries*8, 1 MiB)
//   metadata at roundUp(BAT end, 1 MiB), 1 MiB: table (64 KiB) + 40 bytes of items
//   file end = BAT offset + BAT length + 5 MiB (+ virtual size for fixed)
import { fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import { storeCrc32c } from "./crc32c.ts";

export const KiB = 1024n;
export const MiB = 1024n * 1024n;
export const TiB = MiB * MiB;
export const VHDX_MAX_IMAGE_SIZE = 64n * TiB;
export const VHDX_DEFAULT_LOG_SIZE = MiB;
export const VHDX_BLOCK_SIZE_MAX = 256n * MiB;
export const VHDX_SECTOR = 512n;
/** VHDX_MAX_SECTORS_PER_BLOCK: one sector-bitmap block covers 2^23 sectors. */
const MAX_SECTORS_PER_BLOCK = 1n << 23n;
/** qemu's BDRV_REQUEST_MAX_BYTES: the largest single write its block layer accepts. */
export const VHDX_REQUEST_MAX_BYTES = (0x7fffffffn >> 9n) << 9n;
/** The creator string qemu-img 7.2.22 (Debian bookworm) writes. */
export const VHDX_CREATOR_QEMU_7_2 = "QEMU v7.2.22";

/** Payload block states (the low 3 bits of a BAT entry). */
export const PAYLOAD_BLOCK_ZERO = 2n;
export const PAYLOAD_BLOCK_FULLY_PRESENT = 6n;

// Well-known GUIDs from the VHDX specification, in their on-disk byte order.
const GUID = (hex: string) => Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
export const BAT_GUID = GUID("6677c22d23f600429d64115e9bfd4a08");
export const METADATA_GUID = GUID("06a27c8b90479a4bb8fe575f050f886e");
export const FILE_PARAMETERS_GUID = GUID("3767a1ca36fa434db3b633f0aa44e76b");
export const VIRTUAL_DISK_SIZE_GUID = GUID("2442a52f1bcd7648b2115dbed83bf4b8");
export const PAGE83_GUID = GUID("ab12cabee6b2234593efc309e000c746");
export const LOGICAL_SECTOR_GUID = GUID("1dbf41816fa90947ba47f233a8faab5f");
export const PHYSICAL_SECTOR_GUID = GUID("c748a3cd5d4471449cc9e9885251c556");

export type VhdxSubformat = "dynamic" | "fixed";

export interface VhdxCreateOptions {
  /** Requested size in bytes (before rounding to 512). */
  size: bigint;
  /** `log_size` as given; undefined means the 1 MiB default. */
  logSize?: bigint;
  /** `block_size` as given; undefined or 0 means chosen from the size. */
  blockSize?: bigint;
  /** `subformat` text; undefined means dynamic. */
  subformat?: string;
  /** `block_state_zero`; undefined means on (qemu's default). */
  blockStateZero?: boolean;
  /** UTF-16 creator string in the file identifier; default VHDX_CREATOR_QEMU_7_2. */
  creator?: string;
}

/** Values qemu draws at random; the caller supplies them. */
export interface VhdxEntropy {
  /** Header 1 sequence number (qemu: a random 32-bit value); header 2 has it + 1. */
  sequenceNumber: number;
  fileWriteGuid: Uint8Array;
  dataWriteGuid: Uint8Array;
  page83Guid: Uint8Array;
}

export interface VhdxLayout {
  virtualSize: bigint;
  blockSize: bigint;
  logSize: bigint;
  subformat: VhdxSubformat;
  useZeroBlocks: boolean;
  chunkRatio: bigint;
  dataBlocks: bigint;
  batEntries: bigint;
  batOffset: bigint;
  batLength: bigint;
  metadataOffset: bigint;
  /** First byte after the metadata reserve: where payload blocks start. */
  dataStart: bigint;
  fileSize: bigint;
}

export interface VhdxCreatePlan extends FilePlan {
  layout: VhdxLayout;
}

/** File ranges (offset, length) filled from the entropy: masked when comparing to qemu. */
export const VHDX_VOLATILE: readonly [number, number][] = [
  [0x10004, 4 + 8 + 32], // header 1: checksum, sequence number, file/data write GUIDs
  [0x20004, 4 + 8 + 32], // header 2
];

function roundUp(n: bigint, a: bigint): bigint {
  return ((n + a - 1n) / a) * a;
}

/** C's ROUND_UP on a uint64: the sum wraps modulo 2^64 as in qemu. */
function roundUpU64(n: bigint, a: bigint): bigint {
  return (BigInt.asUintN(64, n + a - 1n) / a) * a;
}

function log2(n: bigint): bigint {
  let b = 0n;
  while ((1n << b) < n) b++;
  return b;
}

export function parseVhdxSubformat(s: string | undefined): PlanResult<VhdxSubformat> {
  if (s === undefined || s === "dynamic") return ok("dynamic");
  if (s === "fixed") return ok("fixed");
  return fail("invalid_option", `Parameter 'subformat' does not accept value '${s}'`);
}

/**
 * Validates options the way vhdx_co_create_opts and vhdx_co_create do (same
 * order, same words) and computes the layout. Shared by create and measure.
 */
export function vhdxLayout(opts: VhdxCreateOptions): PlanResult<VhdxLayout> {
  const sub = parseVhdxSubformat(opts.subformat);
  if (!sub.ok) return sub;
  if (opts.size < 0n) return fail("invalid_size", "Image size must be non-negative");
  // qemu silently rounds: size to sectors, log and block sizes to MiB.
  const size = roundUp(opts.size, VHDX_SECTOR);
  const logSize = opts.logSize === undefined ? VHDX_DEFAULT_LOG_SIZE : roundUpU64(opts.logSize, MiB);
  let blockSize = opts.blockSize === undefined ? 0n : roundUpU64(opts.blockSize, MiB);
  if (blockSize > VHDX_BLOCK_SIZE_MAX) blockSize = VHDX_BLOCK_SIZE_MAX;
  if (size > VHDX_MAX_IMAGE_SIZE) return fail("invalid_size", "Image size too large; max of 64TB");
  if (logSize > 0xffffffffn) return fail("invalid_option", "Log size must be smaller than 4 GB");
  if (logSize < MiB || logSize % MiB !== 0n) {
    return fail("invalid_option", "Log size must be a multiple of 1 MB");
  }
  if (blockSize === 0n) {
    // qemu's size-based default, chosen to keep the BAT small.
    if (size > 32n * TiB) blockSize = 64n * MiB;
    else if (size > 100n * 1024n * MiB) blockSize = 32n * MiB;
    else if (size > 1024n * MiB) blockSize = 16n * MiB;
    else blockSize = 8n * MiB;
  }
  if (blockSize < MiB || blockSize % MiB !== 0n) {
    return fail("invalid_option", "Block size must be a multiple of 1 MB");
  }
  if ((blockSize & (blockSize - 1n)) !== 0n) {
    return fail("invalid_option", "Block size must be a power of two");
  }

  const chunkRatio = (MAX_SECTORS_PER_BLOCK * VHDX_SECTOR) / blockSize;
  const chunkBits = log2(chunkRatio);
  // qemu counts in uint32: with no data blocks, (0 - 1) wraps to 0xFFFFFFFF
  // and the BAT is sized for a full set of sector-bitmap entries. Kept so
  // the layout (and the file) match qemu's for size 0.
  const dataBlocks = (size + blockSize - 1n) / blockSize;
  const batEntries = BigInt.asUintN(32, dataBlocks + (BigInt.asUintN(32, dataBlocks - 1n) >> chunkBits));
  const batOffset = roundUp(MiB + logSize, MiB);
  const batLength = roundUp(batEntries * 8n, MiB);
  const metadataOffset = roundUp(batOffset + batLength, MiB);
  const dataStart = batOffset + batLength + 5n * MiB;
  const fixed = sub.value === "fixed";
  return ok({
    virtualSize: size,
    blockSize,
    logSize,
    subformat: sub.value,
    useZeroBlocks: opts.blockStateZero ?? true,
    chunkRatio,
    dataBlocks,
    batEntries,
    batOffset,
    batLength,
    metadataOffset,
    dataStart,
    fileSize: dataStart + (fixed ? size : 0n),
  });
}

function le16(b: Uint8Array, at: number, v: number) {
  new DataView(b.buffer, b.byteOffset).setUint16(at, v, true);
}
function le32(b: Uint8Array, at: number, v: number | bigint) {
  new DataView(b.buffer, b.byteOffset).setUint32(at, Number(v) >>> 0, true);
}
function le64(b: Uint8Array, at: number, v: bigint) {
  new DataView(b.buffer, b.byteOffset).setBigUint64(at, BigInt.asUintN(64, v), true);
}
function ascii(b: Uint8Array, at: number, s: string) {
  for (let i = 0; i < s.length; i++) b[at + i] = s.charCodeAt(i);
}

/** Encodes one 4 KiB VHDX header; qemu writes its first 80 bytes (the rest are zero). */
export function encodeVhdxHeader(
  sequenceNumber: bigint,
  fileWriteGuid: Uint8Array,
  dataWriteGuid: Uint8Array,
  logSize: bigint,
): Uint8Array {
  const b = new Uint8Array(4096);
  ascii(b, 0, "head");
  le64(b, 8, sequenceNumber);
  b.set(fileWriteGuid.subarray(0, 16), 16);
  b.set(dataWriteGuid.subarray(0, 16), 32);
  // log GUID (48..64) stays zero: there is no log to replay.
  le16(b, 64, 0); // log version
  le16(b, 66, 1); // VHDX version
  le32(b, 68, logSize);
  le64(b, 72, MiB); // log offset: right after the header section
  // The checksum covers the whole 4 KiB header area, not just the 80 bytes.
  storeCrc32c(b, 4);
  return b.subarray(0, 80);
}

export function encodeRegionTable(l: VhdxLayout): Uint8Array {
  const b = new Uint8Array(64 * 1024);
  ascii(b, 0, "regi");
  le32(b, 8, 2); // entries: BAT and metadata
  b.set(BAT_GUID, 16);
  le64(b, 32, l.batOffset);
  le32(b, 40, l.batLength);
  b.set(METADATA_GUID, 48);
  le64(b, 64, l.metadataOffset);
  le32(b, 72, MiB);
  storeCrc32c(b, 4);
  return b;
}

/** The 64 KiB metadata table: five required items, data 64 KiB in. */
export function encodeMetadataTable(): Uint8Array {
  const b = new Uint8Array(64 * 1024);
  ascii(b, 0, "metadata");
  le16(b, 10, 5);
  const items: [Uint8Array, number, number][] = [
    [FILE_PARAMETERS_GUID, 8, 4], // IsRequired
    [VIRTUAL_DISK_SIZE_GUID, 8, 6], // IsRequired | IsVirtualDisk
    [PAGE83_GUID, 16, 6],
    [LOGICAL_SECTOR_GUID, 4, 6],
    [PHYSICAL_SECTOR_GUID, 4, 6],
  ];
  let off = 64 * 1024;
  items.forEach(([g, len, flags], i) => {
    const at = 32 + 32 * i;
    b.set(g, at);
    le32(b, at + 16, off);
    le32(b, at + 20, len);
    le32(b, at + 24, flags);
    off += len;
  });
  return b;
}

/** The 40 bytes of metadata items at metadata offset + 64 KiB. */
export function encodeMetadataItems(l: VhdxLayout, page83: Uint8Array): Uint8Array {
  const b = new Uint8Array(40);
  le32(b, 0, l.blockSize);
  le32(b, 4, l.subformat === "fixed" ? 1 : 0); // LeaveBlocksAllocated for fixed
  le64(b, 8, l.virtualSize);
  b.set(page83.subarray(0, 16), 16);
  le32(b, 32, 512); // logical sector size
  le32(b, 36, 512); // physical sector size
  return b;
}

function utf16le(s: string): Uint8Array {
  const b = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) le16(b, 2 * i, s.charCodeAt(i));
  return b;
}

/**
 * The BAT bytes qemu writes, trimmed after the last non-zero entry (the
 * rest of the BAT region is written as zeroes: a zero patch), or null when
 * qemu writes no BAT at all (dynamic with block_state_zero=off).
 */
export function vhdxBatPrefix(l: VhdxLayout): Uint8Array | null {
  const fixed = l.subformat === "fixed";
  if (!fixed && !l.useZeroBlocks) return null;
  const state = l.useZeroBlocks ? PAYLOAD_BLOCK_ZERO : PAYLOAD_BLOCK_FULLY_PRESENT;
  if (l.dataBlocks === 0n) return new Uint8Array(0);
  const chunkBits = log2(l.chunkRatio);
  const lastIdx = (l.dataBlocks - 1n) + ((l.dataBlocks - 1n) >> chunkBits);
  const b = new Uint8Array(Number((lastIdx + 1n) * 8n));
  const dv = new DataView(b.buffer);
  // Plain numbers in the loop (up to 2^26 blocks): every value stays below
  // 2^53 (file offsets below 64 TiB + BAT + 5 MiB; block counts below 2^26).
  const blocks = Number(l.dataBlocks), bits = Number(chunkBits);
  const start = Number(l.dataStart), bs = Number(l.blockSize), mib = 1 << 20;
  for (let blk = 0; blk < blocks; blk++) {
    const at = (blk + Math.floor(blk / 2 ** bits)) * 8;
    if (state === PAYLOAD_BLOCK_ZERO) {
      b[at] = 2;
    } else {
      // Payload blocks follow the metadata reserve in order, MiB-aligned.
      const off = Math.ceil((start + blk * bs) / mib) * mib + 6;
      dv.setUint32(at, off % 2 ** 32, true);
      dv.setUint32(at + 4, Math.floor(off / 2 ** 32), true);
    }
  }
  return b;
}

const ZERO_MIB = new Uint8Array(1 << 20);

export function planVhdxCreate(opts: VhdxCreateOptions, entropy: VhdxEntropy): PlanResult<VhdxCreatePlan> {
  const lr = vhdxLayout(opts);
  if (!lr.ok) return lr;
  const l = lr.value;
  for (const g of [entropy.fileWriteGuid, entropy.dataWriteGuid, entropy.page83Guid]) {
    if (g.length < 16) return fail("invalid_option", "GUID needs 16 bytes");
  }
  const seq = BigInt(entropy.sequenceNumber >>> 0);
  const creator = utf16le(opts.creator ?? VHDX_CREATOR_QEMU_7_2);
  const ident = new Uint8Array(8 + creator.length);
  ascii(ident, 0, "vhdxfile");
  ident.set(creator, 8);
  if (ident.length > 64 * 1024) return fail("invalid_option", "Creator string too long");
  const region = encodeRegionTable(l);
  const patches: Patch[] = [
    { kind: "write", offset: 0n, bytes: ident },
    {
      kind: "write",
      offset: 64n * KiB,
      bytes: encodeVhdxHeader(seq, entropy.fileWriteGuid, entropy.dataWriteGuid, l.logSize),
    },
    {
      kind: "write",
      offset: 128n * KiB,
      bytes: encodeVhdxHeader(seq + 1n, entropy.fileWriteGuid, entropy.dataWriteGuid, l.logSize),
    },
  ];
  // qemu writes the BAT in one request, and its block layer refuses
  // requests above BDRV_REQUEST_MAX_BYTES (INT_MAX rounded down to a
  // sector). Only reachable through the uint32 wrap above (size 0 with
  // 256 MiB blocks: a 2 GiB BAT); qemu fails after writing the headers.
  const writesBat = l.subformat === "fixed" || l.useZeroBlocks;
  if (writesBat && l.batLength > VHDX_REQUEST_MAX_BYTES) {
    return fail("invalid_size", "Failed to write the BAT: Input/output error");
  }
  const bat = vhdxBatPrefix(l);
  if (bat !== null) {
    // qemu writes the whole BAT region, zeroes after the last entry
    // included, and so allocates it. Those zeroes are planned as writes
    // (not zero patches, which an applier may leave as holes) so the
    // image's disk usage matches; one shared 1 MiB zero buffer backs them
    // all, so memory stays bounded (the BAT is at most 2 GiB: <= 2048 chunks).
    if (bat.length > 0) patches.push({ kind: "write", offset: l.batOffset, bytes: bat });
    const end = l.batOffset + l.batLength;
    for (let at = l.batOffset + BigInt(bat.length); at < end;) {
      const next = (at / MiB + 1n) * MiB < end ? (at / MiB + 1n) * MiB : end;
      patches.push({ kind: "write", offset: at, bytes: ZERO_MIB.subarray(0, Number(next - at)) });
      at = next;
    }
  }
  // Patches follow qemu's write order (BAT before region tables), so a
  // file system allocates the file's blocks alike.
  patches.push({ kind: "write", offset: 192n * KiB, bytes: region });
  patches.push({ kind: "write", offset: 256n * KiB, bytes: region.slice() });
  patches.push({ kind: "write", offset: l.metadataOffset, bytes: encodeMetadataTable() });
  patches.push({
    kind: "write",
    offset: l.metadataOffset + 64n * KiB,
    bytes: encodeMetadataItems(l, entropy.page83Guid),
  });
  return ok({ layout: l, patches, fileSize: l.fileSize });
}
