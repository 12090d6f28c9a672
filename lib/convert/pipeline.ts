// The data path of `instar convert`: one or two guests read the source
// chain and write the output's data; for qcow2 output the guests report
// where every cluster went and the shared planner
// (lib/formats/qcow2/output_plan.ts) writes all metadata. No image byte
// passes through here: the guest reads and writes through the VMM, and
// joining two guests' halves is a copy inside the VMM library.
import { convertFlags, limits, ops, records } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { copyRange, runGuest } from "../cli/guest.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import {
  type CompressedCluster,
  type DataRun,
  qcow2OutputFinish,
  type Qcow2OutputOptions,
  qcow2OutputPrologue,
} from "../formats/qcow2/output_plan.ts";
import { alignUp } from "../formats/plan.ts";

export interface SourceLayer {
  path: string;
  formatCode: number;
  nofollow: boolean;
}

export interface ConvertJob {
  layers: SourceLayer[];
  /** The disk size written (whole sectors, as qemu's total_sectors * 512). */
  size: bigint;
  minSparse: bigint;
  onProgress?: (done: bigint, total: bigint) => void;
}

/** A failure the guest reported (an ERROR record); the CLI words it. */
export class GuestFailure extends Error {
  constructor(readonly record: Rec) {
    super("guest reported an error");
  }
}

/** Compressed output is split across two guests from this size on. */
const SPLIT_MIN = 64n << 20n;
const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;

function inputs(job: ConvertJob) {
  return job.layers.map((l) => ({ path: l.path, format: l.formatCode, nofollow: l.nofollow }));
}

const DEBUG = Deno.env.get("INSTAR_DEBUG") !== undefined;

function debugRun(what: string, r: { exits: bigint; elapsedNs: bigint; setupNs: bigint }) {
  if (DEBUG) console.error(`instar: ${what}: ${r.exits} exits, ${Number(r.elapsedNs) / 1e6} ms in the guest, setup ${Number(r.setupNs) / 1e6} ms`);
}

function failOnError(recs: Rec[]) {
  const err = recs.find((r) => r.type === records.ERROR);
  if (err) throw new GuestFailure(err);
}

function doneRecord(recs: Rec[]) {
  const done = recs.filter((r) => r.type === records.CONVERT_DONE);
  if (done.length !== 1) throw new Error("the guest did not report the end of its range");
  return done[0].fields;
}

/** Raw output: the file is sized first, the guest writes the data. Returns the bytes written. */
export async function convertToRaw(job: ConvertJob, outPath: string): Promise<bigint> {
  await Deno.truncate(outPath, Number(job.size));
  const result = await runGuest({
    op: "convert",
    opCode: ops.CONVERT,
    inputs: inputs(job),
    args: [0n, 0n, job.minSparse, 0n, 0n, 0n, job.size],
    ramBytes: RAM,
    timeoutMs: TIMEOUT_MS,
    output: { path: outPath, cap: job.size },
    onProgress: job.onProgress,
  });
  debugRun("convert raw", result);
  failOnError(result.records);
  return doneRecord(result.records).bytes_written as bigint;
}

interface Part {
  runs: DataRun[];
  compressed: CompressedCluster[];
  dataEnd: bigint;
}

/** Reads DATA_RUN / COMPRESSED_RUN records into planner inputs (the planner validates them). */
function collect(recs: Rec[], shift: bigint): Part {
  const runs: DataRun[] = [];
  const compressed: CompressedCluster[] = [];
  for (const r of recs) {
    const f = r.fields;
    if (r.type === records.DATA_RUN) {
      runs.push({
        guestCluster: f.guest_cluster as bigint,
        count: f.count as bigint,
        hostOffset: (f.host_offset as bigint) + shift,
      });
    } else if (r.type === records.COMPRESSED_RUN) {
      const n = f.n as number;
      if (n < 1 || n > limits.COMPRESSED_RUN_MAX) throw new Error("malformed compressed run");
      const lens = f.len as number[];
      let at = (f.host_offset as bigint) + shift;
      for (let i = 0; i < n; i++) {
        compressed.push({ guestCluster: (f.guest_cluster as bigint) + BigInt(i), hostOffset: at, length: BigInt(lens[i]) });
        at += BigInt(lens[i]);
      }
    }
  }
  return { runs, compressed, dataEnd: (doneRecord(recs).data_end as bigint) + shift };
}

