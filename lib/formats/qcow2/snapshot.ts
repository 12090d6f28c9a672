// qemu-img snapshot -c/-a/-d on a qcow2 image: qemu 7.2's refusals and
// lookups (bdrv_snapshot_find for -d, find_snapshot_by_id_or_name for -a),
// then the guest's metadata scan (guest/qcow2/snapshot_scan.c), the pure
// planner (snapshot_plan.ts) and the writes, through the host the command
// supplies. Nothing is written unless every check passed and the whole plan
// was made. docs/snapshot.md says what differs from qemu-img.
import { guestErrors, records, snapScanFlags } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import type { FilePlan } from "../plan.ts";
import { qcow2ErrorMessage } from "./errors.ts";
import { GuestResultError, type Qcow2Model } from "./model.ts";
import { decodeSnapshotScan, type Qcow2SnapshotScan, type SnapEntry } from "./snapshot_scan.ts";
import {
  planSnapshotCreate,
  planSnapshotDelete,
  planSnapshotGoto,
  type SnapshotPlan,
} from "./snapshot_plan.ts";
import { sizeToL1 } from "./resize_plan.ts";

export type SnapshotAction = "c" | "a" | "d";

/** What the command gives the driver: the sandbox, the writes, qemu's error shape. */
export interface SnapshotHost {
  /** Runs the snapshot_scan guest with (arg0, arg1). */
  scan(args: bigint[]): Promise<{ records: Rec[]; fileSize: bigint; guestStatus: bigint }>;
  applySteps(steps: FilePlan[]): Promise<void>;
  /** An error with these stderr lines (exit 1). */
  fail(lines: string[]): Error;
  /**
   * Resizes the image to `size` as qcow2's truncate does (-a of a snapshot
   * of another size); instar's refusals start with `pre`.
   */
  resize?(size: bigint, pre: string): Promise<void>;
  /** The time qemu-img stamps a new snapshot with (g_get_real_time). */
  now(): { sec: number; nsec: number };
}

const ERRNO: Record<string, [number, string]> = {
  EINVAL: [22, "Invalid argument"],
  EFBIG: [27, "File too large"],
  ENOENT: [2, "No such file or directory"],
  ENOTSUP: [95, "Operation not supported"],
};

const enc = new TextEncoder();
const eq = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i]);
/** A C string copied into a buffer of `size` bytes (pstrcpy): at most size - 1 bytes. */
const cut = (s: Uint8Array, size: number) => s.subarray(0, Math.min(s.length, size - 1));
/** The bytes of a command-line argument, to its first NUL (argv is a C string). */
function argBytes(s: string): Uint8Array {
  const b = enc.encode(s);
  const nul = b.indexOf(0);
  return nul < 0 ? b : b.subarray(0, nul);
}

/** The prefix of each action's errors in qemu-img. */
function prefix(action: SnapshotAction, name: string): string {
  const verb = action === "c" ? "create" : action === "a" ? "apply" : "delete";
  return `Could not ${verb} snapshot '${name}': `;
}

/** qemu-img's text for an errno an action fails with. */
function errnoText(action: SnapshotAction, errno: string): string {
  const [n, text] = ERRNO[errno];
  if (action === "c") return `-${n} (${text})`;
  if (action === "a") return `Failed to load snapshot: ${text}`;
  return `Failed to free the cluster and L1 table: ${text}`;
}

/**
 * -a: find_snapshot_by_id_or_name over the full strings; -d: bdrv_snapshot_find
 * (by name, over the names qemu's list cuts at 255 bytes) then
 * find_snapshot_by_id_and_name with that entry's cut id and name. -1: none.
 */
export function findSnapshot(
  entries: { id: Uint8Array; name: Uint8Array }[],
  action: "a" | "d",
  arg: string,
) {
  const want = argBytes(arg);
  if (action === "a") {
    const byId = entries.findIndex((e) => eq(e.id, want));
    return byId >= 0 ? byId : entries.findIndex((e) => eq(e.name, want));
  }
  const listed = entries.findIndex((e) => eq(cut(e.name, 256), want));
  if (listed < 0) return { found: false as const };
  const id = cut(entries[listed].id, 128), name = cut(entries[listed].name, 256);
  return { found: true as const, index: entries.findIndex((e) => eq(e.id, id) && eq(e.name, name)) };
}

