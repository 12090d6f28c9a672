// Byte encoders for qcow2 metadata: the header cluster, refcount blocks,
// L1/L2 entries and compressed-cluster descriptors, plus refcount metadata
// sizing. Pure functions shared by create, convert's output planner and
// resize. The layouts follow the qcow2 specification
// (docs/interop/qcow2.txt) and what qemu 7.2 writes: the header as
// qcow2_update_header lays it out, refcounts as the get/set_refcount_roN
// helpers pack them, compressed descriptors as
// qcow2_alloc_compressed_cluster_offset builds them.
import { divRoundUp, fail, ok, type PlanResult } from "../plan.ts";

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** qemu refuses L1 tables larger than this many bytes. */
export const MAX_L1_BYTES = 32n * 1024n * 1024n;
/** qemu refuses refcount tables larger than this many bytes. */
export const MAX_REFTABLE_BYTES = 8n * 1024n * 1024n;
/** Host offsets in L1/L2 entries are bits 9..55. */
export const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
export const OFLAG_COPIED = 1n << 63n;
export const OFLAG_COMPRESSED = 1n << 62n;
export const OFLAG_ZERO = 1n;
/** Extended L2: every subcluster allocated (bits 0..31 of the bitmap). */
export const L2_BITMAP_ALL_ALLOC = 0xffffffffn;
export const COMPRESSED_SECTOR = 512n;

/** Header lengths: version 2 stops before incompatible_features; v3 is qemu's full struct. */
export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 112;

const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

/**
 * The feature name table qemu writes for v3 images with clusters larger
 * than 4 KiB (type, bit, name). Type 0 incompatible, 1 compatible,
 * 2 autoclear.
 */
const FEATURE_TABLE: [number, number, string][] = [
  [0, 0, "dirty bit"],
  [0, 1, "corrupt bit"],
  [0, 2, "external data file"],
  [0, 3, "compression type"],
  [0, 4, "extended L2 entries"],
  [1, 0, "lazy refcounts"],
  [2, 0, "bitmaps"],
  [2, 1, "raw external data"],
];
const FEATURE_ENTRY_SIZE = 48;

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  virtualSize: bigint;
  l1Size: number;
  l1TableOffset: bigint;
  refcountTableOffset: bigint;
  refcountTableClusters: number;
  /** log2 of the refcount width; must be 4 for version 2. */
  refcountOrder: number;
  compressionType: "zlib" | "zstd";
  extendedL2: boolean;
  lazyRefcounts: boolean;
  /** Extra incompatible bits (dirty, corrupt) to set. */
  extraIncompatible?: bigint;
  nbSnapshots?: number;
  snapshotsOffset?: bigint;
  /** Backing file name, stored after the header extensions. */
  backingFile?: Uint8Array;
  /** Backing format name (stored as the backing-format extension). */
  backingFormat?: string;
  /** The bitmaps extension (written when nb > 0, after the feature table). */
  bitmaps?: { nb: number; dirSize: bigint; dirOffset: bigint };
  /** The autoclear feature bits (v3; 0 when absent). */
  autoclear?: bigint;
  /** crypt_method: 0 none (default), 1 aes, 2 luks. */
  cryptMethod?: number;
  /** The full disk encryption header pointer extension (LUKS). */
  cryptHeader?: { offset: bigint; length: bigint };
}

/** The full disk encryption header pointer extension's magic. */
export const EXT_CRYPTO_HEADER = 0x0537be77;

/** The bitmaps header extension's magic. */
export const EXT_BITMAPS = 0x23852875;

function put32(b: Uint8Array, off: number, v: number) {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(off, v >>> 0, false);
}
function put64(b: Uint8Array, off: number, v: bigint) {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setBigUint64(off, BigInt.asUintN(64, v), false);
}

/** The incompatible feature bits a header with these options carries. */
export function incompatibleBits(
  h: Pick<Qcow2Header, "compressionType" | "extendedL2" | "extraIncompatible">,
): bigint {
  let bits = h.extraIncompatible ?? 0n;
  if (h.compressionType === "zstd") bits |= INCOMPAT_COMPRESSION;
  if (h.extendedL2) bits |= INCOMPAT_EXTL2;
  return bits;
}

/**
 * The whole header cluster (clusterSize bytes), as qemu's
 * qcow2_update_header writes it: fixed fields, then the backing-format
 * extension, the encryption header pointer, the feature name table (v3 and clusters > 4 KiB), the end
 * marker, then the backing file name. Fails when the name does not fit in
 * the cluster (qemu: ENOSPC).
 */
