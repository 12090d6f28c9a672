// Decoding of a vpc/vhdx/vmdk resize scan (guest/vpc/resize_scan.c,
// guest/vhdx/resize_scan.c, guest/vmdk/resize_scan.c): RESIZE_BYTES records reassembled into the
// metadata structures they carry, and the one RESIZE_META record that must
// end the stream. Every value is the image's: lengths, offsets and counts
// are checked here, the planners check the rest.
import { records, resizeBlobs } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { GuestResultError } from "./qcow2/model.ts";
import type { FilePlan, PlanResult } from "./plan.ts";
import type { ResizeHost, ResizeJob, ResizeRequest, ResizeScanResult } from "./types.ts";

/** The expected length of each blob kind. */
const BLOB_SIZE: Record<number, number> = {
  [resizeBlobs.VPC_FOOTER]: 512,
  [resizeBlobs.VPC_DYNHEADER]: 1024,
  [resizeBlobs.VHDX_HEADER]: 4096,
  [resizeBlobs.VHDX_REGION_TABLE]: 65536,
  [resizeBlobs.VMDK_HEADER]: 512,
  [resizeBlobs.VMDK_DESCRIPTOR]: 10240,
};

export interface ResizeMeta {
  format: number;
  flags: number;
  subformat: number;
  virtualSize: bigint;
  blockSize: bigint;
  batOffset: bigint;
  batCapacity: bigint;
  sequence: bigint;
  itemOffset: bigint;
  allocEnd: bigint;
  /** vhdx: the BAT's entry index in the region table. */
  batEntry: number;
  /** Each blob sent, complete (every byte covered exactly once). */
  blobs: Map<number, Uint8Array>;
}

export function decodeResizeMeta(recs: Rec[], format: number): ResizeMeta {
  const metas = recs.filter((r) => r.type === records.RESIZE_META);
  if (metas.length !== 1 || recs[recs.length - 1]?.type !== records.RESIZE_META) {
    throw new GuestResultError("resize scan incomplete");
  }
  const m = metas[0].fields;
  if (m.format !== format) throw new GuestResultError("resize scan of another format");
  const parts = new Map<number, { bytes: Uint8Array; seen: Uint8Array }>();
  let total = 0n;
  for (const r of recs) {
    if (r.type !== records.RESIZE_BYTES) continue;
    const what = r.fields.what as number,
      length = r.fields.length as number,
      offset = r.fields.offset as bigint;
    const size = BLOB_SIZE[what];
    if (size === undefined) throw new GuestResultError("resize scan sent an unknown structure");
    if (length > 1024 || offset > BigInt(size) || offset + BigInt(length) > BigInt(size)) {
      throw new GuestResultError("resize scan bytes out of range");
    }
    let p = parts.get(what);
    if (!p) parts.set(what, p = { bytes: new Uint8Array(size), seen: new Uint8Array(size) });
    const at = Number(offset);
    for (let i = 0; i < length; i++) {
      if (p.seen[at + i]) throw new GuestResultError("resize scan bytes repeated");
      p.seen[at + i] = 1;
    }
    p.bytes.set((r.fields.bytes as Uint8Array).subarray(0, length), at);
    total += BigInt(length);
  }
  if (total !== m.n_bytes) throw new GuestResultError("resize scan byte count mismatch");
  const blobs = new Map<number, Uint8Array>();
  for (const [what, p] of parts) {
    if (p.seen.includes(0)) throw new GuestResultError("resize scan structure incomplete");
    blobs.set(what, p.bytes);
  }
  return {
    format,
    flags: m.flags as number,
    subformat: m.subformat as number,
    virtualSize: m.virtual_size as bigint,
    blockSize: m.block_size as bigint,
    batOffset: m.bat_offset as bigint,
    batCapacity: m.bat_capacity as bigint,
    sequence: m.sequence as bigint,
    itemOffset: m.item_offset as bigint,
    allocEnd: m.alloc_end as bigint,
    batEntry: m.bat_entry as number,
    blobs,
  };
}

const SHRINK_HINT = "Use the --shrink option to perform a shrink operation.";

/**
 * The common tail of vpc's, vhdx's and vmdk's resize after the scan ran without an
 * ERROR record: the scan's records into the planner's summary (`summarize`
 * returns a refusal text for what it will not resize), then the pure plan,
 * with qemu's --shrink hint and warning for a shrink without --shrink.
 * Throws the host's errors; nothing has been written when it throws.
 */
export function planFromScan<S>(
  result: ResizeScanResult,
  host: ResizeHost,
  job: ResizeJob,
  format: number,
  summarize: (m: ResizeMeta, fileSize: bigint) => S | string,
  plan: (s: S, req: ResizeRequest) => PlanResult<FilePlan>,
): { summary: S; plan: FilePlan } {
  if (result.guestStatus !== 0n) {
    throw host.refuse("sandbox failure: guest reported an error without a reason");
  }
  let s: S | string;
  try {
    s = summarize(decodeResizeMeta(result.records, format), result.fileSize);
  } catch (e) {
    if (e instanceof GuestResultError) throw host.refuse(`sandbox failure: ${e.message}`);
    throw e;
  }
  if (typeof s === "string") throw host.refuse(s);
  const p = plan(s, { newSize: job.newSize, shrink: job.shrink, beyondQemu: true });
  if (!p.ok) {
    if (p.error.message === SHRINK_HINT) {
      throw host.fail([
        SHRINK_HINT,
        "warning: Shrinking an image will delete all data beyond the shrunken image's end. " +
        "Before performing such an operation, make sure there is no important data there.",
      ]);
    }
    throw host.refuse(p.error.message);
  }
  return { summary: s, plan: p.value };
}
