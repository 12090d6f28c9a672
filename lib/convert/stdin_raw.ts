// `convert -f raw - OUT` (OUT a file, -O raw or qcow2): stdin read in one
// pass, never stored whole. The stream is cut into windows; the host copies
// one window's bytes into an unnamed file at the window's own offset (the
// bytes before it are a hole, so the file is a raw disk whose last window is
// real) while the previous window's guest converts [from, to) of the other
// file straight into the output. The host moves opaque bytes and never
// looks at them; zero detection, packing and everything else stays in the
// guests, as for a file source.
//
// The disk's size is known only at the end of the stream. Raw output is
// sized then. qcow2's L1 table sits before the data (qcow2OutputPrologue),
// so its room is reserved for `bound` bytes up front (ONE_PASS_L1 of L1,
// at least one cluster: 64 TiB with 64 KiB clusters); the header and the
// L1 written at the end describe the real size, and the unused part of the
// reservation stays a hole that no table references (qemu-img check is
// clean). A stream longer than the bound is refused.
import { formats, ops } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import type { HostStdio } from "../host/stdio.ts";
import { StreamError } from "../host/stdio_stream.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import { alignUp } from "../formats/plan.ts";
import {
  collect,
  type ConvertJob,
  doneRecord,
  failOnError,
  type PackedTarget,
  type Packing,
  type Part,
} from "./pipeline.ts";

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;
const WINDOW = 128n << 20n;
const CHUNK = 1 << 20;
/** Bytes of L1 table reserved before the data of a one-pass qcow2 target. */
export const ONE_PASS_L1 = 1n << 20n;

/** The largest disk a one-pass qcow2 target with these clusters can describe (see the module comment). */
export function onePassBound(clusterSize: bigint, extendedL2: boolean): bigint {
  const l1Bytes = ONE_PASS_L1 > clusterSize ? ONE_PASS_L1 : clusterSize;
  const perL2 = clusterSize / (extendedL2 ? 16n : 8n);
  const bound = (l1Bytes / 8n) * perL2 * clusterSize;
  const cap = 1n << 56n; // qcow2's host offsets stop at 2^56
  return bound < cap ? bound : cap;
}

/** A raw target's bound: qemu's largest disk (INT64_MAX in whole sectors). */
export const RAW_ONE_PASS_BOUND = (1n << 63n) - 512n;

export type OnePassTarget = { kind: "raw" } | { kind: "qcow2"; packed: PackedTarget };

/** Reads the next window of the stream into `path` at offset `from`: the byte count (< w only at the end). */
async function readWindow(stdio: HostStdio, path: string, from: bigint, w: bigint): Promise<bigint> {
  using f = await Deno.open(path, { write: true });
  await f.truncate(0);
  await f.seek(from, Deno.SeekMode.Start);
  const buf = new Uint8Array(CHUNK);
  let got = 0n;
  while (got < w) {
    const want = w - got < BigInt(CHUNK) ? Number(w - got) : CHUNK;
    let n: number | null;
    try {
      n = await stdio.read(buf.subarray(0, want));
    } catch (e) {
      throw new StreamError(`error while reading stdin: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (n === null) break;
    for (let at = 0; at < n;) at += await f.write(buf.subarray(at, n));
    got += BigInt(n);
  }
  return got;
}

/**
 * Converts the raw stream on `stdio` into `out` (see the module comment).
 * `job.size` must be the bound on entry (a qcow2 target was planned for it);
 * it is the disk's real size (whole sectors) on return. `scratch` makes an
 * unnamed file and returns its path. Returns the data bytes written.
 */
export async function convertRawStdin(
  job: ConvertJob,
  target: OnePassTarget,
  out: string,
  stdio: HostStdio,
  scratch: () => Promise<string>,
  windowBytes = WINDOW,
): Promise<bigint> {
  const bound = job.size;
  const packing = target.kind === "qcow2" ? target.packed.packing : undefined;
  const unit = packing ? (packing.clusterSize > 512n ? packing.clusterSize : 512n) : 512n;
  const w = alignUp(windowBytes, unit);
  const files = [await scratch(), await scratch()];
  const parts: Part[] = [];
  let written = 0n;
  let prevEnd = packing?.dataStart ?? 0n;
  let from = 0n;
  let reading = readWindow(stdio, files[0], 0n, w);
  for (let k = 0;; k++) {
    const n = await reading;
    if (n === 0n && from > 0n) break;
    if (from + n > bound) {
      throw new StreamError(
        `stdin holds more than the ${bound} bytes a one-pass raw stream can convert to this target`,
      );
    }
    const file = files[k % 2];
    const to = from + alignUp(n, 512n);
    if (n !== w) {
      using f = await Deno.open(file, { write: true });
      await f.truncate(Number(to)); // the last sector's tail reads as zeroes, as qemu's rounded length does
    }
    // The next window is read while this one is converted; a short window was the last.
    reading = n === w ? readWindow(stdio, files[(k + 1) % 2], to, w) : Promise.resolve(0n);
    reading.catch(() => {}); // awaited next round
    if (to > from) {
      const r = await convertRange(job, file, from, to, packing, prevEnd, out);
      written += r.written;
      if (r.part) {
        parts.push(r.part);
        // dataEnd == the aligned start (nothing packed) leaves the next start where it was.
        if (r.part.dataEnd > prevEnd) prevEnd = r.part.dataEnd;
      }
    }
    from = to;
    if (n !== w) break;
  }
  job.size = from;
  if (target.kind === "raw") {
    using f = await Deno.open(out, { write: true });
    await f.truncate(Number(from));
  } else {
    await applyPlan(out, target.packed.finish(parts));
  }
  return written;
}

/**
 * The convert guest over [from, to) of a raw window file (a raw stdin
 * window here, a decoded VMDK stream window in stdin_vmdk.ts), packed after
 * `prevData` when the target is qcow2.
 */
export async function convertRange(
  job: ConvertJob,
  disk: string,
  from: bigint,
  to: bigint,
  packing: Packing | undefined,
  prevData: bigint,
  out: string,
): Promise<{ written: bigint; part?: Part }> {
  const inputs = [{ path: disk, format: formats.RAW, nofollow: false, snapshot: 0 }];
  let args: bigint[], cap: bigint, start = 0n;
  if (packing) {
    const cs = packing.clusterSize;
    const cbits = BigInt(cs.toString(2).length - 1);
    start = alignUp(prevData, packing.align);
    args = [0n, packing.flags, job.minSparse, start, cbits, from, to, packing.maxRefs];
    cap = start + ((to - from + cs - 1n) / cs) * packing.capPerCluster + cs;
  } else {
    args = [0n, 0n, job.minSparse, 0n, 0n, from, to];
    cap = to;
  }
  const r = await runGuest({
    op: packing?.op ?? "convert",
    opCode: ops.CONVERT,
    inputs,
    args,
    ramBytes: RAM,
    timeoutMs: TIMEOUT_MS,
    output: { path: out, cap },
  });
  failOnError(r.records);
  const done = doneRecord(r.records);
  const written = done.bytes_written as bigint;
  if (!packing) return { written };
  const end = done.data_end as bigint;
  if (end < start) throw new Error("the guest reported its data ending before it started");
  return { written, part: collect(r.records, 0n) };
}
