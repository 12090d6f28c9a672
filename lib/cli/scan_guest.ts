// One metadata scan guest (resize_scan, bitmap_scan, snapshot_scan) on one
// image a command has open: the run, the check that the guest read that
// very file (device and inode, so a file swapped under the command is
// refused), and its records with the file size the guest saw. `fail` words
// the two failures as the command's qemu counterpart would: the sandbox
// failing ("sandbox failure: ..."), the file changing under the command.
import { ops } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { runGuest } from "../vmm/guest.ts";
import type { CliError } from "./messages.ts";

const SCANS = {
  resize_scan: { opCode: ops.RESIZE_SCAN, resultCap: 64 * 1024 * 1024 },
  bitmap_scan: { opCode: ops.BITMAP_SCAN, resultCap: 128 * 1024 * 1024 },
  snapshot_scan: { opCode: ops.SNAPSHOT_SCAN, resultCap: 256 * 1024 * 1024 },
} as const;

export type ScanOp = keyof typeof SCANS;

export interface ScanRun {
  records: Rec[];
  /** The file's size as the guest saw it. */
  fileSize: bigint;
  guestStatus: bigint;
}

/** Runs `op` on the image at `img.openPath` (format code, nofollow and args as the scan needs). */
export async function runScan(
  op: ScanOp,
  img: { openPath: string; dev: bigint; ino: bigint },
  input: { format: number; nofollow?: boolean; args?: bigint[] },
  fail: (why: string, kind: "sandbox" | "changed") => CliError,
): Promise<ScanRun> {
  let result;
  try {
    result = await runGuest({
      op,
      opCode: SCANS[op].opCode,
      inputs: [{ path: img.openPath, format: input.format, ...(input.nofollow ? { nofollow: true } : {}) }],
      ...(input.args ? { args: input.args } : {}),
      resultCap: SCANS[op].resultCap,
    });
  } catch (e) {
    throw fail(`sandbox failure: ${e instanceof Error ? e.message : String(e)}`, "sandbox");
  }
  const seen = result.inputs[0];
  if (!seen || seen.dev !== img.dev || seen.ino !== img.ino) {
    throw fail("the file changed while it was being read", "changed");
  }
  return { records: result.records, fileSize: seen.size, guestStatus: result.guestStatus };
}
