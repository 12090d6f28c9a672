// Applies a command's planned steps to the image it opened (resize, check -r):
// the one place in-place writes happen. Each step is checked against the plan
// invariants, written, and fdatasync'ed before the next one starts, so a
// planner's crash order holds on disk.
import { CliError } from "./messages.ts";
import { errnoText, type OpenedImage } from "./image.ts";
import { fileRange } from "../vmm/guest.ts";
import { type FilePlan, planViolation } from "../formats/plan.ts";
import { copyRange } from "../formats/apply_plan.ts";
import { hostPath } from "../host/context.ts";
import type { Prealloc } from "../formats/types.ts";

/**
 * Applies planned steps in order, each followed by fdatasync, after checking
 * that the file is still the one that was read (same device, inode and
 * length). Patches are the planner's own bytes; the only image bytes that
 * pass here are copy patches, moved verbatim and never interpreted.
 * A zero patch inside the file is a discard (a hole punched, as qemu's
 * file-posix does for the clusters a shrink frees); past the end it is an
 * area the preallocation mode allocates: posix_fallocate()d with falloc,
 * zeroes written otherwise (full writes them in qemu too).
 */
export async function applySteps(
  img: OpenedImage,
  steps: FilePlan[],
  what: string,
  prealloc: Prealloc,
  zeroInside: "discard" | "write",
): Promise<void> {
  for (const s of steps) {
    const v = planViolation(s);
    if (v) throw new CliError([`${what}: plan refused: ${v}`]);
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(hostPath(img.openPath), { read: true, write: true });
  } catch (e) {
    throw new CliError([
      `Could not open '${img.filename}': Could not open '${img.filename}': ${errnoText(e)}`,
    ]);
  }
  try {
    const st = await file.stat();
    if (BigInt(st.dev) !== img.dev || BigInt(st.ino ?? 0) !== img.ino || BigInt(st.size) !== img.fileSize) {
      throw new CliError([`${what}: the file changed while it was being resized`]);
    }
    for (const step of steps) {
      for (const p of step.patches) {
        if (p.kind === "write") {
          await file.seek(p.offset, Deno.SeekMode.Start);
          let at = 0;
          while (at < p.bytes.length) at += await file.write(p.bytes.subarray(at));
        } else if (p.kind === "copy") {
          // A structure the image holds, moved verbatim (a VHD/VHDX BAT).
          await copyRange(file, p.from, p.offset, p.length);
        } else if (p.length > 0n) {
          const eof = BigInt((await file.stat()).size);
          // Inside the file: clusters a shrink freed, which qemu discards
          // (a hole punched). Like qemu's discard this is best effort: the
          // clusters are free either way, so a filesystem that cannot punch
          // keeps the old bytes.
          if (p.offset < eof) {
            const end = p.offset + p.length < eof ? p.offset + p.length : eof;
            if (zeroInside === "discard") {
              await fileRange("punch", img.openPath, p.offset, end - p.offset, img.dev, img.ino);
            } else {
              // Bytes that must read as zero (a vpc footer becoming data).
              await writeZeroes(file, p.offset, end - p.offset);
            }
          }
          // Past the end: an area preallocation allocates.
          const from = p.offset > eof ? p.offset : eof, to = p.offset + p.length;
          if (from < to && prealloc === "falloc") {
            const why = await fileRange("allocate", img.openPath, from, to - from, img.dev, img.ino);
            if (why !== undefined) throw new CliError([`${what}: Could not preallocate new data: ${why}`]);
          } else if (from < to) {
            await writeZeroes(file, from, to - from);
          }
        }
      }
      if (BigInt((await file.stat()).size) !== step.fileSize) {
        // Deno takes the length as a double: refuse lengths it cannot hold exactly.
        if (BigInt(Number(step.fileSize)) !== step.fileSize) throw new CliError([`${what}: File too large`]);
        await file.truncate(Number(step.fileSize));
      }
      await file.syncData();
      crashPoint(steps.indexOf(step) + 1);
    }
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError([`${what}: ${errnoText(e)}`]);
  } finally {
    file.close();
  }
}

/**
 * The crash-safety test's kill switch (tests/crash_safety_test.ts): with
 * INSTAR_TEST_KILL_AFTER_STEP=N in instar's own environment, the process
 * SIGKILLs itself once step N is on disk, as a crash between two steps
 * would leave the file. Read from the process environment only, never from
 * a service caller's.
 */
function crashPoint(done: number) {
  if (Deno.env.get("INSTAR_TEST_KILL_AFTER_STEP") === String(done)) Deno.kill(Deno.pid, "SIGKILL");
}

async function writeZeroes(file: Deno.FsFile, from: bigint, length: bigint): Promise<void> {
  await file.seek(from, Deno.SeekMode.Start);
  const zero = new Uint8Array(Number(length < 1n << 20n ? length : 1n << 20n));
  for (let left = length; left > 0n;) {
    const n = left < BigInt(zero.length) ? Number(left) : zero.length;
    let at = 0;
    while (at < n) at += await file.write(zero.subarray(at, n));
    left -= BigInt(n);
  }
}
