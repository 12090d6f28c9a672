// convert -n -O qcow2: writing a source into an existing qcow2 image in place,
// as qemu-img convert does without creating the target. qemu opens the
// target read-write and, in guest order, writes every cluster of the source
// that holds data and write-zeroes (BDRV_REQ_MAY_UNMAP) every cluster that
// reads as zeroes (by block status, and with -S also by content), skipping
// the zero writes with --target-is-zero. The rebase_diff guest classifies
// the source's clusters at the target's cluster size, the write planner
// (lib/formats/qcow2/write_plan.ts) replays qemu's qcow2 writes on the
// target's metadata, the copy_runs guest moves the bytes. The target is
// only written where the planner says; nothing of it is decoded on the host.
import { diffFlags, formats, mapFlags, ops, records } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { CliError } from "./messages.ts";
import { needsNoKey, type OpenedImage, OpenError, openFailure, openImage } from "./image.ts";
import { COMPRESSED_ENTRIES, scanQcow2 } from "./scan_qcow2.ts";
import { mapRuns } from "./map_runs.ts";
import { applyWritePlan } from "./write_rounds.ts";
import { existingRuns } from "../formats/qcow2/commit_plan.ts";
import {
  type ExistingRun,
  MAX_WRITE_RUNS,
  planQcow2Writes,
  type WriteOp,
} from "../formats/qcow2/write_plan.ts";
import { restrictOpsWithPieces } from "../convert/top_ranges.ts";
import { convertRequests, type Request } from "../convert/convert_requests.ts";
import type { SourceStatus } from "../convert/status_layers.ts";
import { requestOps } from "../formats/qcow2/request_ops.ts";
import { MapRunsError } from "../chain/map_runs.ts";
import { tailOps } from "../convert/tail_cluster.ts";
import { cutAtSpan, firstEndingAfter, mergeRanges, TopRequests } from "../convert/nb_requests.ts";

export interface IntoQcow2Job {
  /** The target's name as given. */
  target: string;
  unsafeQuirks: boolean;
  /** The source chain's guest inputs and its disk size. */
  source: GuestInput[];
  size: bigint;
  /** -S in bytes (0: every data cluster written, zeroes only by block status). */
  minSparse: bigint;
  targetIsZero: boolean;
  /** -n -B: only these byte ranges of the source are written (lib/convert/top_ranges.ts). */
  top?: [bigint, bigint][];
  /** Where the source's layers answer block status, and its src_alignment (lib/convert/status_layers.ts);
   * undefined where qemu-img's requests are not modelled. */
  status?: SourceStatus;
  /** -n -B: where the source top's block status answers (its L2 table's reach; 0: whole runs). */
  topSpan?: bigint;
  /** The target's chain as guest inputs (top first) when it has a backing file. */
  targetChain?: GuestInput[];
  onProgress?: (done: bigint, total: bigint) => void;
}

