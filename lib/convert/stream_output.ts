// `convert ... -` (the output on stdout): every byte goes out once, in file
// order, through a bounded buffer. The disk is cut into windows; a guest
// writes one window's data into an unnamed file (holes stay holes and read
// as zeroes) and the host copies that file to stdout while the next
// window's guest runs into a second file. Raw output needs one pass. The
// other formats need their whole layout before the first byte (qcow2's
// header and L1 name tables placed after the data, and where a cluster goes
// depends on every earlier cluster's zero test or compressed size), so they
// take two passes over the source: the first runs each window's guest only
// for its reports (where each cluster, grain or block went; its bytes are
// dropped), the planner plans all metadata from them, and the second runs
// the same guests again, checks that they report the same, and streams:
// the metadata before the data, each window's data, the metadata after it.
// The host never interprets what it copies.
import { convertFlags, ops, records } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { hostEnv } from "../host/context.ts";
import type { StdoutSink } from "../host/stdio_stream.ts";
import {
  collect,
  type ConvertJob,
  doneRecord,
  failOnError,
  GuestFailure,
  inputs,
  packedGuest,
  type PackedTarget,
  PlanRefused,
  runFor,
} from "./pipeline.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import { alignUp, type FilePlan } from "../formats/plan.ts";
import type { BlockOutput, BlockRun } from "../formats/types.ts";
import type { GuestInput } from "../vmm/guest.ts";

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;
/** The window one guest writes and the host then copies (two exist at once). */
const WINDOW = 128n << 20n;

/** The window size (INSTAR_STREAM_WINDOW_MIB, for tests; else 128 MiB). */
export function windowSize(): bigint {
  const mib = Number(hostEnv("INSTAR_STREAM_WINDOW_MIB") ?? "");
  return Number.isSafeInteger(mib) && mib >= 1 ? BigInt(mib) << 20n : WINDOW;
}

/**
 * Raw output to `sink`, window by window (see the module comment). `scratch`
 * makes an unnamed file and returns the path guests write it through.
 * Returns the data bytes the guests wrote.
 */
export async function convertRawToStream(
  job: ConvertJob,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  const w = windowSize();
  const files = [await scratch(), await scratch()];
  let written = 0n;
  let copying: Promise<void> = Promise.resolve();
  for (let from = 0n, k = 0; from < job.size; from += w, k++) {
    const to = from + w < job.size ? from + w : job.size;
    const path = files[k % 2];
    {
      using f = await Deno.open(path, { write: true });
      await f.truncate(0);
      await f.truncate(Number(to - from));
    }
    const guest = runFor(job, {
      op: "convert",
      opCode: ops.CONVERT,
      inputs: inputs(job),
      args: [0n, 0n, job.minSparse, 0n, from, from, to],
      ramBytes: RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path, cap: to - from },
      onProgress: (d) => job.onProgress?.(from + d, job.size),
    });
    // The previous window goes out while this one is written; both settle
    // before either file is reused (a closed reader stops after this window).
    const [g, c] = await Promise.allSettled([guest, copying]);
    if (c.status === "rejected") throw c.reason;
    if (g.status === "rejected") throw g.reason;
    const recs = g.value.records;
    const err = recs.find((r) => r.type === records.ERROR);
    if (err) throw new GuestFailure(err, recs);
    const done = recs.filter((r) => r.type === records.CONVERT_DONE);
    if (done.length !== 1) throw new Error("the guest did not report the end of its range");
    written += done[0].fields.bytes_written as bigint;
    copying = sink.copyFile(path, to - from);
    copying.catch(() => {}); // awaited in the next round; not an unhandled rejection meanwhile
  }
  await copying;
  return written;
}

/** One guest run of a two-pass stream: window [from, to) whose data starts at `start`. */
interface WindowRun {
  op: string;
  args: bigint[];
  cap: bigint;
  /** The guest's inputs when not the job's (convert -B: the target's backing chain after them). */
  inputs?: GuestInput[];
}

interface TwoPass {
  /** Windows are whole multiples of this (a cluster, grain or block). */
  unit: bigint;
  /** One window over the whole disk (convert -B: one guest, as for a file). */
  single?: boolean;
  dataStart: bigint;
  /** Where a window's data starts, the previous data ending at `prevEnd`. */
  startAfter(prevEnd: bigint, from: bigint): bigint;
  run(from: bigint, to: bigint, start: bigint): WindowRun;
  /** The metadata plan for every window's reports (throws PlanRefused). */
  finish(windows: Rec[][], dataEnd: bigint): FilePlan;
}

const canonical = (recs: Rec[]) => JSON.stringify(recs, (_k, v) => typeof v === "bigint" ? v.toString() : v);

async function emptied(path: string): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.truncate(0);
}

/** Grows the file at `path` to `size` bytes (a hole) if it is shorter. */
async function reaching(path: string, size: bigint): Promise<void> {
  using f = await Deno.open(path, { write: true });
  if (BigInt((await f.stat()).size) < size) await f.truncate(Number(size));
}

