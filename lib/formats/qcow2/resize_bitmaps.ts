// qcow2 resize of an image with persistent dirty bitmaps, as qemu-img 7.2
// does it: the read-write open marks every bitmap in use
// (qcow2_load_dirty_bitmaps), qcow2_co_truncate resizes the image (the
// bitmaps only in memory: bdrv_dirty_bitmap_truncate keeps the bits of the
// kept range, the grown range is clean), and the close stores every bitmap
// anew for the new size (qcow2_store_persistent_dirty_bitmaps: new data
// clusters and tables, the new directory, the header, the old structures
// freed). The bitmap planner (bitmap_plan.ts) plans the marking ("open")
// and, on a fresh scan of the resized file, the store ("store"), with the
// data clusters found by the first scan (the resize never moves them).
//
// Crash-safe order: (1) the in-use marking (header autoclear bit off, the
// directory in place, the bit on again); (2) the resize's own steps; (3) the
// store's epochs (new structures synced before the header names them, old
// ones released after). A crash after (1) leaves bitmaps flagged in use
// (inconsistent), as a crash of qemu's own resize does; never a bitmap
// pointing at freed clusters.
//
// Shrinking: qemu drops the bits past the new end (hbitmap_truncate). The
// guest scans the bits again against the new end (bitmap_scan arg[0] = 2):
// the data clusters before the end are kept verbatim, the ones past it
// dropped, and the one holding the end is stored cut (its first bytes
// copied, the boundary byte as the guest reports it with the bits past the
// end cleared, zeroes after: BITMAP_CUT), as qemu serializes the truncated
// bitmap.
import { bitmapState } from "../../abi/spec.ts";
import type { ResizeHost } from "../types.ts";
import {
  bitmapNameText,
  bitmapRefusal,
  BME_FLAG_IN_USE,
  planQcow2Bitmap,
  type Qcow2BitmapScan,
} from "./bitmap_plan.ts";
import { bitmapsAsLoaded, decodeReopenScan, reopenRequest } from "./bitmap_reopen_common.ts";
import { lastWord, shrunkAsLoaded, tailBitsAsLoaded } from "./bitmap_tail.ts";
import type { FilePlan } from "../plan.ts";

export interface BitmapResize {
  /** The bitmaps as loaded before the resize. */
  before: Qcow2BitmapScan;
  /** The in-use marking, applied before the resize's steps. */
  openSteps: FilePlan[];
}

function scanNow(host: ResizeHost, filename: string, len?: bigint): Promise<Qcow2BitmapScan> {
  if (!host.bitmapScan) throw host.refuse("instar does not resize images with persistent bitmaps here");
  return decodeReopenScan(host, filename, host.bitmapScan(len));
}

/** Scans the bitmaps, checks instar can carry them to `newSize`, plans the in-use marking. */
export async function prepareBitmapResize(
  host: ResizeHost,
  filename: string,
  newSize: bigint,
): Promise<BitmapResize> {
  let before = await scanNow(host, filename);
  // qcow2_truncate_bitmaps_check: an in-use bitmap was not loaded (bdrv_dirty_bitmap_check).
  const inUse = before.bitmaps.find((b) => (b.flags & BME_FLAG_IN_USE) !== 0);
  if (inUse) {
    throw host.fail([
      `Bitmap '${bitmapNameText(inUse.name)}' is inconsistent and cannot be used\n` +
      "Try block-dirty-bitmap-remove to delete this bitmap from disk",
    ]);
  }
  const oldLen = before.model.virtualSize & ~511n, newLen = newSize & ~511n;
  // All-ones entries and bits past the end: loaded as qemu does (bitmap_tail.ts).
  const odd = before.bitmaps.filter((b) => b.state !== 0);
  let why = bitmapRefusal(tailBitsAsLoaded(before));
  if (why) throw host.refuse(why);
  for (const b of odd) {
    const n = bitmapNameText(b.name);
    // A shrink's hbitmap_truncate leaves the bits past the old end set when the end stays in their word.
    if (newLen < oldLen && lastWord(oldLen, b.granularityBits) === lastWord(newLen, b.granularityBits)) {
      throw host.refuse(`bitmap '${n}' has bits past its end that stay in the resized bitmap`);
    }
    // A cluster set only past the end is not in memory as the scan tells it (no cut).
    const g = BigInt(b.granularityBits), per = before.model.clusterSize * 8n;
    const holding = oldLen > 0n ? ((oldLen - 1n) >> g) / per : -1n;
    if (
      newSize > before.model.virtualSize && (b.state & bitmapState.TAIL_BITS) !== 0 &&
      b.entries.some((e) => e.index === holding && !e.nonzero)
    ) {
      throw host.refuse(`bitmap '${n}' has bits past its end instar does not carry`);
    }
  }
  if (newSize < before.model.virtualSize) {
    // The bits again, judged against the new end: a set bit past it is a tail bit.
    before = await scanNow(host, filename, newSize);
    // Bits past it are what hbitmap_truncate clears: the cluster holding
    // the new end is stored cut (BITMAP_CUT), the ones past it dropped.
    before = shrunkAsLoaded(
      {
        ...before,
        bitmaps: before.bitmaps.map((b) => ({ ...b, state: b.state & ~bitmapState.TAIL_BITS })),
      },
      newLen,
    );
    why = bitmapRefusal(before);
    if (why) throw host.refuse(why);
  } else {
    before = tailBitsAsLoaded(before);
  }
  const plan = planQcow2Bitmap(before, reopenRequest("open"));
  if (!plan.ok) throw host.refuse(plan.error.message);
  return { before, openSteps: plan.value.steps };
}

/**
 * After the resize: the bitmaps stored anew for the new size, as qemu's
 * close does; its allocations continue from `freeIndex`, qemu's
 * free_cluster_index as the resize left it (it passed holes it found too
 * small, which the store does not go back to).
 */
export async function storeBitmapsAfterResize(
  host: ResizeHost,
  filename: string,
  job: BitmapResize,
  freeIndex?: bigint,
): Promise<void> {
  const now = await scanNow(host, filename);
  const loaded = bitmapsAsLoaded(host, now, job.before, "resized");
  const plan = planQcow2Bitmap(loaded, reopenRequest("store", freeIndex));
  if (!plan.ok) throw host.refuse(plan.error.message);
  await host.applySteps(plan.value.steps, "Could not resize image", "discard", true);
}