/** Opens the target (qemu's write lock) and checks what instar writes into. */
export async function openQcow2Target(
  name: string,
  unsafeQuirks: boolean,
  keyGiven = false,
  /** --target-image-opts: the operand as given (qemu's "Could not open '...'") and encrypt.format=. */
  display = name,
  encryptFormat?: string,
  /** A plain target may have a backing file (the caller opens its chain). */
  allowBacking = false,
): Promise<OpenedImage> {
  let img: OpenedImage;
  try {
    img = await openImage(name, {
      format: "qcow2",
      unsafeQuirks,
      lock: LOCKS.write,
      noLists: true,
      encryptFormat,
    });
    // An encrypted target without encrypt.key-secret fails as qemu's open does; with one, below.
    if (!keyGiven) needsNoKey(img);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(display, e);
    throw e;
  }
  const q = img.qcow2!;
  const refuse = (why: string) =>
    new CliError([`Writing into '${name}' is not supported by instar convert: ${why}; nothing was written`]);
  if (q.corrupt) {
    throw new CliError([`Could not open '${name}': qcow2: Image is corrupt; cannot be opened read/write`]);
  }
  if (q.dirty) throw refuse("the image has the dirty bit set");
  if (q.nbBitmaps > 0 || q.hasBitmapsExt) throw refuse("bitmaps");
  // Internal snapshots: their clusters are copied on write (write_plan.ts);
  // an encrypted one's bytes would be copied under another host offset's IV.
  if (q.nbSnapshots > 0 && q.layout.cryptMethod !== 0) {
    throw refuse("internal snapshots in an encrypted image");
  }
  if (q.hasDataFileBit || q.extendedL2) throw refuse("a data file or extended L2 entries");
  // Encrypted (with encrypt.key-secret): lib/cli/convert_into_qcrypt.ts.
  if (q.layout.cryptMethod !== 0 && (q.layout.cryptMethod > 2 || !keyGiven)) throw refuse("encryption");
  // A plain target's backing chain is opened by the caller (openTargetChain).
  if (q.backingFile !== undefined && (q.layout.cryptMethod !== 0 || !allowBacking)) {
    throw refuse("a target with a backing file");
  }
  return img;
}

/** Writes the source into the opened target `img`. Returns the data bytes written. */
export async function convertIntoQcow2(job: IntoQcow2Job, img: OpenedImage): Promise<bigint> {
  const q = img.qcow2!;
  const what = `error while writing into '${job.target}'`;
  const cb = BigInt(q.clusterBits);
  // A source ending inside a cluster of a larger target: qemu writes only
  // up to the source's end, the rest of that cluster is kept (tail_cluster.ts).
  const tail = job.size % q.clusterSize !== 0n && job.size < q.virtualSize;
  if (tail && (job.top || job.targetChain)) {
    const why = job.top ? "with -B" : "into a target with a backing file";
    throw new CliError([
      `Writing into '${job.target}' is not supported by instar convert: the source ends inside a cluster of the target (${why}); nothing was written`,
    ]);
  }
  const clusters = (job.size + q.clusterSize - 1n) >> cb;
  // -S 0: qemu writes every cluster as data, zeroes included (and even with
  // --target-is-zero), one request per block-status run of the source;
  // otherwise the guest classifies the clusters. Data requests are at most
  // IO_BUF_SIZE (2 MiB) from the run's start. The requests matter where a
  // write frees clusters (a compressed one) that the next one reuses.
  // Without -B: qemu-img's own requests (lib/convert/convert_requests.ts),
  // each allocating its clusters (request_ops.ts); whole-cluster runs where
  // that model does not reach.
  // A target with a backing file of its own keeps whole-cluster runs (what
  // its partly written clusters read is the backing's: partialWrites).
  const requests = job.top || job.targetChain ? undefined : await sourceRequests(job, q.clusterSize);
  const byCluster = async () => chunkData(await classify(job, cb, clusters, job.minSparse !== 0n), cb);
  let writes = requests ? [] : await byCluster();
  let pieces: Map<bigint, [bigint, bigint][]> | undefined;
  if (job.top) {
    const r = restrictOpsWithPieces(writes, job.top, q.clusterBits, job.size);
    writes = r.ops;
    if (r.pieces.size > 0) pieces = r.pieces;
  }
  // With the target's compressed clusters: an overwritten or zeroed one is
  // freed as qemu does (write_plan.ts), its host clusters discarded at 0.
  const scan = await scanQcow2(img, what, COMPRESSED_ENTRIES);
  const targetMap = await mapRuns([{ path: img.openPath, format: formats.QCOW2, nofollow: false }], what);
  const existing = existingRuns(targetMap, q.clusterBits);
  if (pieces) writes = await partialWrites(job, writes, pieces, existing, what, q.version, q.virtualSize, cb);
  let fromRequests = false;
  if (requests) {
    const r = requestOps({ requests, existing, clusterBits: q.clusterBits, virtualSize: q.virtualSize });
    fromRequests = r !== undefined && r.length <= MAX_WRITE_RUNS / 2;
    writes = fromRequests ? r! : await byCluster();
  }
  if (tail) {
    const t = job.size >> cb;
    const t2 = tailOps({
      ops: writes,
      size: job.size,
      clusterBits: q.clusterBits,
      kind: existing.find((x) => x.cluster <= t && t < x.cluster + x.count)?.kind ?? "unallocated",
      requests: fromRequests ? requests : undefined,
    });
    writes = t2.ops;
    if (t2.piece) pieces = new Map([[t, t2.piece]]);
  }
  const plan = planQcow2Writes({
    scan,
    version: q.version,
    existing,
    ops: writes,
    // Past the source's end, the last cluster's rest is the target's (copy-on-write).
    sourceSize: tail ? q.virtualSize : job.size,
    // convert opens its target with BDRV_O_UNMAP: freed clusters are discarded.
    discardFreed: true,
  });
  if (!plan.ok) {
    throw new CliError([
      `Writing into '${job.target}' is not supported by instar convert: ${plan.error.message}; nothing was written`,
    ]);
  }
  const total = writes.reduce((t, w) => t + (w.kind === "data" ? w.count << cb : 0n), 0n);
  let before = 0n;
  // --target-is-zero: qemu skips its zero writes, also the -S zero blocks
  // inside a data cluster (they stay as the target had them).
  await applyWritePlan(
    plan.value,
    job.source,
    img,
    job.size,
    what,
    (d, finished) => {
      if (finished) before += d;
      else job.onProgress?.(before + d, total);
    },
    job.targetIsZero ? job.minSparse : 0n,
    pieces,
    job.targetChain,
  );
  return total;
}