export function encodeHeader(h: Qcow2Header): PlanResult<Uint8Array> {
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    return fail("invalid_option", `Unsupported cluster size: 2^${h.clusterBits}`);
  }
  const clusterSize = 1 << h.clusterBits;
  const b = new Uint8Array(clusterSize);
  put32(b, 0, QCOW2_MAGIC);
  put32(b, 4, h.version);
  // backing_file_offset/size (8, 16) are filled in below.
  put32(b, 20, h.clusterBits);
  put64(b, 24, h.virtualSize);
  put32(b, 32, h.cryptMethod ?? 0);
  put32(b, 36, h.l1Size);
  put64(b, 40, h.l1TableOffset);
  put64(b, 48, h.refcountTableOffset);
  put32(b, 56, h.refcountTableClusters);
  put32(b, 60, h.nbSnapshots ?? 0);
  put64(b, 64, h.snapshotsOffset ?? 0n);
  let pos = V2_HEADER_LENGTH;
  if (h.version === 3) {
    put64(b, 72, incompatibleBits(h));
    put64(b, 80, h.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n);
    put64(b, 88, h.autoclear ?? 0n);
    put32(b, 96, h.refcountOrder);
    put32(b, 100, V3_HEADER_LENGTH);
    b[104] = h.compressionType === "zstd" ? 1 : 0;
    pos = V3_HEADER_LENGTH;
  }
  const enc = new TextEncoder();
  const ext = (magic: number, data: Uint8Array): boolean => {
    const len = 8 + Math.ceil(data.length / 8) * 8;
    if (pos + len > clusterSize) return false;
    put32(b, pos, magic);
    put32(b, pos + 4, data.length);
    b.set(data, pos + 8);
    pos += len;
    return true;
  };
  const noSpace = () =>
    fail<Uint8Array>("unsupported", "Could not update qcow2 header: No space left on device");
  if (h.backingFormat !== undefined && !ext(EXT_BACKING_FORMAT, enc.encode(h.backingFormat))) {
    return noSpace();
  }
  if (h.cryptHeader !== undefined) {
    const e = new Uint8Array(16);
    put64(e, 0, h.cryptHeader.offset);
    put64(e, 8, h.cryptHeader.length);
    if (!ext(EXT_CRYPTO_HEADER, e)) return noSpace();
  }
  if (h.version === 3 && clusterSize > 4096) {
    const table = new Uint8Array(FEATURE_TABLE.length * FEATURE_ENTRY_SIZE);
    FEATURE_TABLE.forEach(([type, bit, name], i) => {
      table[i * FEATURE_ENTRY_SIZE] = type;
      table[i * FEATURE_ENTRY_SIZE + 1] = bit;
      table.set(enc.encode(name), i * FEATURE_ENTRY_SIZE + 2);
    });
    if (!ext(EXT_FEATURE_TABLE, table)) return noSpace();
  }
  if (h.bitmaps && h.bitmaps.nb > 0) {
    const e = new Uint8Array(24);
    put32(e, 0, h.bitmaps.nb);
    put64(e, 8, h.bitmaps.dirSize);
    put64(e, 16, h.bitmaps.dirOffset);
    if (!ext(EXT_BITMAPS, e)) return noSpace();
  }
  if (!ext(EXT_END, new Uint8Array(0))) return noSpace();
  if (h.backingFile !== undefined) {
    if (pos + h.backingFile.length > clusterSize) return noSpace();
    b.set(h.backingFile, pos);
    put64(b, 8, BigInt(pos));
    put32(b, 16, h.backingFile.length);
  }
  return ok(b);
}

/** Largest refcount a `refcountBits`-wide entry holds. */
export function refcountMax(refcountBits: number): bigint {
  return (1n << BigInt(refcountBits)) - 1n;
}

/** Entries in one refcount block. */
export function refcountsPerBlock(clusterSize: bigint, refcountBits: number): bigint {
  return (clusterSize * 8n) / BigInt(refcountBits);
}

/**
 * One refcount block: entry i holds counts(i). Widths below 8 bits pack
 * LSB-first within each byte (entry i in byte i*w/8 at bit (i*w)%8);
 * 8 bits and wider are big-endian. Counts must fit the width.
 */
export function encodeRefcountBlock(
  counts: (i: number) => bigint,
  refcountBits: number,
  clusterSize: bigint,
): Uint8Array {
  const b = new Uint8Array(Number(clusterSize));
  const n = Number(refcountsPerBlock(clusterSize, refcountBits));
  for (let i = 0; i < n; i++) {
    const c = counts(i);
    if (c !== 0n) setRefcount(b, i, c, refcountBits);
  }
  return b;
}

/**
 * Stores refcount `value` as entry `index` of a refcount array (one block
 * or several blocks laid end to end), in qemu's packing for the width.
 * Throws a RangeError when the value does not fit: callers check counts
 * against refcountMax first.
 */
export function setRefcount(b: Uint8Array, index: number, value: bigint, refcountBits: number): void {
  if (value < 0n || value > refcountMax(refcountBits)) {
    throw new RangeError(`refcount ${value} does not fit ${refcountBits} bits`);
  }
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  switch (refcountBits) {
    case 1:
    case 2:
    case 4: {
      const perByte = 8 / refcountBits;
      const shift = refcountBits * (index % perByte);
      const at = Math.floor(index / perByte);
      const mask = ((1 << refcountBits) - 1) << shift;
      b[at] = (b[at] & ~mask) | (Number(value) << shift);
      break;
    }
    case 8:
      b[index] = Number(value);
      break;
    case 16:
      dv.setUint16(index * 2, Number(value), false);
      break;
    case 32:
      dv.setUint32(index * 4, Number(value), false);
      break;
    case 64:
      dv.setBigUint64(index * 8, value, false);
      break;
    default:
      throw new RangeError(`refcount width ${refcountBits} is not a power of two up to 64`);
  }
}

