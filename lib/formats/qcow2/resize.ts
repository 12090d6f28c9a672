// qcow2's resize (qcow2_co_truncate): qemu's own refusals, then the guest's
// metadata scan (guest/qcow2/resize_scan.c), the pure planner
// (resize_plan.ts) and the writes. Nothing is written unless every check
// passed. docs/resize.md says what a crash mid-way leaves behind.
import { formats, guestErrors, records, resizeFlags } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import type { ResizeSupport } from "../types.ts";
import { qcow2ErrorMessage } from "./errors.ts";
import { GuestResultError, qcow2Model } from "./model.ts";
import { prepareBitmapResize, storeBitmapsAfterResize } from "./resize_bitmaps.ts";
import { planQcow2Resize, type Qcow2ResizeScan } from "./resize_plan.ts";

/** Records of one kind the guest may send (guest/qcow2/resize_scan.c RESIZE_MAX_EACH). */
const RESIZE_MAX_EACH = 256 * 1024;

export const qcow2Resize: ResizeSupport = {
  async run(job, host) {
    const q = job.image.qcow2!;
    const total = job.newSize, prealloc = job.preallocation;
    if (total % 512n !== 0n) throw host.fail(["The new size must be a multiple of 512"]);
    if (q.nbSnapshots > 0 && q.version < 3) throw host.fail(["Can't resize a v2 image which has snapshots"]);
    // Cases qemu handles that instar refuses before writing (docs/resize.md).
    if (q.corrupt) {
      throw host.fail([
        `Could not open '${job.filename}': qcow2: Image is corrupt; cannot be opened read/write`,
      ]);
    }
    if (q.dirty) {
      throw host.refuse(
        "the image has the dirty bit set (run qemu-img check -r all first); instar does not repair refcounts",
      );
    }
    if (q.hasDataFileBit) throw host.refuse("instar does not resize images with an external data file");
    // Persistent bitmaps: marked in use, then stored anew at close (resize_bitmaps.ts).
    const bitmaps = (q.nbBitmaps > 0 || q.hasBitmapsExt) && !job.bitmapsHeld
      ? await prepareBitmapResize(host, job.filename, total)
      : undefined;
    // A shrink copies the L2 tables internal snapshots share (resize_plan.ts).

    // Preallocation links the new range: the guest checks nothing maps it yet.
    const result = await host.scan(formats.QCOW2, [total, prealloc !== "off" ? 1n : 0n]);
    const err = result.records.find((r) => r.type === records.ERROR);
    if (err) {
      const f = err.fields;
      const code = f.code as number;
      if (code === guestErrors.INTERNAL) {
        throw host.refuse(SCAN_REFUSALS[Number(f.a0)]?.(f.a1 as bigint) ?? "metadata check failed");
      }
      const msg = qcow2ErrorMessage({ code, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint });
      throw host.fail([`Could not open '${job.filename}': ${msg}`]);
    }
    if (result.guestStatus !== 0n) {
      throw host.refuse("sandbox failure: guest reported an error without a reason");
    }
    let scan: Qcow2ResizeScan;
    const summary = result.records.find((r) => r.type === records.RESIZE_SUMMARY);
    const busyTail = summary !== undefined &&
      ((summary.fields.flags as number) & resizeFlags.BUSY_TAIL) !== 0;
    try {
      scan = decodeScan(result.records, result.fileSize);
    } catch (e) {
      if (e instanceof GuestResultError) throw host.refuse(`sandbox failure: ${e.message}`);
      throw e;
    }
    if (busyTail) {
      throw host.refuse("instar does not preallocate over clusters the image already maps past its end");
    }
    const plan = planQcow2Resize(scan, { newSize: total, preallocation: prealloc });
    if (!plan.ok) {
      // qemu's own failures keep qemu-img's words; instar's refusals name the file.
      if (
        /^Failed to (grow the L1 table|resize refcount structures|resize underlying file)/.test(
          plan.error.message,
        )
      ) {
        throw host.fail([plan.error.message]);
      }
      throw host.refuse(plan.error.message);
    }
    if (bitmaps) await host.applySteps(bitmaps.openSteps, "Could not resize image", "discard", true);
    await host.applySteps(plan.value.steps, "Could not resize image", "discard");
    if (bitmaps) await storeBitmapsAfterResize(host, job.filename, bitmaps, plan.value.freeIndex);
  },
};

