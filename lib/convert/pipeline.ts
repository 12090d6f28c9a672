// The data path of `instar convert`: one or two guests read the source
// chain and write the output's data; for qcow2 output the guests report
// where every cluster went and the shared planner
// (lib/formats/qcow2/output_plan.ts) writes all metadata. No image byte
// passes through here: the guest reads and writes through the VMM, and
// joining two guests' halves is a copy inside the VMM library.
import { convertFlags, formats, limits, ops, records } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { collapseRange, type GuestInput, runGuest, type RunRequest } from "../vmm/guest.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import {
  type CompressedCluster,
  type DataRun,
  qcow2OutputFinish,
  type Qcow2OutputOptions,
  qcow2OutputPrologue,
  type SubclusterBitmap,
  type ZeroRun,
} from "../formats/qcow2/output_plan.ts";
import { alignUp, type FilePlan } from "../formats/plan.ts";
import type { BlockOutput, BlockRun, ExtentsOutput, StreamOutput } from "../formats/types.ts";
import { hostEnv, hostPath } from "../host/context.ts";
import { cryptCompressOp, cryptOtherLuks2Refusal } from "./crypt_compress.ts";

export interface SourceLayer {
  path: string;
  formatCode: number;
  nofollow: boolean;
  /** k + 1: read qcow2 internal snapshot k (convert -l); 0 or absent: the active layer. */
  snapshot?: number;
  /** An encrypted layer's passphrase (LUKS): the guests that read it get it in params.secret. */
  secret?: Uint8Array;
}

export interface ConvertJob {
  layers: SourceLayer[];
  /** The disk size written (whole sectors, as qemu's total_sectors * 512). */
  size: bigint;
  minSparse: bigint;
  onProgress?: (done: bigint, total: bigint) => void;
  /** The raw output exists and is written in place (a block device, or -n):
   * it is not sized; "zero" writes zeroes over the range the image covers
   * first (the guests write nothing where the image reads as zeroes), "keep"
   * leaves it (the caller punched it, or --target-is-zero). */
  inPlace?: "zero" | "keep";
  /** Raw output only: the source byte written at output offset 0 (dd's
   * skip=); the guests copy source bytes [origin, origin + size). */
  origin?: bigint;
  /** Raw output only: the file's size when larger than `size` (dd's output
   * is created a whole number of sectors long; the bytes past `size` stay a hole). */
  fileSize?: bigint;
  /** params.kdf_max_iters for an encrypted source. */
  kdfMaxIters?: bigint;
  /** A LUKS2 source: read by convert_luks2 with this much guest RAM (Argon2; lib/cli/image.ts unlockForRead). */
  luks2Ram?: number;
}

/** A failure the guest reported (an ERROR record); the CLI words it. */
export class GuestFailure extends Error {
  /** `records`: the whole run's (the NAME records an open error quotes come before the ERROR). */
  constructor(readonly record: Rec, readonly records: Rec[] = [record]) {
    super("guest reported an error");
  }
}

/** Compressed output is split across two guests from this size on. */
const SPLIT_MIN = 64n << 20n;
const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;

export function inputs(job: ConvertJob) {
  return job.layers.map((l) => ({
    path: l.path,
    format: l.formatCode,
    nofollow: l.nofollow,
    snapshot: l.snapshot,
    secret: l.secret,
  }));
}

/**
 * Runs a convert guest for `job`: an encrypted source is read by
 * convert_luks (the LUKS layer and nettle; guest/ops.mk), convert_luks2 or
 * convert_qcrypt, compressed output by their compressing variants
 * (lib/convert/crypt_compress.ts).
 */
