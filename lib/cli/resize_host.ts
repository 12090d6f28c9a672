// The host a format driver's resize runs against (lib/formats/types.ts
// ResizeHost): the resize_scan and bitmap_scan guests on the image, its
// steps applied by applySteps, failures and refusals in qemu's words. Used
// by resize and by the commands that resize or rewrite an image as a step
// (amend, check -r, snapshot).
import { ops, records } from "../abi/spec.ts";
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import { runGuest } from "../vmm/guest.ts";
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
    async scan(code, args) {
      let result;
      try {
        result = await runGuest({
          op: "resize_scan",
          opCode: ops.RESIZE_SCAN,
          inputs: [{ path: img.openPath, format: code }],
          args,
          resultCap: 64 * 1024 * 1024,
        });
      } catch (e) {
        throw refuse(`sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
      }
      const input = result.inputs[0];
      if (!input || input.dev !== img.dev || input.ino !== img.ino) {
        throw refuse("the file changed while it was being read");
      }
      return { records: result.records, fileSize: input.size, guestStatus: result.guestStatus };
    },
    async bitmapScan(len?: bigint) {
      let result;
      try {
        result = await runGuest({
          op: "bitmap_scan",
          opCode: ops.BITMAP_SCAN,
          inputs: [{ path: img.openPath, format: img.formatCode }],
          ...(len === undefined ? {} : { args: [2n, len] }),
          resultCap: 128 * 1024 * 1024,
        });
      } catch (e) {
        throw refuse(`sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
      }
      const input = result.inputs[0];
      if (!input || input.dev !== img.dev || input.ino !== img.ino) {
        throw refuse("the file changed while it was being read");
      }
      if (result.guestStatus !== 0n && !result.records.some((r) => r.type === records.ERROR)) {
        throw refuse("sandbox failure: the scan reported no outcome");
      }
      return { records: result.records, fileSize: input.size };
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