const hex = (v: bigint) => `0x${v.toString(16)}`;
const SCAN_REFUSALS: Record<number, (a: bigint) => string> = {
  1: (a) => `refcount block offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
  2: (a) => `L2 table offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
  3: (a) => `data cluster offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
};

/** The scan's records as the planner's input, every count and bound re-checked. */
export function decodeScan(recs: Rec[], fileSize: bigint): Qcow2ResizeScan {
  const model = qcow2Model(recs, 0);
  const info = recs.find((r) => r.type === records.QCOW2_INFO)!.fields;
  const summaries = recs.filter((r) => r.type === records.RESIZE_SUMMARY);
  if (summaries.length !== 1 || recs[recs.length - 1].type !== records.RESIZE_SUMMARY) {
    throw new GuestResultError("resize scan incomplete");
  }
  const s = summaries[0].fields;
  if (((s.flags as number) & resizeFlags.TOO_BIG) !== 0) {
    throw new GuestResultError(
      `the image has too much metadata for instar to resize (more than ${RESIZE_MAX_EACH} records of one kind)`,
    );
  }
  const l1 = new Map<number, bigint>();
  const reftable = new Map<number, bigint>();
  const runs = [], frees = [], zeros = [];
  const compressed = new Map<bigint, { first: bigint; count: bigint }>();
  for (const r of recs) {
    const f = r.fields;
    switch (r.type) {
      case records.RESIZE_L1:
      case records.RESIZE_REFTABLE: {
        const idx = f.index as bigint;
        if (idx >= 1n << 32n) throw new GuestResultError("table index out of range");
        const m = r.type === records.RESIZE_L1 ? l1 : reftable;
        if (m.has(Number(idx))) throw new GuestResultError("table index repeated");
        m.set(Number(idx), f.value as bigint);
        break;
      }
      case records.RESIZE_REFRUN:
        runs.push({ start: f.start as bigint, count: f.count as bigint, refcount: f.refcount as bigint });
        break;
      case records.RESIZE_FREE:
        frees.push({ start: f.start as bigint, count: f.count as bigint });
        break;
      case records.RESIZE_ZERO:
        zeros.push({ start: f.start as bigint, count: f.count as bigint });
        break;
      case records.COMPRESSED_L2: {
        const g = f.start as bigint, first = f.refcount as bigint, count = f.count as bigint;
        // A compressed cluster spans at most 2^13 sectors, so a few host clusters.
        if (compressed.has(g) || count < 1n || count > 1n << 20n || first >= 1n << 56n) {
          throw new GuestResultError("compressed cluster record out of range");
        }
        if (compressed.size >= RESIZE_MAX_EACH) throw new GuestResultError("too many compressed clusters");
        compressed.set(g, { first, count });
        break;
      }
    }
  }
  const counts: [string, number][] = [
    ["n_l1", l1.size],
    ["n_reftable", reftable.size],
    ["n_runs", runs.length],
    ["n_free", frees.length],
    ["n_zero", zeros.length],
  ];
  for (const [k, v] of counts) {
    if (s[k] !== BigInt(v) || v > RESIZE_MAX_EACH) throw new GuestResultError(`resize scan ${k} mismatch`);
  }
  return {
    clusterBits: model.clusterBits,
    refcountOrder: Math.log2(model.refcountBits),
    extendedL2: model.extendedL2,
    virtualSize: model.virtualSize,
    fileSize,
    l1Offset: info.l1_table_offset as bigint,
    l1Size: info.l1_size as number,
    l1,
    reftableOffset: info.refcount_table_offset as bigint,
    reftableClusters: info.refcount_table_clusters as number,
    reftable,
    runs,
    frees,
    zeros,
    hasBacking: model.backingFile !== undefined,
    // Only scans asked for them list compressed entries (resize_scan arg[1] bit 2).
    compressed: compressed.size > 0 ? compressed : undefined,
  };
}