export function runFor(job: ConvertJob, req: RunRequest) {
  if (!job.layers.some((l) => l.secret)) return runGuest(req);
  const compressing = req.op !== "convert";
  const ramBytes = job.luks2Ram ? Math.max(req.ramBytes ?? 0, job.luks2Ram) : req.ramBytes;
  // An encrypted chain with a vpc, vhdx or vmdk layer: convert_crypt_other
  // (every reader), convert_crypt_other_zlib or _zstd (without LUKS2) for -c.
  const other = job.layers.some((l) => !PLAIN_CRYPT_CHAIN.includes(l.formatCode));
  if (other) {
    if (!compressing) {
      return runGuest({ ...req, op: "convert_crypt_other", kdfMaxIters: job.kdfMaxIters, ramBytes });
    }
    if (job.luks2Ram) throw new PlanRefused(cryptOtherLuks2Refusal);
    const op = req.op === "convert_zlib" ? "convert_crypt_other_zlib" : "convert_crypt_other_zstd";
    return runGuest({ ...req, op, kdfMaxIters: job.kdfMaxIters, ramBytes });
  }
  if (job.luks2Ram && !compressing) {
    return runGuest({ ...req, op: "convert_luks2", kdfMaxIters: job.kdfMaxIters, ramBytes });
  }
  // An encrypted qcow2 layer: convert_qcrypt (qcow2, raw and LUKS layers only).
  const qcrypt = job.layers.some((l) => l.secret && l.formatCode === formats.QCOW2);
  if (compressing) {
    return runGuest({
      ...req,
      op: cryptCompressOp(job.layers, req.op),
      kdfMaxIters: job.kdfMaxIters,
      ramBytes,
    });
  }
  return runGuest({ ...req, op: qcrypt ? "convert_qcrypt" : "convert_luks", kdfMaxIters: job.kdfMaxIters });
}

/** The formats convert_qcrypt, convert_luks and their compressing variants read. */
const PLAIN_CRYPT_CHAIN: number[] = [formats.RAW, formats.QCOW2, formats.LUKS];

const DEBUG = Deno.env.get("INSTAR_DEBUG") !== undefined;

function debugRun(what: string, r: { exits: bigint; elapsedNs: bigint; setupNs: bigint }) {
  if (DEBUG) {
    console.error(
      `instar: ${what}: ${r.exits} exits, ${Number(r.elapsedNs) / 1e6} ms in the guest, setup ${
        Number(r.setupNs) / 1e6
      } ms`,
    );
  }
}

export function failOnError(recs: Rec[]) {
  const err = recs.find((r) => r.type === records.ERROR);
  if (err && DEBUG) {
    console.error(
      `instar: guest error ${JSON.stringify(err.fields, (_k, v) => typeof v === "bigint" ? String(v) : v)}`,
    );
  }
  if (err) throw new GuestFailure(err, recs);
}

export function doneRecord(recs: Rec[]) {
  const done = recs.filter((r) => r.type === records.CONVERT_DONE);
  if (done.length !== 1) throw new Error("the guest did not report the end of its range");
  return done[0].fields;
}

/**
 * How many guests share the work: two (one per core) for anything big
 * enough to pay for a second VM. Copying is bound by the kernel's page
 * cache copies, which two cores do in parallel as qemu's I/O threads do.
 * INSTAR_GUESTS=1|2 forces the choice (tests check both give the same bytes).
 */
function guestCount(size: bigint, clusters: bigint): number {
  const forced = hostEnv("INSTAR_GUESTS");
  if (clusters < 2n) return 1;
  if (forced === "1" || forced === "2") return Number(forced);
  return size >= SPLIT_MIN ? 2 : 1;
}

/** Splits [0, size) at a multiple of `align` near the middle. */
function middle(size: bigint, align: bigint): bigint {
  const mid = (size / 2n / align) * align;
  return mid > 0n ? mid : size;
}

/** Sums the progress of parallel guests into one callback. */
function progressOf(job: ConvertJob, n: number) {
  const done = new Array(n).fill(0n), totals = new Array(n).fill(0n);
  return (i: number) => (d: bigint, t: bigint) => {
    done[i] = d;
    totals[i] = t;
    job.onProgress?.(done.reduce((a, b) => a + b, 0n), totals.reduce((a, b) => a + b, 0n));
  };
}

/** Writes zeroes over [0, size) of `f` (1 MiB at a time) and syncs them. */
async function zeroFill(f: Deno.FsFile, size: bigint): Promise<void> {
  const zero = new Uint8Array(1 << 20);
  await f.seek(0, Deno.SeekMode.Start);
  for (let left = size; left > 0n;) {
    const n = left < BigInt(zero.length) ? Number(left) : zero.length;
    let at = 0;
    while (at < n) at += await f.write(zero.subarray(at, n));
    left -= BigInt(n);
  }
  await f.syncData();
}