export async function qcow2Snapshot(
  q: Qcow2Model,
  action: SnapshotAction,
  arg: string,
  host: SnapshotHost,
): Promise<void> {
  const pre = prefix(action, arg);
  const failWith = (why: string) => host.fail([pre + why]);
  // Cases qemu handles that instar refuses before writing (docs/snapshot.md).
  if (q.hasDataFileBit) {
    if (action === "d" && q.nbSnapshots === 0) throw failWith("snapshot not found");
    throw failWith(action === "d" ? "Operation not supported" : errnoText(action, "ENOTSUP"));
  }
  if (action === "a" && q.nbBitmaps > 0) throw failWith("Device has active dirty bitmaps");
  if (q.dirty) {
    throw failWith(
      "the image has the dirty bit set (run qemu-img check -r all first); instar does not repair it",
    );
  }
  // Persistent bitmaps stay where they are: a snapshot neither reads nor
  // changes them (qemu-img rewrites them on its read-write close, which
  // moves them, nothing more). An inconsistent (in-use) bitmap is refused.
  if ((q.bitmaps ?? []).some((b) => b.inUse)) {
    throw failWith("the image has a bitmap in use (inconsistent); instar does not change its snapshots");
  }
  if ((q.layout.autoclearFeatures & ~3n) !== 0n) {
    throw failWith("the image has autoclear features qemu would clear; instar does not rewrite the header");
  }

  // Which snapshot's L1 table the scan must walk: from the info guest's list
  // (ids and names cut at 127/255 bytes), checked again on the full strings.
  let pick: number | undefined;
  if (action !== "c") {
    const listed = q.snapshots ? [...q.snapshots] : [];
    const found = findSnapshot(listed, action, arg);
    if (typeof found === "number") {
      if (found < 0) throw failWith(errnoText("a", "ENOENT"));
      pick = found;
    } else {
      if (!found.found) throw failWith("snapshot not found");
      pick = found.index;
    }
  }
  let scan = await runScan(q, pick, host, pre);
  if (action !== "c") {
    const full = findSnapshot(scan.snapshots, action, arg);
    const index = typeof full === "number" ? full : full.found ? full.index : -1;
    if (index < 0) {
      if (action === "a") throw failWith(errnoText("a", "ENOENT"));
      throw failWith("Can't find the snapshot");
    }
    if (index !== pick) scan = await runScan(q, index, host, pre);
    pick = index;
  }

  let plan: SnapshotPlan;
  if (action === "c") {
    const t = host.now();
    plan = planSnapshotCreate(scan, { name: cut(argBytes(arg), 256), dateSec: t.sec, dateNsec: t.nsec });
  } else if (action === "a") {
    // qcow2_snapshot_goto: an image of another size than the snapshot's is
    // first truncated to it (blk_truncate: a grow, or a shrink that drops
    // the clusters past the end, copying the L2 tables snapshots share).
    const sn = scan.snapshots[pick!];
    if (sn && sn.diskSize !== (scan.virtualSize & ~511n) && host.resize) {
      // instar's own refusals of the goto come before anything is written.
      const first = planSnapshotGoto({ ...scan, virtualSize: sn.diskSize }, pick!);
      if (!first.ok && first.failure.kind === "refuse") {
        throw failWith(first.failure.message);
      }
      await host.resize(sn.diskSize, pre);
      const l1 = sizeToL1(sn.diskSize, scan.clusterBits, q.extendedL2);
      scan = await runScan(q, pick, host, pre, l1 > BigInt(q.layout.l1Size) ? Number(l1) : q.layout.l1Size);
    }
    plan = planSnapshotGoto(scan, pick!);
  } else {
    plan = planSnapshotDelete(scan, pick!);
  }
  if (!plan.ok) {
    const f = plan.failure;
    if (f.kind === "qemu") throw failWith(errnoText(action, f.errno));
    throw failWith(f.message);
  }
  await host.applySteps(plan.steps);
}

async function runScan(
  q: Qcow2Model,
  pick: number | undefined,
  host: SnapshotHost,
  pre: string,
  /** The active L1 table's size the header gives (another after a resize). */
  l1Size = q.layout.l1Size,
): Promise<Qcow2SnapshotScan> {
  const result = await host.scan([
    pick === undefined ? 0n : BigInt(pick) + 1n,
    BigInt(snapScanFlags.ACTIVE_L1),
  ]);
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    const code = f.code as number;
    if (code === guestErrors.INTERNAL) {
      throw host.fail([pre + (SCAN_REFUSALS[Number(f.a0)]?.(f.a1 as bigint) ?? "metadata check failed")]);
    }
    const msg = qcow2ErrorMessage({ code, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint });
    throw host.fail([pre + msg]);
  }
  if (result.guestStatus !== 0n) {
    throw host.fail([pre + "sandbox failure: guest reported an error without a reason"]);
  }
  try {
    const scan = decodeSnapshotScan(result.records, result.fileSize, pick);
    if (scan.snapshots.length !== q.nbSnapshots || scan.l1Size !== l1Size) {
      throw new GuestResultError("the scan disagrees with the image's header");
    }
    return scan;
  } catch (e) {
    if (e instanceof GuestResultError) throw host.fail([pre + `sandbox failure: ${e.message}`]);
    throw e;
  }
}

const hex = (v: bigint) => `0x${v.toString(16)}`;
const SCAN_REFUSALS: Record<number, (a: bigint) => string> = {
  1: (a) => `refcount block offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
  2: (a) => `L1 entry ${hex(a)} names no aligned L2 table (the image is corrupt)`,
  3: (a) => `L2 entry ${hex(a)} names an unaligned data cluster (the image is corrupt)`,
  4: (a) => `L2 entry ${hex(a)} names compressed data past the end of the file (the image is corrupt)`,
};

export type { SnapEntry };
