// Seed 003's 32-byte fuzz-input header for the resize planners, decoded
// into the typed summaries the vpc, vhdx and vmdk planners take. Bytes past
// the header are the "existing state" pool: the fields a real guest scan
// would extract (sequence numbers, table capacities, offsets) come from it,
// so a fuzzer can reach every edge, including values no real image has.
//
//   0     format selector (mod 6): 0 raw, 1 qcow2 grow, 2 qcow2 shrink,
//         3 vmdk, 4 vhd, 5 vhdx  (raw and qcow2 belong to other planners)
//   1     flags: bit 0 allow shrink, bit 1 vhdx log GUID set, bit 2 vhdx
//         region table present (its BAT entry pool(5) mod 4, pointing at the
//         BAT unless bit 3), bits 4-5 preallocation mode
//   2     refcount_bits selector (qcow2 only)
//   3     subformat selector (vmdk: bit 0 sparse/stream, bit 1 directory
//         offsets pool(5), pool(6), bit 2 allocated grains pool(7), bit 3
//         stale grain table tail; vhd:
//         dynamic/fixed)
//   4..8  u32 LE cluster / grain / block size
//   8..16 u64 LE current virtual size
//  16..24 u64 LE new virtual size
//  24..32 u64 LE current file size
//  32..   pool, read as consecutive u64 LE values (missing bytes read as 0)
import type { VpcResizeSummary } from "./resize_plan.ts";
import type { VhdxResizeSummary } from "../vhdx/resize_plan.ts";
import type { VmdkResizeSummary } from "../vmdk/resize_plan.ts";

export type { ResizeRequest } from "../types.ts";
import type { ResizeRequest } from "../types.ts";

export type DecodedResize =
  | { format: "vpc"; summary: VpcResizeSummary; request: ResizeRequest }
  | { format: "vhdx"; summary: VhdxResizeSummary; request: ResizeRequest }
  | { format: "vmdk"; summary: VmdkResizeSummary; request: ResizeRequest }
  | { format: "other"; selector: number };

export const RESIZE_INPUT_HEADER = 32;

/** Decodes a fuzz input; null when it is shorter than the 32-byte header. */
export function decodeResizeInput(bytes: Uint8Array): DecodedResize | null {
  if (bytes.length < RESIZE_INPUT_HEADER) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const selector = bytes[0] % 6;
  const flags = bytes[1];
  const sub = bytes[3];
  const unit = BigInt(dv.getUint32(4, true));
  const current = dv.getBigUint64(8, true);
  const newSize = dv.getBigUint64(16, true);
  const fileSize = dv.getBigUint64(24, true);
  const pool = (i: number): bigint => {
    const at = RESIZE_INPUT_HEADER + 8 * i;
    if (at + 8 > bytes.length) return 0n;
    return dv.getBigUint64(at, true);
  };
  const request: ResizeRequest = { newSize, shrink: (flags & 1) === 1, beyondQemu: true };
  switch (selector) {
    case 3:
      return {
        format: "vmdk",
        request,
        summary: {
          subformat: sub % 2 === 0 ? "monolithicSparse" : "streamOptimized",
          capacity: current / 512n,
          granularity: unit & 0xffffn,
          numGtesPerGt: pool(0) & 0xffffffffn,
          gdEntries: pool(1) & 0xffffffffn,
          descriptorOffset: pool(2),
          descriptorSectors: pool(3) & 0xffffn,
          // A minimal descriptor: the extent line and a head count from the pool.
          descriptor: `RW ${current / 512n} SPARSE "fuzz.vmdk"\nddb.geometry.cylinders = "0"\n` +
            `ddb.geometry.heads = "${pool(4) & 0x1ffn}"\n`,
          fileSize,
          // sub bit 1: the directories' offsets (grows past the tables build new ones);
          // sub bit 2: the allocated-grain bound (shrinks)
          ...(sub & 2 ? { gdOffset: pool(5) & 0xffffffffn, rgdOffset: pool(6) & 0xffffffffn } : {}),
          ...(sub & 4 ? { allocatedGrains: pool(7) & 0xffffffffn } : {}),
          ...(sub & 8 ? { staleTail: true } : {}),
        },
      };
    case 4:
      return {
        format: "vpc",
        request,
        summary: {
          subformat: sub % 2 === 0 ? "dynamic" : "fixed",
          currentSize: current,
          fileSize,
          maxTableEntries: pool(0) & 0xffffffffn,
          batOffset: pool(1),
          footer: new Uint8Array(512),
          dynHeader: new Uint8Array(1024),
        },
      };
    case 5:
      return {
        format: "vhdx",
        request,
        summary: {
          sequenceNumber: pool(0),
          activeHeader: (pool(1) & 1n) === 0n ? 1 : 2,
          header: new Uint8Array(4096),
          blockSize: unit,
          virtualSize: current,
          batOffset: pool(2),
          batLength: pool(3) & 0xffffffffn,
          virtualSizeItemOffset: pool(4),
          logGuidZero: (flags & 2) === 0,
          fileSize,
          ...((flags & 4) !== 0 ? fuzzRegionTable(pool(5), pool(2), pool(3), (flags & 8) !== 0) : {}),
        },
      };
    default:
      return { format: "other", selector };
  }
}

/** A region table whose entry `sel` mod 4 names the BAT region (or, with
 * `mismatch`, a region one MiB off): what moving the BAT needs. */
function fuzzRegionTable(sel: bigint, offset: bigint, length: bigint, mismatch: boolean) {
  const regionTable = new Uint8Array(65536);
  const batEntry = Number(sel & 3n);
  const dv = new DataView(regionTable.buffer);
  dv.setBigUint64(16 + 32 * batEntry + 16, (offset + (mismatch ? 1n << 20n : 0n)) & ((1n << 64n) - 1n), true);
  dv.setUint32(16 + 32 * batEntry + 24, Number(length & 0xffffffffn), true);
  return { regionTable, batEntry };
}
