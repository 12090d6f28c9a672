// The steps qemu's read-write open and close of a qcow2 image with persistent
// bitmaps share, whatever the command between them (commit emptying its
// overlay, resize): the bitmap_scan guest's records read back into a scan,
// the planner request for the in-use marking ("open") and the store
// ("store"), and the check that the bitmaps found again before the store are
// the ones marked, restored to how qemu holds them in memory.
import { records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { errorRecordMessage } from "./errors.ts";
import { GuestResultError } from "./model.ts";
import { decodeBitmapScan } from "./bitmap_scan.ts";
import { bitmapNameText, type BitmapRequest, BME_FLAG_IN_USE, type Qcow2BitmapScan } from "./bitmap_plan.ts";

/** The caller's error shapes. */
export interface ReopenErrors {
  /** An error printed as these lines (qemu's own words). */
  fail(lines: string[]): Error;
  /** instar's refusal. */
  refuse(why: string): Error;
}

/** qemu names the image by its node name in messages (not shown here: no action fails). */
const NODE_NAME = "#block000";

/** The planner request for the in-use marking or the store (allocating from `freeIndex` if given). */
export const reopenRequest = (phase: "open" | "store", freeIndex?: bigint): BitmapRequest => ({
  name: new Uint8Array(0),
  granularity: 0n,
  actions: [],
  nodeName: NODE_NAME,
  phase,
  freeIndex,
});

/** The bitmap_scan guest's answer as a scan; its error as qemu's open failure. */
export async function decodeReopenScan(
  host: ReopenErrors,
  filename: string,
  scan: Promise<{ records: Rec[]; fileSize: bigint }>,
): Promise<Qcow2BitmapScan> {
  const { records: recs, fileSize } = await scan;
  const err = recs.find((r) => r.type === records.ERROR);
  if (err) {
    const msg = errorRecordMessage(err);
    throw host.fail([`Could not open '${filename}': ${msg}`]);
  }
  try {
    return decodeBitmapScan(recs, fileSize);
  } catch (e) {
    if (e instanceof GuestResultError) throw host.refuse(`sandbox failure: ${e.message}`);
    throw e;
  }
}

/**
 * The scan taken before the store, checked to hold the bitmaps `before`
 * held, each now marked in use (else refused: "the bitmaps changed while the
 * image was `written`"), and returned as qemu holds them in memory: loaded
 * before the marking.
 */
export function bitmapsAsLoaded(
  host: ReopenErrors,
  now: Qcow2BitmapScan,
  before: Qcow2BitmapScan,
  written: string,
): Qcow2BitmapScan {
  const was = before.bitmaps;
  if (
    now.bitmaps.length !== was.length ||
    now.bitmaps.some((b, i) =>
      (b.flags & BME_FLAG_IN_USE) === 0 || b.flags !== (was[i].flags | BME_FLAG_IN_USE) ||
      b.tableOffset !== was[i].tableOffset || b.tableSize !== was[i].tableSize ||
      b.granularityBits !== was[i].granularityBits || bitmapNameText(b.name) !== bitmapNameText(was[i].name)
    )
  ) {
    throw host.refuse(`the bitmaps changed while the image was ${written}`);
  }
  return {
    ...now,
    bitmaps: now.bitmaps.map((b, i) => ({
      ...b,
      flags: was[i].flags,
      tail: was[i].tail,
      state: was[i].state,
      entries: was[i].entries,
    })),
  };
}