/**
 * convert -n -B: the write of each target cluster the top writes only part
 * of, as qemu's qcow2 driver does it (the target has no backing file), from
 * qemu-img's requests inside it in order (lib/convert/nb_requests.ts; with
 * -S 0 every one is a data write). A write-zeroes request into a cluster
 * that reads as zeroes (unallocated or a zero cluster) makes it a zero
 * cluster (qcow2_subcluster_zeroize; one with an allocation is freed; in
 * compat=0.10 the write planner's zero op); anywhere else it falls back to
 * writing zeroes, a data write. A data write goes in place into a cluster
 * holding data or a zero cluster with an allocation (the rest then reads
 * as zeroes), and allocates a new cluster elsewhere (handle_alloc: the rest
 * is copied from what the cluster read before, zeroes, a shared cluster's
 * old bytes, a compressed one's decompressed bytes; write_plan.ts).
 */
async function partialWrites(
  job: IntoQcow2Job,
  writes: WriteOp[],
  pieces: Map<bigint, [bigint, bigint][]>,
  existing: ExistingRun[],
  what: string,
  version: 2 | 3,
  virtualSize: bigint,
  cb: bigint,
): Promise<WriteOp[]> {
  let requests: TopRequests | undefined;
  // A target with a backing file: where its chain reads as zeroes (qcow2's is_zero).
  let zeroes: [bigint, bigint][] | undefined;
  const restIsZero = async (c: bigint, lo: bigint, hi: bigint) => {
    if (!zeroes) {
      zeroes = mergeRanges(
        (await mapRuns(job.targetChain!, what)).filter((r) => r.flags & mapFlags.ZERO)
          .map((r) => [r.start, r.start + r.length] as [bigint, bigint]),
      );
    }
    const cs = 1n << cb;
    let end = (c + 1n) * cs;
    if (hi === virtualSize) end = hi; // qemu: no tail at the disk's end
    const covered = (a: bigint, b: bigint) => {
      if (b <= a) return true;
      const k = firstEndingAfter(zeroes!, a);
      return k < zeroes!.length && zeroes![k][0] <= a && zeroes![k][1] >= b;
    };
    return covered(c * cs, lo) && covered(hi, end);
  };
  const out: WriteOp[] = [];
  for (const w of writes) {
    const only = pieces.get(w.cluster);
    if (!only) {
      out.push(w);
      continue;
    }
    const c = w.cluster;
    const kind = existing.find((x) => x.cluster <= c && c < x.cluster + x.count)?.kind ?? "unallocated";
    // compat=0.10 over a backing file: qemu's write-zeroes falls back to writes.
    const backed = job.targetChain !== undefined && kind === "unallocated";
    if (kind === "normal" || kind === "compressed" || job.minSparse === 0n || (backed && version === 2)) {
      out.push({ cluster: c, count: 1n, kind: "data", only });
      continue;
    }
    if (!requests) {
      // The top's own data runs (map depth 0, data and not zero), and the
      // sectors holding non-zero bytes (the rebase_diff guest at 512 bytes).
      const runs = await mapRuns(job.source, what);
      const topData = runs.filter((r) =>
        r.depth === 0 && (r.flags & mapFlags.DATA) && !(r.flags & mapFlags.ZERO)
      )
        .map((r) => [r.start, r.start + r.length] as [bigint, bigint]);
      const nonZero = (await classify({ ...job, targetIsZero: false }, 9n, (job.size + 511n) >> 9n))
        .filter((o) => o.kind === "data").map((o) =>
          [o.cluster << 9n, (o.cluster + o.count) << 9n] as [bigint, bigint]
        );
      // Each map run is one of qemu's block-status runs (its host clusters
      // contiguous) until the top's L2 table ends: not merged.
      topData.sort((a, b) => (a[0] < b[0] ? -1 : 1));
      requests = new TopRequests(
        cutAtSpan(topData, job.topSpan ?? 0n),
        mergeRanges(nonZero),
        job.minSparse,
      );
    }
    const reqs = only.flatMap(([lo, hi]) => requests!.requests(lo, hi)).sort((
      a,
      b,
    ) => (a.lo < b.lo ? -1 : 1));
    const anyData = reqs.some((r) => r.data);
    // Over a backing file a first write-zeroes makes a zero cluster only where
    // the rest of the cluster reads as zeroes; else it is written (COW).
    if (backed && !reqs[0].data && !(await restIsZero(c, reqs[0].lo, reqs[0].hi))) {
      out.push({ cluster: c, count: 1n, kind: "data", only });
    } else if (backed && !reqs[0].data && anyData) {
      out.push({ cluster: c, count: 1n, kind: "data", only, zeroFirst: true });
    } else if (!anyData) out.push({ cluster: c, count: 1n, kind: "zero" });
    // A zero cluster with an allocation: a first write-zeroes frees it.
    else if (kind === "zero_alloc" && !reqs[0].data) {
      out.push({ cluster: c, count: 1n, kind: "data", only, zeroFirst: true });
    } else out.push({ cluster: c, count: 1n, kind: "data", only });
  }
  return out;
}

