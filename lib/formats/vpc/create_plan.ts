// Create planner for VHD (qemu's "vpc" driver): dynamic and fixed
// subformats, byte-identical to qemu-img 7.2 `create` except the fields qemu
// fills from the clock (footer timestamp) and from randomness (footer UUID),
// which the caller passes in so the planner stays pure. The footer checksum
// covers both, so it differs exactly when they do.
import { fail, type FilePlan, ok, type PlanResult, type WritePatch } from "../plan.ts";
import { vpcGeometry } from "./geometry.ts";

export const VPC_SECTOR = 512n;
/** qemu's VHD_MAX_SECTORS: 2040 GiB, the largest VHD qemu creates. */
export const VPC_MAX_SECTORS = 0xff000000n;
/** qemu's VHD_TIMESTAMP_BASE: VHD timestamps count seconds from 2000-01-01 UTC. */
export const VPC_TIMESTAMP_BASE = 946684800n;
/** Dynamic VHD block size (qemu always uses 2 MiB). */
export const VPC_BLOCK_SIZE = 0x200000n;
export const VPC_FOOTER_SIZE = 512;
export const VPC_DYN_HEADER_SIZE = 1024;
/** The BAT starts after footer copy (512) and dynamic header (1024). */
export const VPC_BAT_OFFSET = 1536n;

export type VpcSubformat = "dynamic" | "fixed";

export interface VpcCreateOptions {
  /** Requested size in bytes (before qemu's rounding). */
  size: bigint;
  /** The `subformat` option text; undefined means dynamic. */
  subformat?: string;
  /** The `force_size` option. */
  forceSize?: boolean;
}

/** Values qemu takes from the clock and the RNG; the caller supplies them. */
export interface VpcEntropy {
  /** Unix time in seconds. */
  unixSeconds: bigint;
  /** 16 random bytes for the footer UUID. */
  uuid: Uint8Array;
}

export interface VpcCreatePlan extends FilePlan {
  /** The virtual size qemu reports for the image (CHS-rounded unless force_size). */
  virtualSize: bigint;
  subformat: VpcSubformat;
  cylinders: number;
  heads: number;
  sectorsPerCylinder: number;
  /** Dynamic only: number of BAT entries (2 MiB blocks). */
  batEntries: bigint;
}

/** qemu's vpc_checksum: one's complement of the byte sum. */
export function vpcChecksum(b: Uint8Array): number {
  let sum = 0;
  for (const x of b) sum = (sum + x) >>> 0;
  return ~sum >>> 0;
}

/** Byte ranges of the footer that come from the clock or the RNG (offset, length). */
export const VPC_FOOTER_VOLATILE: readonly [number, number][] = [
  [24, 4], // timestamp
  [64, 4], // checksum (covers timestamp and UUID)
  [68, 16], // UUID
];

/**
 * The size qemu-img's vpc driver will actually create for `size`, or the
 * refusal. Shared by create and measure.
 */
export function vpcRoundedSize(
  size: bigint,
  forceSize: boolean,
): PlanResult<{ size: bigint; cylinders: number; heads: number; spc: number }> {
  if (size < 0n) return fail("invalid_size", "Image size must be non-negative");
  // qemu silently rounds the size up to whole sectors.
  const rounded = ((size + VPC_SECTOR - 1n) / VPC_SECTOR) * VPC_SECTOR;
  const sectors = rounded / VPC_SECTOR;
  // Seed 002 bug A: the 2040 GiB cap is checked here, before the
  // dynamic/fixed split and before any header arithmetic, so a fixed VHD's
  // "size + footer" can never overflow and both subformats share one bound.
  // qemu reaches the same refusal (-EFBIG, which qemu-img words as below)
  // through the maximum-geometry branch for every size above the cap.
  if (sectors > VPC_MAX_SECTORS) {
    return fail("invalid_size", "The image size is too large for file format 'vpc'");
  }
  if (forceSize) {
    return ok({ size: rounded, cylinders: 65535, heads: 16, spc: 255 });
  }
  const g = vpcGeometry(sectors);
  const chs = BigInt(g.cylinders * g.heads * g.spc);
  // Above what CHS can express, qemu keeps the requested size (already
  // capped above) and records the maximum geometry.
  const total = chs === VPC_MAX_GEOMETRY ? sectors : chs;
  return ok({ size: total * VPC_SECTOR, cylinders: g.cylinders, heads: g.heads, spc: g.spc });
}

/** 65535 cylinders x 16 heads x 255 sectors. */
export const VPC_MAX_GEOMETRY = 65535n * 16n * 255n;

function be16(b: Uint8Array, at: number, v: number) {
  new DataView(b.buffer, b.byteOffset).setUint16(at, v);
}
function be32(b: Uint8Array, at: number, v: number) {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v >>> 0);
}
function be64(b: Uint8Array, at: number, v: bigint) {
  new DataView(b.buffer, b.byteOffset).setBigUint64(at, BigInt.asUintN(64, v));
}
function ascii(b: Uint8Array, at: number, s: string) {
  for (let i = 0; i < s.length; i++) b[at + i] = s.charCodeAt(i);
}

export interface VpcFooterFields {
  forceSize: boolean;
  dynamic: boolean;
  size: bigint;
  cylinders: number;
  heads: number;
  spc: number;
  entropy: VpcEntropy;
}