/** Raw output: the file is sized first, the guests write the data in place. Returns the bytes written. */
export async function convertToRaw(job: ConvertJob, outPath: string): Promise<bigint> {
  // Through an open file: an unnamed output's /proc path is a link Deno.truncate would not follow.
  const f = await Deno.open(hostPath(outPath), { write: true });
  try {
    if (job.inPlace === "zero") await zeroFill(f, job.size);
    else if (!job.inPlace) await f.truncate(Number(job.fileSize ?? job.size));
  } finally {
    f.close();
  }
  // Nothing to copy (dd count=0): a guest's range end 0 would mean its whole disk.
  if (job.size === 0n) return 0n;
  const n = guestCount(job.size, job.size / (1n << 20n));
  const mid = n === 2 ? middle(job.size, 1n << 20n) : job.size;
  const report = progressOf(job, n);
  const ranges = n === 2 ? [[0n, mid], [mid, job.size]] : [[0n, job.size]];
  const origin = job.origin ?? 0n;
  const results = await Promise.all(ranges.map(([from, to], i) =>
    runFor(job, {
      op: "convert",
      opCode: ops.CONVERT,
      inputs: inputs(job),
      // Source byte x goes to output offset x - origin.
      args: [0n, 0n, job.minSparse, 0n, origin, origin + from, origin + to],
      ramBytes: RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path: outPath, cap: job.fileSize ?? job.size },
      onProgress: report(i),
    })
  ));
  results.forEach((r, i) => debugRun(`convert raw part ${i}`, r));
  for (const r of results) failOnError(r.records);
  return results.reduce((t, r) => t + (doneRecord(r.records).bytes_written as bigint), 0n);
}

export interface Part {
  runs: DataRun[];
  compressed: CompressedCluster[];
  /** Zero clusters over the target's backing file (convert -B). */
  zeros: ZeroRun[];
  /** Clusters only partly written over the backing file (refused). */
  partial: bigint;
  /** Subcluster bitmaps of a target with extended L2 entries (convert -B). */
  subclusters: SubclusterBitmap[];
  dataEnd: bigint;
  written: bigint;
}

/** Reads DATA_RUN / COMPRESSED_RUN records into planner inputs (the planner validates them). */
export function collect(recs: Rec[], shift: bigint): Part {
  const runs: DataRun[] = [];
  const compressed: CompressedCluster[] = [];
  const zeros: ZeroRun[] = [];
  const subclusters: SubclusterBitmap[] = [];
  let partial = 0n;
  for (const r of recs) {
    const f = r.fields;
    if (r.type === records.SUBCLUSTERS) {
      if (f.count !== 1n) throw new Error("malformed subcluster record");
      subclusters.push({ guestCluster: f.guest_cluster as bigint, bitmap: f.host_offset as bigint });
    } else if (r.type === records.ZERO_RUN) {
      const run = { guestCluster: f.guest_cluster as bigint, count: f.count as bigint };
      if (f.host_offset === 0n) zeros.push(run);
      else if (f.host_offset === 1n) partial += run.count;
      else throw new Error("malformed zero run");
    } else if (r.type === records.DATA_RUN) {
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
        compressed.push({
          guestCluster: (f.guest_cluster as bigint) + BigInt(i),
          hostOffset: at,
          length: BigInt(lens[i]),
        });
        at += BigInt(lens[i]);
      }
    }
  }
  const done = doneRecord(recs);
  return {
    runs,
    compressed,
    zeros,
    partial,
    subclusters,
    dataEnd: (done.data_end as bigint) + shift,
    written: done.bytes_written as bigint,
  };
}

export interface Qcow2Target {
  options: Qcow2OutputOptions;
  compress: boolean;
  /** convert -B: the target's backing file size in bytes (whole sectors); the
   * guest then asks the source's top layer alone (one guest). */
  backingSize?: bigint;
  /** convert -B -c: log2 of the source top's L2 table reach (0: not qcow2). */
  topL2Bits?: bigint;
  /** convert -B: the target's backing chain, opened through the allowlist
   * (lib/cli/convert_target.ts); the guest copies its bytes into target
   * clusters the source's top writes only partly, as qemu's COW does. */
  backingInputs?: GuestInput[];
}

/** Thrown with qemu's words when the planner refuses (options, size). */
export class PlanRefused extends Error {}

