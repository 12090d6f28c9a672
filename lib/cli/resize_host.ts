// The host a format driver's resize runs against (lib/formats/types.ts
// ResizeHost): the resize_scan and bitmap_scan guests on the image, its
// steps applied by applySteps, failures and refusals in qemu's words. Used
// by resize and by the commands that resize or rewrite an image as a step
// (amend, check -r, snapshot).
import { runScan } from "./scan_guest.ts";
import { records } from "../abi/spec.ts";
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import { applySteps } from "./apply_steps.ts";
import type { Prealloc, ResizeHost } from "../formats/types.ts";

/**
 * What a format driver's resize gets from the command: the sandbox, the
 * file, qemu's error shapes. `refuse` words instar's own refusals (amend's
 * size= path passes its own).
 */
export function resizeHost(
  img: OpenedImage,
  prealloc: Prealloc,
  refuse = (why: string) => new CliError([`Could not resize '${img.filename}': ${why}`]),
): ResizeHost {
  let cur = img;
  return {
    scan: (code, args) => runScan("resize_scan", img, { format: code, args }, refuse),
    async bitmapScan(len?: bigint) {
      const result = await runScan(
        "bitmap_scan",
        img,
        { format: img.formatCode, ...(len === undefined ? {} : { args: [2n, len] }) },
        refuse,
      );
      if (result.guestStatus !== 0n && !result.records.some((r) => r.type === records.ERROR)) {
        throw refuse("sandbox failure: the scan reported no outcome");
      }
      return { records: result.records, fileSize: result.fileSize };
    },
    async applySteps(steps, what, zeroInside, plain) {
      await applySteps(cur, steps, what, plain ? "off" : prealloc, zeroInside);
      // A later batch (the bitmaps stored after a resize) starts from this length.
      if (steps.length > 0) cur = { ...cur, fileSize: steps[steps.length - 1].fileSize };
    },
    fail: (lines) => new CliError(lines),
    refuse,
  };
}
