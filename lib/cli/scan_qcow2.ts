// The resize_scan guest run on a qcow2 image whose size stays as it is: its
// metadata (header, tables, refcounts; with COMPRESSED_ENTRIES also the
// compressed L2 entries), decoded and checked (lib/formats/qcow2/resize.ts
// decodeScan). Shared by commit, convert into qcow2 (-n and qcrypt targets)
// and the safe rebase, which plan writes into an existing qcow2 image.
import { runScan } from "./scan_guest.ts";
import { formats, records } from "../abi/spec.ts";
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import { decodeScan } from "../formats/qcow2/resize.ts";
import { GuestResultError } from "../formats/qcow2/model.ts";

/** resize_scan arg[1] bit 2: list the compressed L2 entries (records.COMPRESSED_L2). */
export const COMPRESSED_ENTRIES = 4n;

/** The resize_scan guest's metadata of a qcow2 image (its size unchanged); `flags` is its arg[1]. */
export async function scanQcow2(img: OpenedImage, what: string, flags = 0n) {
  const result = await runScan(
    "resize_scan",
    img,
    { format: formats.QCOW2, nofollow: true, args: [img.virtualSize, flags] },
    (why) => new CliError([`${what}: ${why}`]),
  );
  if (result.records.some((r) => r.type === records.ERROR) || result.guestStatus !== 0n) {
    throw new CliError([`${what}: the metadata scan failed`]);
  }
  try {
    return decodeScan(result.records, result.fileSize);
  } catch (e) {
    if (e instanceof GuestResultError) throw new CliError([`${what}: sandbox failure: ${e.message}`]);
    throw e;
  }
}