export interface Packing {
  op: string;
  flags: bigint;
  /** Output cluster (grain) size. */
  clusterSize: bigint;
  dataStart: bigint;
  /** arg[7]: qcow2's refcount limit for shared compressed clusters (0 = none). */
  maxRefs: bigint;
  /** Where a second guest starts: this many bytes per data cluster of the first half. */
  perCluster: bigint;
  /** A lone guest's output cap: this many bytes per cluster of the disk (plus one cluster). */
  capPerCluster: bigint;
  /** Where the second guest's data may start (a multiple of 4 KiB: collapse needs filesystem blocks). */
  align: bigint;
  /** One guest only (convert -B). */
  single?: boolean;
  /** Put above the cluster bits in arg[4] (convert -B -c: the compressed streams' refcount limit). */
  arg4High?: bigint;
  /** convert -B: the target's backing chain, after the source's inputs (arg[0] >> 32 says where). */
  targetBacking?: GuestInput[];
  /** convert -B without -c: the target has extended L2 entries (arg[0] bit 63: the guest works in subclusters). */
  extendedL2?: boolean;
}

/** A packing guest's inputs and arguments for guest bytes [from, to), its data from `start` on. */
export function packedGuest(
  job: ConvertJob,
  k: Packing,
  extra: bigint,
  from: bigint,
  to: bigint,
  start: bigint,
): { inputs: GuestInput[]; args: bigint[] } {
  const cbits = BigInt(k.clusterSize.toString(2).length - 1);
  return {
    inputs: [...inputs(job), ...(k.targetBacking ?? [])],
    args: [
      (k.targetBacking ? BigInt(job.layers.length) << 32n : 0n) | (k.extendedL2 ? 1n << 63n : 0n),
      k.flags | extra,
      job.minSparse,
      start,
      cbits | ((k.arg4High ?? 0n) << 8n),
      from,
      to,
      k.maxRefs,
    ],
  };
}

/**
 * Guests that pack output clusters (qcow2, streamOptimized VMDK) from
 * dataStart on in guest order and report where each went. One guest, or
 * two into one file: a status-only pass (CONV_COUNT) counts the first
 * half's data clusters, the second guest starts behind the first half's
 * worst case, each is confined to its window by its output cap, and the
 * gap the first half leaves is collapsed (a metadata operation on
 * ext4/xfs) or kept as a hole where the filesystem cannot.
 */
async function packedParts(job: ConvertJob, k: Packing, outPath: string): Promise<Part[]> {
  const cs = k.clusterSize;
  const clusters = (job.size + cs - 1n) / cs;
  const n = k.single ? 1 : guestCount(job.size, clusters);
  const mid = n === 2 ? middle(job.size, cs) : job.size;
  const report = progressOf(job, n);
  const guest = (
    extra: bigint,
    from: bigint,
    to: bigint,
    start: bigint,
    cap: bigint,
    i: number,
  ) =>
    runFor(job, {
      op: k.op,
      opCode: ops.CONVERT,
      ...packedGuest(job, k, extra, from, to, start),
      ramBytes: RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path: outPath, cap },
      onProgress: i >= 0 ? report(i) : undefined,
    });
  const clustersIn = (from: bigint, to: bigint) => (to - from + cs - 1n) / cs;
  // Nothing to copy (dd count=0): a guest's range end 0 would mean its whole disk.
  if (job.size === 0n) {
    return [{
      runs: [],
      compressed: [],
      zeros: [],
      partial: 0n,
      subclusters: [],
      dataEnd: k.dataStart,
      written: 0n,
    }];
  }
  if (n === 1) {
    const r = await guest(0n, 0n, job.size, k.dataStart, k.dataStart + clusters * k.capPerCluster + cs, 0);
    debugRun(`${k.op} packed`, r);
    failOnError(r.records);
    return [collect(r.records, 0n)];
  }
  const c = await guest(BigInt(convertFlags.COUNT), 0n, mid, k.dataStart, k.dataStart, -1);
  failOnError(c.records);
  const countA = doneRecord(c.records).clusters as bigint;
  if (countA > clustersIn(0n, mid)) throw new Error("the guest counted more clusters than its range has");
  const align = k.align;
  const startB = alignUp(k.dataStart + countA * k.perCluster, align);
  const rs = await Promise.all([
    guest(0n, 0n, mid, k.dataStart, startB, 0),
    guest(0n, mid, job.size, startB, startB + clustersIn(mid, job.size) * k.perCluster + cs, 1),
  ]);
  rs.forEach((r, i) => debugRun(`${k.op} packed part ${i}`, r));
  for (const r of rs) failOnError(r.records);
  const first = collect(rs[0].records, 0n);
  const endB = doneRecord(rs[1].records).data_end as bigint;
  const gapStart = alignUp(first.dataEnd, align);
  const gap = endB > startB ? startB - gapStart : 0n;
  const collapsed = gap > 0n && await collapseRange(outPath, gapStart, gap);
  const parts = [first, collect(rs[1].records, collapsed ? -gap : 0n)];
  if (endB <= startB) parts[1].dataEnd = first.dataEnd;
  return parts;
}

