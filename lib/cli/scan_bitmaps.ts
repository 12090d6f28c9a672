// The bitmap_scan guest run on a qcow2 image (its bitmap directory, tables
// and refcounts, checked) and its records decoded
// (lib/formats/qcow2/bitmap_scan.ts), failures worded as qemu's open
// failures. Used by the bitmap command and by carriedBitmaps (rebase, amend).
import { runScan } from "./scan_guest.ts";
import { records } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import { errorRecordMessage } from "../formats/qcow2/errors.ts";
import { GuestResultError } from "../formats/qcow2/model.ts";
import { decodeBitmapScan } from "../formats/qcow2/bitmap_scan.ts";

/** Runs the bitmap scan on a qcow2 image; its records (also used by the crash-safety tests). */
export async function scanBitmaps(img: OpenedImage): Promise<Rec[]> {
  const refuse = (why: string) => new CliError([`Could not open '${img.filename}': ${why}`]);
  const result = await runScan("bitmap_scan", img, { format: img.formatCode }, refuse);
  if (result.fileSize !== img.fileSize) throw refuse("the file changed while it was being read");
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const msg = errorRecordMessage(err);
    throw refuse(msg);
  }
  if (result.guestStatus !== 0n) throw refuse("sandbox failure: the scan reported no outcome");
  return result.records;
}

/** The decoded bitmap scan of `img`; a malformed result is a sandbox failure opening it. */
export function decodeBitmapScanOrRefuse(recs: Rec[], img: OpenedImage) {
  try {
    return decodeBitmapScan(recs, img.fileSize);
  } catch (e) {
    if (e instanceof GuestResultError) {
      throw new CliError([`Could not open '${img.filename}': sandbox failure: ${e.message}`]);
    }
    throw e;
  }
}