/** Encodes the 512-byte VHD footer the way vpc_co_create fills it. */
export function encodeVpcFooter(f: VpcFooterFields): Uint8Array {
  const b = new Uint8Array(VPC_FOOTER_SIZE);
  ascii(b, 0, "conectix");
  be32(b, 8, 2); // features: reserved bit always set
  be32(b, 12, 0x00010000); // format version 1.0
  be64(b, 16, f.dynamic ? 512n : 0xffffffffffffffffn); // next structure (the dynamic header)
  be32(b, 24, Number(BigInt.asUintN(32, f.entropy.unixSeconds - VPC_TIMESTAMP_BASE)));
  ascii(b, 28, f.forceSize ? "qem2" : "qemu"); // qemu marks force_size images as "qem2"
  be16(b, 32, 5); // creator version: Virtual PC 2007 (5.3)
  be16(b, 34, 3);
  ascii(b, 36, "Wi2k");
  be64(b, 40, f.size); // original size
  be64(b, 48, f.size); // current size
  be16(b, 56, f.cylinders);
  b[58] = f.heads;
  b[59] = f.spc;
  be32(b, 60, f.dynamic ? 3 : 2); // disk type
  b.set(f.entropy.uuid.subarray(0, 16), 68);
  be32(b, 64, vpcChecksum(b));
  return b;
}

/** Encodes the 1024-byte dynamic disk header ("cxsparse"). */
export function encodeVpcDynHeader(batEntries: bigint): Uint8Array {
  const b = new Uint8Array(VPC_DYN_HEADER_SIZE);
  ascii(b, 0, "cxsparse");
  // qemu sets all 64 bits of data_offset: MS tools expect that, not the
  // spec's 0xFFFFFFFF.
  be64(b, 8, 0xffffffffffffffffn);
  be64(b, 16, VPC_BAT_OFFSET);
  be32(b, 24, 0x00010000);
  be32(b, 28, Number(batEntries));
  be32(b, 32, Number(VPC_BLOCK_SIZE));
  be32(b, 36, vpcChecksum(b));
  return b;
}

/** BAT bytes rounded up to whole sectors, as qemu lays them out. */
export function vpcBatBytes(batEntries: bigint): bigint {
  return ((batEntries * 4n + 511n) / 512n) * 512n;
}

export function parseVpcSubformat(s: string | undefined): PlanResult<VpcSubformat> {
  if (s === undefined || s === "dynamic") return ok("dynamic");
  if (s === "fixed") return ok("fixed");
  return fail("invalid_option", `Parameter 'subformat' does not accept value '${s}'`);
}

export function planVpcCreate(opts: VpcCreateOptions, entropy: VpcEntropy): PlanResult<VpcCreatePlan> {
  // qemu parses the subformat (QAPI enum) before it rounds or checks the size.
  const sub = parseVpcSubformat(opts.subformat);
  if (!sub.ok) return sub;
  if (entropy.uuid.length < 16) return fail("invalid_option", "UUID needs 16 bytes");
  const forceSize = opts.forceSize ?? false;
  const r = vpcRoundedSize(opts.size, forceSize);
  if (!r.ok) return r;
  const { size, cylinders, heads, spc } = r.value;
  const dynamic = sub.value === "dynamic";
  const footer = encodeVpcFooter({ forceSize, dynamic, size, cylinders, heads, spc, entropy });
  const base = { virtualSize: size, subformat: sub.value, cylinders, heads, sectorsPerCylinder: spc };
  if (!dynamic) {
    // Fixed: the data area is the file's first `size` bytes (a hole), then
    // the footer. qemu grows the fresh file with a truncate, and its file
    // layer then writes zeroes over the first block (512 bytes below 4 KiB
    // files, else 4 KiB) to speed up alignment probing; we write the same
    // zeroes so the image's allocation (info's actual-size) matches.
    const fileSize = size + BigInt(VPC_FOOTER_SIZE);
    const first = fileSize < 4096n ? 512n : 4096n;
    let patches: WritePatch[];
    if (size >= first) {
      patches = [
        { kind: "write", offset: 0n, bytes: new Uint8Array(Number(first)) },
        { kind: "write", offset: size, bytes: footer },
      ];
    } else {
      // The footer lies inside the first block: one write holds both.
      const b = new Uint8Array(
        Number(size) + VPC_FOOTER_SIZE > Number(first) ? Number(size) + VPC_FOOTER_SIZE : Number(first),
      );
      b.set(footer, Number(size));
      patches = [{ kind: "write", offset: 0n, bytes: b }];
    }
    return ok({ ...base, batEntries: 0n, patches, fileSize });
  }
  const sectors = size / VPC_SECTOR;
  const batEntries = (sectors + VPC_BLOCK_SIZE / VPC_SECTOR - 1n) / (VPC_BLOCK_SIZE / VPC_SECTOR);
  const batBytes = vpcBatBytes(batEntries);
  const patches: WritePatch[] = [
    { kind: "write", offset: 0n, bytes: footer },
    { kind: "write", offset: 512n, bytes: encodeVpcDynHeader(batEntries) },
  ];
  // Every BAT entry starts as 0xFFFFFFFF (unallocated), padding included:
  // qemu writes whole 0xFF sectors.
  if (batBytes > 0n) {
    patches.push({
      kind: "write",
      offset: VPC_BAT_OFFSET,
      bytes: new Uint8Array(Number(batBytes)).fill(0xff),
    });
  }
  const tail = VPC_BAT_OFFSET + batBytes;
  patches.push({ kind: "write", offset: tail, bytes: footer.slice() });
  return ok({ ...base, batEntries, patches, fileSize: tail + BigInt(VPC_FOOTER_SIZE) });
}