/** A packed target: how its guests pack clusters, and the metadata plan for what they reported. */
export interface PackedTarget {
  packing: Packing;
  /** The plan for the parts' data (throws PlanRefused). */
  finish(parts: Part[]): FilePlan;
}

/** qcow2 output's packing and planner (file or stdout). */
export function qcow2Target(job: ConvertJob, target: Qcow2Target): PackedTarget {
  const o = target.options;
  const pro = qcow2OutputPrologue(o, job.size);
  if (!pro.ok) throw new PlanRefused(pro.error.message);
  const dataStart = pro.value.dataStart;
  const cs = o.clusterSize;
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
  // Compressed streams sharing a host cluster each hold a reference; narrow
  // refcounts cap how many may share one (64-bit: no practical cap).
  let maxRefs = o.refcountBits >= 64 ? 0n : (1n << BigInt(o.refcountBits)) - 1n;
  let arg4High = 0n;
  if (target.backingSize !== undefined) {
    // -B -c: the zlib or zstd program compresses the top's data clusters
    // (guest/ops/convert.c convert_qcow2_backing_compressed).
    // arg[7] carries the backing file's size, so the refcount limit of
    // shared compressed clusters goes above the cluster bits in arg[4].
    if (target.compress) arg4High = (maxRefs << 8n) | (target.topL2Bits ?? 0n);
    // Extended L2 entries without -c: the guest keeps qemu's subcluster states.
    flags |= BigInt(convertFlags.BACKING);
    if (o.compat === "0.10") flags |= BigInt(convertFlags.ZERO_DATA);
    // arg[7] carries the backing file's size in this mode.
    maxRefs = target.backingSize;
  }
  // A compressed stream stays under a cluster, plus at most a cluster of
  // padding before the next plain cluster or a fresh shared cluster.
  const packing: Packing = {
    op,
    flags,
    clusterSize: cs,
    dataStart,
    maxRefs,
    perCluster: target.compress ? 2n * cs : cs,
    capPerCluster: cs,
    // Plain clusters sit on cluster boundaries.
    align: cs > 4096n ? cs : 4096n,
    single: target.backingSize !== undefined,
    arg4High,
    extendedL2: target.backingSize !== undefined && !target.compress && o.extendedL2,
  };
  // -B uncompressed: partly written clusters need the backing file's bytes
  // (the guest's per-input parameters hold limits.PARAM_INPUTS inputs;
  // beyond that such clusters stay refused below).
  const tb = target.backingInputs;
  if (
    target.backingSize !== undefined && !target.compress && tb && tb.length > 0 &&
    job.layers.length + tb.length <= limits.PARAM_INPUTS
  ) {
    packing.targetBacking = tb;
  }
  return {
    packing,
    finish(parts) {
      const dataEnd = parts.reduce((m, p) => (p.dataEnd > m ? p.dataEnd : m), dataStart);
      const partial = parts.reduce((t, p) => t + p.partial, 0n);
      if (partial > 0n) {
        throw new PlanRefused(
          `${partial} target cluster(s) would be only partly written over the backing file (qemu copies ` +
            "the backing file's data into them); this is not supported by instar convert",
        );
      }
      const plan = qcow2OutputFinish(
        o,
        job.size,
        dataEnd,
        parts.flatMap((p) => p.runs),
        parts.flatMap((p) => p.compressed),
        parts.flatMap((p) => p.zeros),
        parts.flatMap((p) => p.subclusters),
      );
      if (!plan.ok) throw new PlanRefused(plan.error.message);
      return plan.value;
    },
  };
}

/** qcow2 output: guests write the data, the planner the metadata. Returns the data bytes written. */
export async function convertToQcow2(job: ConvertJob, target: Qcow2Target, outPath: string): Promise<bigint> {
  const t = qcow2Target(job, target);
  const parts = await packedParts(job, t.packing, outPath);
  const t0 = performance.now();
  const plan = t.finish(parts);
  const t1 = performance.now();
  await applyPlan(outPath, plan);
  if (DEBUG) {
    console.error(
      `instar: qcow2 metadata planned in ${(t1 - t0).toFixed(1)} ms, written in ${
        (performance.now() - t1).toFixed(1)
      } ms`,
    );
  }
  return parts.reduce((t, p) => t + p.written, 0n);
}