/**
 * qemu-img convert's write requests over the source (raw, plain qcow2, vpc,
 * vhdx and vmdk layers: job.status; undefined otherwise, or past the
 * planner's bound): the map guest's block status, cut where each layer's
 * driver ends its answers, and with -S the non-zero sectors (the
 * rebase_diff guest at 512 bytes).
 */
async function sourceRequests(job: IntoQcow2Job, clusterSize: bigint): Promise<Request[] | undefined> {
  const status = job.status;
  if (!status || status.layers.length === 0) return undefined;
  let runs;
  try {
    runs = await mapRuns(job.source, "error while reading the source image");
  } catch (e) {
    // The classification below reports the failure in qemu's words.
    if (e instanceof MapRunsError) return undefined;
    throw e;
  }
  const nonZero: [bigint, bigint][] = [];
  if (job.minSparse > 0n) {
    const sectors = (job.size + 511n) >> 9n;
    for (const o of await classify({ ...job, targetIsZero: false }, 9n, sectors)) {
      if (o.kind === "data") nonZero.push([o.cluster << 9n, (o.cluster + o.count) << 9n]);
    }
  }
  // buf_sectors: at least IO_BUF_SIZE and the target's discard alignment (its cluster), at most 16 MiB.
  let buf = clusterSize > IO_BUF_SIZE ? clusterSize : IO_BUF_SIZE;
  if (buf > 16n << 20n) buf = 16n << 20n;
  return convertRequests({
    size: job.size,
    runs: runs.map((r) => ({
      start: r.start,
      length: r.length,
      zero: (r.flags & mapFlags.ZERO) !== 0,
      depth: r.depth,
    })),
    layers: status.layers,
    srcAlign: status.srcAlign,
    minSparse: job.minSparse,
    bufBytes: buf,
    nonZero,
    targetIsZero: job.targetIsZero,
    max: MAX_WRITE_RUNS / 2,
    joinZeroesAt: clusterSize,
  });
}

