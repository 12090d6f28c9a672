// Applies a FilePlan to a file: the one place planner output touches disk
// (create, convert's qcow2 output, resize). The plan is checked against the
// shared invariants first, so a faulty planner cannot write outside the
// file it describes or overlap its own patches.
import { type FilePlan, planViolation } from "./plan.ts";
import { hostPath } from "../host/context.ts";

const ZERO_CHUNK = 1 << 20;

/** A write that failed at `offset` (qemu-img: "error while writing at byte N: ..."). */
export class WriteError extends Error {
  constructor(readonly offset: bigint, readonly reason: unknown) {
    super(reason instanceof Error ? reason.message : String(reason));
    this.name = "WriteError";
  }
}

async function writeAll(f: Deno.FsFile, offset: bigint, bytes: Uint8Array): Promise<void> {
  await f.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  try {
    while (done < bytes.length) done += await f.write(bytes.subarray(done));
  } catch (e) {
    throw new WriteError(offset + BigInt(done), e);
  }
}

/**
 * Copies [from, from+length) of `f` to `to` in 1 MiB pieces (a copy patch:
 * planViolation guarantees the ranges do not overlap). A source that ends
 * before `length` bytes is an error, never zeroes.
 */
export async function copyRange(f: Deno.FsFile, from: bigint, to: bigint, length: bigint): Promise<void> {
  const buf = new Uint8Array(Number(length < BigInt(ZERO_CHUNK) ? length : BigInt(ZERO_CHUNK)));
  for (let done = 0n; done < length;) {
    const n = length - done < BigInt(buf.length) ? Number(length - done) : buf.length;
    await f.seek(from + done, Deno.SeekMode.Start);
    let got = 0;
    while (got < n) {
      const r = await f.read(buf.subarray(got, n));
      if (r === null || r === 0) throw new Error(`the file ends inside the range copied from ${from}`);
      got += r;
    }
    await writeAll(f, to + done, buf.subarray(0, n));
    done += BigInt(n);
  }
}

/**
 * Writes `plan` into the file at `path` (created if missing, never
 * truncated first): write patches verbatim, zero patches as zeroes, copy patches from the
 * file itself, then the
 * file length is set to plan.fileSize. Throws when the plan breaks an
 * invariant (a planner bug) or on I/O errors.
 */
export async function applyPlan(path: string, plan: FilePlan): Promise<void> {
  const violation = planViolation(plan);
  if (violation !== undefined) throw new Error(`Refusing a faulty plan: ${violation}`);
  const f = await Deno.open(hostPath(path), { read: true, write: true, create: true });
  try {
    let oldSize = BigInt((await f.stat()).size);
    // Shrink first, so bytes past the new end never need zeroing.
    if (oldSize > plan.fileSize) {
      await f.truncate(Number(plan.fileSize));
      oldSize = plan.fileSize;
    }
    for (const p of plan.patches) {
      if (p.kind === "write") {
        await writeAll(f, p.offset, p.bytes);
      } else if (p.kind === "copy") {
        await copyRange(f, p.from, p.offset, p.length);
      } else {
        // Past the old end the final truncate leaves zeroes (a hole); only
        // the part inside the old file needs explicit zeroes.
        const end = p.offset + p.length < oldSize ? p.offset + p.length : oldSize;
        const zeros = new Uint8Array(ZERO_CHUNK);
        for (let at = p.offset; at < end;) {
          const n = end - at < BigInt(ZERO_CHUNK) ? Number(end - at) : ZERO_CHUNK;
          await writeAll(f, at, zeros.subarray(0, n));
          at += BigInt(n);
        }
      }
    }
    await f.truncate(Number(plan.fileSize));
  } finally {
    f.close();
  }
}