/**
 * Block output (vpc, vhdx, sparse and flat VMDK extents): the guest writes
 * the data, in place after the metadata ("inplace", fixed subformats: one
 * or two guests as for raw) or packed into slots ("slots", dynamic: one
 * guest, or two each handing out slots in guest order in its own window),
 * and the target driver's planner writes all metadata from what the guest
 * reports. `range` limits the file to guest bytes [from, to) (a VMDK
 * extent): the file's byte or block 0 is the range's first. Returns the
 * data bytes written.
 */
export async function convertToBlocks(
  job: ConvertJob,
  b: BlockOutput,
  outPath: string,
  range: { from: bigint; to: bigint } = { from: 0n, to: job.size },
): Promise<bigint> {
  const { from: lo, to: hi } = range;
  let dataEnd: bigint, runs: BlockRun[] = [], written = 0n;
  if (b.placement === "inplace") {
    const n = guestCount(hi - lo, (hi - lo) / (1n << 20n));
    const mid = n === 2 ? lo + middle(hi - lo, 1n << 20n) : hi;
    const report = progressOf(job, n);
    const ranges = n === 2 ? [[lo, mid], [mid, hi]] : [[lo, hi]];
    const results = await Promise.all(ranges.map(([from, to], i) =>
      runFor(job, {
        op: "convert",
        opCode: ops.CONVERT,
        inputs: inputs(job),
        // arg[4]: the guest byte written at dataStart (raw mode's origin).
        args: [0n, 0n, job.minSparse, b.dataStart, lo, from, to],
        ramBytes: RAM,
        timeoutMs: TIMEOUT_MS,
        output: { path: outPath, cap: b.cap },
        onProgress: report(i),
      })
    ));
    results.forEach((r, i) => debugRun(`convert in place part ${i}`, r));
    for (const r of results) failOnError(r.records);
    dataEnd = 0n;
    for (const r of results) {
      const d = doneRecord(r.records);
      written += d.bytes_written as bigint;
      if ((d.data_end as bigint) > dataEnd) dataEnd = d.data_end as bigint;
    }
  } else {
    const bits = BigInt(b.blockSize.toString(2).length - 1);
    if (1n << bits !== b.blockSize) throw new Error("block size is not a power of two");
    if (lo % b.blockSize !== 0n) throw new Error("an extent does not start on a block");
    const stride = b.blockSize + b.slotPrefix;
    const blocksIn = (from: bigint, to: bigint) => (to - from + b.blockSize - 1n) / b.blockSize;
    const n = guestCount(hi - lo, blocksIn(lo, hi));
    const mid = n === 2 ? lo + middle(hi - lo, b.blockSize) : hi;
    const report = progressOf(job, n);
    const guest = (from: bigint, to: bigint, start: bigint, cap: bigint, i: number) =>
      runFor(job, {
        op: "convert",
        opCode: ops.CONVERT,
        inputs: inputs(job),
        args: [0n, BigInt(convertFlags.BLOCK), job.minSparse, start, bits, from, to, b.slotPrefix],
        ramBytes: RAM,
        timeoutMs: TIMEOUT_MS,
        output: { path: outPath, cap },
        onProgress: report(i),
      });
    const first = lo / b.blockSize;
    const blockRuns = (recs: Rec[], shift: bigint) => {
      const out: BlockRun[] = [];
      for (const rec of recs) {
        if (rec.type !== records.DATA_RUN) continue;
        const f = rec.fields;
        out.push({
          block: (f.guest_cluster as bigint) - first,
          count: f.count as bigint,
          slot: (f.host_offset as bigint) + shift,
        });
      }
      return out;
    };
    if (n === 1 || mid >= hi) {
      const r = await guest(lo, hi, b.dataStart, b.cap, 0);
      debugRun("convert blocks", r);
      failOnError(r.records);
      runs = blockRuns(r.records, 0n);
      const d = doneRecord(r.records);
      dataEnd = d.data_end as bigint;
      written = d.bytes_written as bigint;
    } else {
      // Two guests into one file, as for qcow2: the second starts behind the
      // first half's worst case (every block allocated), on a filesystem
      // block; each is confined to its window by its output cap. The gap
      // the first half leaves is collapsed where the filesystem can (else a
      // hole). Slots stay aligned: VHDX blocks are whole MiB, so the gap is
      // too; VHD slots only need whole sectors.
      const fsAlign = 4096n;
      const startB = alignUp(b.dataStart + blocksIn(lo, mid) * stride, fsAlign);
      const capB = startB + blocksIn(mid, hi) * stride;
      const rs = await Promise.all([
        guest(lo, mid, b.dataStart, b.dataStart + blocksIn(lo, mid) * stride, 0),
        guest(mid, hi, startB, capB, 1),
      ]);
      rs.forEach((r, i) => debugRun(`convert blocks part ${i}`, r));
      for (const r of rs) failOnError(r.records);
      const [dA, dB] = rs.map((r) => doneRecord(r.records));
      const endA = dA.data_end as bigint, endB = dB.data_end as bigint;
      written = (dA.bytes_written as bigint) + (dB.bytes_written as bigint);
      runs = blockRuns(rs[0].records, 0n);
      if (endB > startB) {
        const gapStart = alignUp(endA, fsAlign);
        const gap = startB - gapStart;
        const collapsed = gap > 0n && await collapseRange(outPath, gapStart, gap);
        const shift = collapsed ? -gap : 0n;
        runs.push(...blockRuns(rs[1].records, shift));
        dataEnd = endB + shift;
      } else {
        dataEnd = endA;
      }
    }
  }
  const plan = b.finish(dataEnd, runs);
  if (!plan.ok) throw new PlanRefused(plan.error.message);
  await applyPlan(outPath, plan.value);
  return written;
}