/** The rebase_diff guest's classification of the source at the target's cluster size (-S > 0). */
export async function classify(
  job: IntoQcow2Job,
  cb: bigint,
  clusters: bigint,
  /** false (-S 0): by block status alone, and the zero runs are written as data. */
  byContent = true,
): Promise<WriteOp[]> {
  let result;
  try {
    result = await runGuest({
      op: "rebase_diff",
      opCode: ops.REBASE_DIFF,
      inputs: job.source,
      args: [0n, cb, 1n, byContent ? 1n : 0n],
      ramBytes: 64 * 1024 * 1024,
      timeoutMs: 7 * 24 * 3600 * 1000,
    });
  } catch (e) {
    throw new CliError([`Sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
  }
  if (result.records.some((r) => r.type === records.ERROR) || result.guestStatus !== 0n) {
    throw new CliError(["error while reading the source image: Input/output error"]);
  }
  const writes: WriteOp[] = [];
  let next = 0n;
  for (const r of result.records) {
    if (r.type !== records.DIFF_RUN) continue;
    const cluster = r.fields.cluster as bigint, count = r.fields.count as bigint;
    const flags = r.fields.flags as number;
    if (cluster !== next || count < 1n || cluster + count > clusters || (flags & ~diffFlags.ZERO) !== 0) {
      throw new CliError(["Sandbox failure: inconsistent cluster runs"]);
    }
    next = cluster + count;
    const zero = byContent && (flags & diffFlags.ZERO) !== 0;
    if (zero && job.targetIsZero) continue;
    writes.push({ cluster, count, kind: zero ? "zero" : "data" });
  }
  if (next !== clusters) throw new CliError(["Sandbox failure: the cluster runs do not cover the source"]);
  return writes;
}

/** img_convert's buf_sectors: a data run is written in requests of at most 2 MiB from its start. */
const IO_BUF_SIZE = 2n * 1024n * 1024n;

/** Splits the data ops into qemu-img convert's write requests (whole clusters, at least one). */
export function chunkData(writes: WriteOp[], cb: bigint): WriteOp[] {
  const most = IO_BUF_SIZE >> cb > 0n ? IO_BUF_SIZE >> cb : 1n;
  const out: WriteOp[] = [];
  for (const w of writes) {
    if (w.kind !== "data") {
      out.push(w);
      continue;
    }
    for (let c = w.cluster; c < w.cluster + w.count; c += most) {
      const n = w.cluster + w.count - c < most ? w.cluster + w.count - c : most;
      out.push({ cluster: c, count: n, kind: "data" });
    }
  }
  // Past the planner's bound (terabytes of data), whole runs: the same
  // placement unless a write frees clusters the next one would reuse.
  return out.length > MAX_WRITE_RUNS / 2 ? writes : out;
}