/** An L1 entry pointing at the L2 table at `l2Offset`; COPIED when its refcount is 1. */
export function l1Entry(l2Offset: bigint, refcount: bigint = 1n): bigint {
  if (l2Offset === 0n) return 0n;
  return (l2Offset & L2E_OFFSET_MASK) | (refcount === 1n ? OFLAG_COPIED : 0n);
}

/** A standard L2 entry for a data cluster at `hostOffset`; COPIED when its refcount is 1. */
export function l2Entry(hostOffset: bigint, refcount: bigint = 1n): bigint {
  if (hostOffset === 0n) return 0n;
  return (hostOffset & L2E_OFFSET_MASK) | (refcount === 1n ? OFLAG_COPIED : 0n);
}

/** The shift and mask of the sector count in a compressed descriptor. */
export function compressedFields(
  clusterBits: number,
): { csizeShift: bigint; csizeMask: bigint; offsetMask: bigint } {
  const csizeShift = BigInt(62 - (clusterBits - 8));
  return {
    csizeShift,
    csizeMask: (1n << BigInt(clusterBits - 8)) - 1n,
    offsetMask: (1n << csizeShift) - 1n,
  };
}

/**
 * The L2 entry of a compressed cluster whose stream is `length` (> 0) bytes
 * at byte offset `hostOffset`: the offset, the COMPRESSED flag and the
 * number of 512-byte sectors the stream touches beyond the first. Never
 * COPIED. Returns undefined when the offset or count do not fit.
 */
export function compressedL2Entry(
  hostOffset: bigint,
  length: bigint,
  clusterBits: number,
): bigint | undefined {
  const { csizeShift, csizeMask, offsetMask } = compressedFields(clusterBits);
  if (length <= 0n || hostOffset < 0n || (hostOffset & offsetMask) !== hostOffset) return undefined;
  const extra = (hostOffset + length - 1n) / COMPRESSED_SECTOR - hostOffset / COMPRESSED_SECTOR;
  if ((extra & csizeMask) !== extra) return undefined;
  return OFLAG_COMPRESSED | (extra << csizeShift) | hostOffset;
}

/** Writes the 8-byte (standard) or 16-byte (extended: entry + bitmap) L2 slot `index`. */
export function putL2(table: Uint8Array, index: number, entry: bigint, extendedL2: boolean, bitmap = 0n) {
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  if (extendedL2) {
    dv.setBigUint64(index * 16, entry, false);
    dv.setBigUint64(index * 16 + 8, bitmap, false);
  } else {
    dv.setBigUint64(index * 8, entry, false);
  }
}

/** Bytes of one L2 entry. */
export function l2EntrySize(extendedL2: boolean): bigint {
  return extendedL2 ? 16n : 8n;
}

/** Guest clusters one L2 table maps. */
export function l2Entries(clusterSize: bigint, extendedL2: boolean): bigint {
  return clusterSize / l2EntrySize(extendedL2);
}

/** L1 entries needed for `virtualSize` (qemu size_to_l1). */
export function l1EntriesFor(virtualSize: bigint, clusterSize: bigint, extendedL2: boolean): bigint {
  return divRoundUp(virtualSize, clusterSize * l2Entries(clusterSize, extendedL2));
}

/**
 * Refcount blocks and table clusters needed to count `clusters` host
 * clusters plus themselves: the fixed point qcow2_refcount_metadata_size
 * finds (with its "generous increase" of half the table when asked).
 */
export function refcountMetadata(
  clusters: bigint,
  clusterSize: bigint,
  refcountBits: number,
  generousIncrease = false,
): { blocks: bigint; tableClusters: bigint } {
  const perTableCluster = clusterSize / 8n;
  const perBlock = refcountsPerBlock(clusterSize, refcountBits);
  let table = 0n;
  let blocks = 0n;
  let n = 0n;
  let last: bigint;
  do {
    last = n;
    blocks = divRoundUp(clusters + table + blocks, perBlock);
    table = divRoundUp(blocks, perTableCluster);
    n = clusters + blocks + table;
    if (n === last && generousIncrease) {
      clusters += divRoundUp(table, 2n);
      n = 0n;
      generousIncrease = false;
    }
  } while (n !== last);
  return { blocks, tableClusters: table };
}

/** Bytes of refcount metadata (qcow2_refcount_metadata_size). */
export function refcountMetadataSize(
  clusters: bigint,
  clusterSize: bigint,
  refcountBits: number,
  generous = false,
): bigint {
  const { blocks, tableClusters } = refcountMetadata(clusters, clusterSize, refcountBits, generous);
  return (blocks + tableClusters) * clusterSize;
}