/**
 * Stream output (streamOptimized VMDK): the zlib guests deflate each grain
 * that holds data behind its marker and pack them in guest order (one
 * guest, or two on both cores as for `-c`); the planner points the grain
 * tables at them. Returns the data bytes written.
 */
export async function convertToStream(job: ConvertJob, s: StreamOutput, outPath: string): Promise<bigint> {
  const t = streamTarget(s);
  const parts = await packedParts(job, t.packing, outPath);
  await applyPlan(outPath, t.finish(parts));
  return parts.reduce((t, p) => t + p.written, 0n);
}

/** streamOptimized VMDK's packing and planner (file or stdout). */
export function streamTarget(s: StreamOutput): PackedTarget {
  return {
    packing: {
      op: "convert_zlib",
      flags: BigInt(convertFlags.QCOW2 | convertFlags.COMPRESS | convertFlags.VMDK),
      clusterSize: s.grainSize,
      dataStart: s.dataStart,
      maxRefs: 0n,
      perCluster: s.grainMax,
      capPerCluster: s.grainMax,
      // Markers sit on sectors: at most 4 KiB of zeroes between the halves.
      align: 4096n,
    },
    finish(parts) {
      const dataEnd = parts.reduce((m, p) => (p.dataEnd > m ? p.dataEnd : m), s.dataStart);
      const grains = parts.flatMap((p) => p.compressed).map((c) => ({
        grain: c.guestCluster,
        offset: c.hostOffset,
        length: c.length,
      }));
      if (parts.some((p) => p.runs.length > 0)) throw new Error("the guest stored a grain uncompressed");
      const plan = s.finish(dataEnd, grains);
      if (!plan.ok) throw new PlanRefused(plan.error.message);
      return plan.value;
    },
  };
}

/**
 * Multi-file output (VMDK monolithicFlat, twoGbMaxExtent*): each extent
 * file is written like a block target holding its guest range, then the
 * descriptor file. `files` maps each extent (and then the descriptor, last)
 * to the temporary path it is written under. Returns the data bytes written.
 */
export async function convertToExtents(
  job: ConvertJob,
  x: ExtentsOutput,
  files: (i: number) => Promise<string>,
): Promise<bigint> {
  let written = 0n;
  for (const [i, e] of x.extents.entries()) {
    // Progress over the whole disk: this extent's share after the ones before.
    const part = { ...job, onProgress: (d: bigint) => job.onProgress?.(e.from + d, job.size) };
    written += await convertToBlocks(part, e.blocks, await files(i), { from: e.from, to: e.to });
  }
  await applyPlan(await files(x.extents.length), x.descriptor(written > 0n));
  return written;
}