/** The two passes of the module comment. Returns the data bytes written. */
async function twoPass(
  job: ConvertJob,
  t: TwoPass,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  const w = t.single ? alignUp(job.size > 0n ? job.size : 1n, t.unit) : alignUp(windowSize(), t.unit);
  const windows: [bigint, bigint][] = [];
  for (let from = 0n; from < job.size; from += w) {
    windows.push([from, from + w < job.size ? from + w : job.size]);
  }
  const files = [await scratch(), await scratch()];
  const guest = async (i: number, start: bigint, file: string, pass: number) => {
    const [from, to] = windows[i];
    const r = t.run(from, to, start);
    await emptied(file);
    const res = await runFor(job, {
      op: r.op,
      opCode: ops.CONVERT,
      inputs: r.inputs ?? inputs(job),
      args: r.args,
      ramBytes: RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path: file, cap: r.cap },
      onProgress: (d) => job.onProgress?.(BigInt(pass) * job.size + from + d, 2n * job.size),
    });
    failOnError(res.records);
    return res.records;
  };
  // Pass 1: the reports only.
  const starts: bigint[] = [], ends: bigint[] = [], reports: Rec[][] = [];
  let prevEnd = t.dataStart;
  for (const [i, [from]] of windows.entries()) {
    const start = t.startAfter(prevEnd, from);
    const recs = await guest(i, start, files[0], 0);
    const end = doneRecord(recs).data_end as bigint;
    if (end < start) throw new Error("the guest reported its data ending before it started");
    starts.push(start);
    ends.push(end);
    reports.push(recs);
    if (end > start) prevEnd = end;
  }
  const plan = t.finish(reports, prevEnd);
  const dataEnd = prevEnd;
  // Everything the plan writes lies before or after the data.
  for (const p of plan.patches) {
    const end = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
    if (p.offset < dataEnd && end > t.dataStart) throw new Error("the metadata plan writes inside the data");
  }
  if (plan.fileSize < dataEnd) throw new Error("the metadata plan ends inside the data");
  const meta = await scratch();
  await applyPlan(meta, plan);
  // Pass 2: the metadata before the data, each window's data, the metadata after it.
  await sink.copyFile(meta, t.dataStart, 0n);
  let pos = t.dataStart, written = 0n;
  let copying: Promise<void> = Promise.resolve();
  for (const i of windows.keys()) {
    const file = files[i % 2];
    const [g, c] = await Promise.allSettled([guest(i, starts[i], file, 1), copying]);
    if (c.status === "rejected") throw c.reason;
    if (g.status === "rejected") throw g.reason;
    if (canonical(g.value) !== canonical(reports[i])) {
      throw new Error("the source read differently the second time (did it change?)");
    }
    written += doneRecord(g.value).bytes_written as bigint;
    if (ends[i] > starts[i]) {
      // From where the last window ended: an alignment gap, and a slot's
      // tail the guest left unwritten (zero pieces), read as zeroes (holes).
      await reaching(file, ends[i]);
      copying = sink.copyFile(file, ends[i] - pos, pos);
      copying.catch(() => {});
      pos = ends[i];
    } else {
      copying = Promise.resolve();
    }
  }
  await copying;
  await sink.copyFile(meta, plan.fileSize - dataEnd, dataEnd);
  return written;
}

/** qcow2 and streamOptimized vmdk on stdout: packed windows (see the module comment). */
export function convertPackedToStream(
  job: ConvertJob,
  target: PackedTarget,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  const k = target.packing;
  const cs = k.clusterSize;
  return twoPass(
    job,
    {
      unit: cs,
      // convert -B: its guest decides each cluster from requests that may
      // cross any window boundary, so one guest takes the disk, as for a
      // file (its data then passes through one scratch file).
      single: k.single,
      dataStart: k.dataStart,
      // As the second of two guests starts in a file: on the packing's alignment.
      startAfter: (prevEnd) => alignUp(prevEnd, k.align),
      run: (from, to, start) => ({
        op: k.op,
        ...packedGuest(job, k, 0n, from, to, start),
        cap: start + ((to - from + cs - 1n) / cs) * k.capPerCluster + cs,
      }),
      finish: (windows) => target.finish(windows.map((recs) => collect(recs, 0n))),
    },
    sink,
    scratch,
  );
}

/** vpc, vhdx and monolithicSparse vmdk on stdout: block windows (see the module comment). */
export function convertBlocksToStream(
  job: ConvertJob,
  b: BlockOutput,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  const finish = (dataEnd: bigint, runs: BlockRun[]) => {
    const plan = b.finish(dataEnd, runs);
    if (!plan.ok) throw new PlanRefused(plan.error.message);
    return plan.value;
  };
  if (b.placement === "inplace") {
    // Fixed: guest byte x at dataStart + x.
    return twoPass(
      job,
      {
        unit: 1n << 20n,
        dataStart: b.dataStart,
        startAfter: (_prev, from) => b.dataStart + from,
        run: (from, to) => ({
          op: "convert",
          args: [0n, 0n, job.minSparse, b.dataStart, 0n, from, to],
          cap: b.cap,
        }),
        finish: (_w, dataEnd) => finish(dataEnd, []),
      },
      sink,
      scratch,
    );
  }
  const bits = BigInt(b.blockSize.toString(2).length - 1);
  if (1n << bits !== b.blockSize) throw new Error("block size is not a power of two");
  const stride = b.blockSize + b.slotPrefix;
  return twoPass(
    job,
    {
      unit: b.blockSize,
      dataStart: b.dataStart,
      // Slots follow each other as one guest hands them out.
      startAfter: (prevEnd) => prevEnd,
      run: (from, to, start) => ({
        op: "convert",
        args: [0n, BigInt(convertFlags.BLOCK), job.minSparse, start, bits, from, to, b.slotPrefix],
        cap: start + ((to - from + b.blockSize - 1n) / b.blockSize) * stride,
      }),
      finish: (windows, dataEnd) =>
        finish(
          dataEnd,
          windows.flatMap((recs) =>
            recs.filter((r) => r.type === records.DATA_RUN).map((r) => ({
              block: r.fields.guest_cluster as bigint,
              count: r.fields.count as bigint,
              slot: r.fields.host_offset as bigint,
            }))
          ),
        ),
    },
    sink,
    scratch,
  );
}
