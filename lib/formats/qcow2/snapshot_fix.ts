// check -r all's qcow2_check_fix_snapshot_table (qemu 7.2
// block/qcow2-snapshot.c): after the refcount repairs, an image with an
// incomplete snapshot table entry, or one with more than 1024 bytes of
// extra data (cut to its first 1024 bytes, as the scan reports it), gets
// its table written anew
// (qcow2_write_snapshots: every entry with its 24 bytes of extra data, the
// new table allocated first-fit, the header's pointer, the old table
// freed). The snapshot_scan guest reads the repaired file; the pure
// planner (planSnapshotTableRewrite) plans the writes.
import { guestErrors, records, snapScanFlags } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import type { FilePlan } from "../plan.ts";
import { GuestResultError } from "./model.ts";
import { decodeSnapshotScan } from "./snapshot_scan.ts";
import { planSnapshotTableRewrite } from "./snapshot_plan.ts";

export interface SnapshotFixHost {
  /** Runs the snapshot_scan guest on the image with (arg0, arg1). */
  scan(args: bigint[]): Promise<{ records: Rec[]; fileSize: bigint; guestStatus: bigint }>;
  applySteps(steps: FilePlan[]): Promise<void>;
  /** instar's refusal or a sandbox failure, with `why`. */
  fail(why: string): Error;
}

/** Returns the file's size after the rewrite. */
export async function fixSnapshotTable(host: SnapshotFixHost, nbSnapshots: number): Promise<bigint> {
  const result = await host.scan([0n, BigInt(snapScanFlags.ACTIVE_L1 | snapScanFlags.DROP_EXTRA)]);
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const internal = (err.fields.code as number) === guestErrors.INTERNAL;
    throw host.fail(
      internal
        ? "the repaired image is still corrupt; the snapshot table was not rewritten"
        : "snapshot scan failed",
    );
  }
  if (result.guestStatus !== 0n) throw host.fail("sandbox failure: guest reported an error without a reason");
  let scan;
  try {
    scan = decodeSnapshotScan(result.records, result.fileSize);
  } catch (e) {
    if (e instanceof GuestResultError) throw host.fail(`sandbox failure: ${e.message}`);
    throw e;
  }
  if (scan.snapshots.length !== nbSnapshots) {
    throw host.fail("sandbox failure: the scan disagrees with the header");
  }
  const plan = planSnapshotTableRewrite(scan);
  if (!plan.ok) throw host.fail(plan.failure.message);
  await host.applySteps(plan.steps);
  return plan.steps.length ? plan.steps[plan.steps.length - 1].fileSize : result.fileSize;
}
