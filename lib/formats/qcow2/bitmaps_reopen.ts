// A qcow2 image with persistent bitmaps opened read-write by a command that
// changes the image but none of its bitmaps' bits (commit emptying its
// overlay: qcow2_make_empty discards at the driver level, which no dirty
// bitmap sees): qemu's open marks every bitmap in use
// (qcow2_load_dirty_bitmaps), and its close stores every bitmap anew
// (qcow2_store_persistent_dirty_bitmaps: new data clusters and tables, the
// new directory, the header, the old structures freed). The bitmap planner
// (bitmap_plan.ts) plans the marking ("open") and, on a fresh scan taken
// after the command's own writes, the store ("store"), with the data
// clusters as the first scan found them (the command never moves them).
//
// Crash-safe order: (1) the in-use marking (header autoclear bit off, the
// directory in place, the bit on again); (2) the command's own steps; (3)
// the store's epochs (new structures synced before the header names them,
// old ones released after). A crash after (1) leaves bitmaps flagged in use
// (inconsistent), as a crash of qemu's own command does; never a bitmap
// pointing at freed clusters.
import type { Rec } from "../../abi/records.ts";
import type { FilePlan } from "../plan.ts";
import {
  bitmapRefusal,
  type BitmapRequest,
  BME_FLAG_IN_USE,
  planQcow2Bitmap,
  type Qcow2BitmapScan,
  stagingOffset,
} from "./bitmap_plan.ts";
import { bitmapsAsLoaded, decodeReopenScan, reopenRequest } from "./bitmap_reopen_common.ts";
import { tailBitsAsLoaded } from "./bitmap_tail.ts";

/** What the caller gives: the bitmap_scan guest, the applier, and its error shapes. */
export interface ReopenHost {
  bitmapScan(): Promise<{ records: Rec[]; fileSize: bigint }>;
  applySteps(steps: FilePlan[]): Promise<void>;
  /** An error printed as these lines (qemu's own words). */
  fail(lines: string[]): Error;
  /** instar's refusal, nothing written yet (or the store refused). */
  refuse(why: string): Error;
}

export interface BitmapReopen {
  /** The bitmaps as loaded before the marking. */
  before: Qcow2BitmapScan;
  /** The in-use marking, applied before the command's own steps. */
  openSteps: FilePlan[];
}

const keptInUse = (r: BitmapRequest): BitmapRequest => ({ ...r, inUseKept: true });

function scanNow(host: ReopenHost, filename: string): Promise<Qcow2BitmapScan> {
  return decodeReopenScan(host, filename, host.bitmapScan());
}

/** Scans the bitmaps, checks instar can carry them, plans the in-use marking (nothing written). */
export async function prepareBitmapReopen(host: ReopenHost, filename: string): Promise<BitmapReopen> {
  // All-ones entries and bits past the end: as qemu holds them in memory (bitmap_tail.ts).
  const before = tailBitsAsLoaded(await scanNow(host, filename));
  // Bitmaps already in use are loaded as inconsistent and never stored (kept as they are).
  const why = bitmapRefusal(before, true);
  if (why) throw host.refuse(why);
  const plan = planQcow2Bitmap(before, keptInUse(reopenRequest("open")));
  if (!plan.ok) throw host.refuse(plan.error.message);
  return { before, openSteps: plan.value.steps };
}

/**
 * Bits the command's writes set in enabled bitmaps (commit into a base): the
 * guest ORs them into each bitmap's data and stages the result past
 * `staging` (stagingOffset of the scan the store is planned on); the
 * directory index -> table index -> staged offset, and the file's length
 * with the staging.
 */
export type StageDirty = (
  loaded: Qcow2BitmapScan,
  staging: bigint,
) => Promise<{ data: Map<number, Map<bigint, bigint>>; fileEnd: bigint } | undefined>;

/** After the command's writes: the bitmaps stored anew, as qemu's close does. */
export async function storeBitmapsAtClose(
  host: ReopenHost,
  filename: string,
  job: BitmapReopen,
  stage?: StageDirty,
): Promise<void> {
  const now = await scanNow(host, filename);
  const loaded = bitmapsAsLoaded(host, now, job.before, "written");
  const req = keptInUse(reopenRequest("store"));
  const staged = stage ? await stage(loaded, stagingOffset(loaded)) : undefined;
  if (staged) {
    req.merged = { data: new Map(), fileEnd: staged.fileEnd };
    req.stagedData = staged.data;
  }
  const plan = planQcow2Bitmap(loaded, req);
  if (!plan.ok) throw host.refuse(plan.error.message);
  await host.applySteps(plan.value.steps);
}

/**
 * qcow2_truncate_bitmaps_check: qcow2_co_truncate refuses (ENOTSUP) while
 * any bitmap is inconsistent (it was in use before the reopen).
 */
export function truncateRefused(job: BitmapReopen): boolean {
  return job.before.bitmaps.some((b) => (b.flags & BME_FLAG_IN_USE) !== 0);
}