export interface Qcow2Target {
  options: Qcow2OutputOptions;
  compress: boolean;
}

/** Thrown with qemu's words when the planner refuses (options, size). */
export class PlanRefused extends Error {}

/** qcow2 output: guests write the data, the planner the metadata. Returns the data bytes written. */
export async function convertToQcow2(
  job: ConvertJob,
  target: Qcow2Target,
  outPath: string,
  sidePath: string,
): Promise<bigint> {
  const o = target.options;
  const pro = qcow2OutputPrologue(o, job.size);
  if (!pro.ok) throw new PlanRefused(pro.error.message);
  const dataStart = pro.value.dataStart;
  const cs = o.clusterSize;
  const cbits = BigInt(cs.toString(2).length - 1);
  let flags = BigInt(convertFlags.QCOW2);
  let op = "convert";
  if (target.compress) {
    flags |= BigInt(convertFlags.COMPRESS);
    if (o.compressionType === "zstd") {
      flags |= BigInt(convertFlags.ZSTD);
      op = "convert_zstd";
    } else {
      op = "convert_zlib";
    }
  }
  const clusters = (job.size + cs - 1n) / cs;
  // Each guest writes at most one cluster per guest cluster, plus alignment.
  const capFor = (start: bigint, count: bigint) => start + (count + 1n) * cs;

  // Compression is CPU-bound: two guests, one per core, each compressing half
  // of the clusters into its own file; the second half is then appended.
  // INSTAR_COMPRESS_GUESTS=1|2 forces the choice (tests check both give the same content).
  const forced = Deno.env.get("INSTAR_COMPRESS_GUESTS");
  const split = target.compress && clusters >= 2n &&
    (forced === "2" || (forced !== "1" && job.size >= SPLIT_MIN));
  const mid = split ? clusters / 2n : clusters;
  const progress = [0n, 0n];
  const totals = [0n, 0n];
  const report = (i: number) => (done: bigint, total: bigint) => {
    progress[i] = done;
    totals[i] = total;
    job.onProgress?.(progress[0] + progress[1], totals[0] + totals[1]);
  };
  const run = (from: bigint, to: bigint, start: bigint, path: string, i: number) =>
    runGuest({
      op,
      opCode: ops.CONVERT,
      inputs: inputs(job),
      args: [0n, flags, job.minSparse, start, cbits, from, to],
      ramBytes: RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path, cap: capFor(start, (to - from + cs - 1n) / cs) },
      onProgress: report(i),
    });
  const midByte = mid * cs < job.size ? mid * cs : job.size;
  const results = await Promise.all([
    run(0n, midByte, dataStart, outPath, 0),
    ...(split ? [run(midByte, job.size, 0n, sidePath, 1)] : []),
  ]);
  results.forEach((r, i) => debugRun(`convert qcow2 part ${i}`, r));
  for (const r of results) failOnError(r.records);
  const first = collect(results[0].records, 0n);
  const parts = [first];
  let dataEnd = first.dataEnd;
  if (split) {
    const side = collect(results[1].records, 0n);
    const shift = alignUp(first.dataEnd, cs);
    if (side.dataEnd > 0n) await copyRange(sidePath, 0n, outPath, shift, side.dataEnd);
    parts.push(collect(results[1].records, shift));
    dataEnd = side.dataEnd > 0n ? shift + side.dataEnd : first.dataEnd;
  }
  const plan = qcow2OutputFinish(
    o,
    job.size,
    dataEnd,
    parts.flatMap((p) => p.runs),
    parts.flatMap((p) => p.compressed),
  );
  if (!plan.ok) throw new PlanRefused(plan.error.message);
  await applyPlan(outPath, plan.value);
  return results.reduce((n, r) => n + (doneRecord(r.records).bytes_written as bigint), 0n);
}
