// amend -o compat=0.10 of a qcow2 image: the guest's downgrade scan
// (guest/qcow2/resize_scan.c with arg[1] bit 1), its records decoded and
// re-checked, the pure planner (downgrade_plan.ts) and the writes through
// the command's host. Nothing is written unless every check passed.
import { guestErrors, records } from "../../abi/spec.ts";
import { formats } from "../../abi/spec.ts";
import type { DecodedImage, ResizeHost } from "../types.ts";
import { qcow2ErrorMessage } from "./errors.ts";
import { GuestResultError } from "./model.ts";
import { decodeScan } from "./resize.ts";
import { type DowngradeScan, planQcow2Downgrade, type SnapSizes, type ZeroEntry } from "./downgrade_plan.ts";

const MAX_EACH = 256 * 1024;
const UINT64_MAX = (1n << 64n) - 1n;

/** Downgrades; returns the L1 entries qemu's walk visits (for `-p`). */
export async function qcow2Downgrade(
  filename: string,
  image: DecodedImage & { fileSize: bigint },
  host: ResizeHost,
): Promise<bigint> {
  const q = image.qcow2!;
  const result = await host.scan(formats.QCOW2, [q.virtualSize, 2n]);
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    const code = f.code as number;
    if (code === guestErrors.INTERNAL) throw host.refuse("metadata check failed (the image is corrupt)");
    const msg = qcow2ErrorMessage({ code, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint });
    throw host.fail([`Could not open '${filename}': ${msg}`]);
  }
  if (result.guestStatus !== 0n) {
    throw host.refuse("sandbox failure: guest reported an error without a reason");
  }
  let scan: DowngradeScan;
  try {
    const base = decodeScan(result.records, result.fileSize);
    const zeros: ZeroEntry[] = [];
    const snapshots: SnapSizes[] = [];
    let count: { index: bigint; value: bigint } | undefined;
    for (const r of result.records) {
      const f = r.fields;
      if (r.type === records.AMEND_ZERO) zeros.push({ at: f.index as bigint, value: f.value as bigint });
      else if (r.type === records.AMEND_SNAP) {
        if (f.start !== BigInt(snapshots.length)) throw new GuestResultError("snapshot index out of order");
        const disk = f.count as bigint;
        snapshots.push({
          diskSize: disk === UINT64_MAX ? undefined : disk,
          vmStateSize: f.refcount as bigint,
        });
      } else if (r.type === records.AMEND_SNAP_L1) {
        const last = snapshots[snapshots.length - 1];
        if (!last || f.index !== BigInt(snapshots.length - 1) || last.l1Size !== undefined) {
          throw new GuestResultError("snapshot L1 size out of order");
        }
        last.l1Size = f.value as bigint;
      } else if (r.type === records.AMEND_COUNT) {
        if (count) throw new GuestResultError("downgrade scan count repeated");
        count = { index: f.index as bigint, value: f.value as bigint };
      }
    }
    if (
      !count || count.index !== BigInt(zeros.length) || count.value !== BigInt(snapshots.length) ||
      zeros.length > MAX_EACH || snapshots.length !== q.nbSnapshots
    ) {
      throw new GuestResultError("downgrade scan incomplete");
    }
    scan = {
      clusterBits: base.clusterBits,
      refcountOrder: base.refcountOrder,
      reftableOffset: base.reftableOffset,
      reftableClusters: base.reftableClusters,
      reftable: base.reftable,
      fileSize: base.fileSize,
      runs: base.runs,
      zeros,
      snapshots,
      hasBacking: base.hasBacking ?? false,
    };
  } catch (e) {
    if (e instanceof GuestResultError) throw host.refuse(`sandbox failure: ${e.message}`);
    throw e;
  }
  if (scan.fileSize !== image.fileSize) throw host.refuse("the file changed while it was being read");
  const plan = planQcow2Downgrade(q, scan);
  if (plan.kind === "error") throw host.fail([plan.message]);
  if (plan.kind === "refuse") throw host.refuse(plan.why);
  await host.applySteps(plan.steps, "Error while amending options", "write");
  return plan.l1Entries;
}
