// qemu-img commit's plans, pure. commitOps: which guest clusters of the base
// the active commit (qemu's mirror job, block/mirror.c) writes and how: a
// base cluster any layer above the base allocates is written; where the
// whole chain reads it as zeroes without data it is a zero write
// (MIRROR_METHOD_ZERO, BDRV_REQ_MAY_UNMAP), otherwise a copy of the chain's
// data. existingRuns: the base's own clusters from a map of the base alone.
// planMakeEmpty: qcow2_make_empty's make_completely_empty for the emptied
// overlay (v3).
//
// Crash-safe order of make_completely_empty, as qemu does it: the dirty bit
// is set first (an interrupted emptying leaves an image qemu repairs on
// open and `qemu-img check -r all` repairs), then the L1 table and the
// clusters after the header are zeroed, the header switched to the new
// refcount table and L1 table, the first refcount block hooked up and
// counted, the dirty bit cleared, and the file cut, each step synced.
import { mapFlags } from "../../abi/spec.ts";
import { type FilePlan, MAX_PATCHES, type Patch } from "../plan.ts";
import type { Qcow2Model } from "./model.ts";
import type { ExistingRun, WriteOp } from "./write_plan.ts";

/** One map extent as the map guest reports it (validated by the caller). */
export interface MapRun {
  start: bigint;
  length: bigint;
  offset: bigint;
  flags: number;
  depth: number;
}

/**
 * The writes of the commit into the layer at `baseDepth`, in qemu's order
 * (ascending), in units of the base's clusters (`clusterBits`), for a disk
 * of `size` bytes. Runs past `size` are clipped.
 */
export function commitOps(runs: MapRun[], baseDepth: number, clusterBits: number, size: bigint): WriteOp[] {
  const cb = BigInt(clusterBits);
  const out: WriteOp[] = [];
  const emit = (cluster: bigint, count: bigint, kind: "data" | "zero") => {
    const last = out[out.length - 1];
    if (last && last.kind === kind && last.cluster + last.count === cluster) last.count += count;
    else out.push({ cluster, count, kind });
  };
  // The cluster shared by consecutive runs, decided once every run over it is seen.
  let pend: { c: bigint; dirty: boolean; zero: boolean } | undefined;
  const finish = () => {
    if (pend?.dirty) emit(pend.c, 1n, pend.zero ? "zero" : "data");
    pend = undefined;
  };
  const merge = (c: bigint, dirty: boolean, zero: boolean) => {
    if (pend && pend.c !== c) finish();
    pend = pend ? { c, dirty: pend.dirty || dirty, zero: pend.zero && zero } : { c, dirty, zero };
  };
  for (const r of runs) {
    if (r.start >= size || r.length <= 0n) continue;
    const end = r.start + r.length < size ? r.start + r.length : size;
    const first = r.start >> cb, last = (end - 1n) >> cb;
    const dirty = r.depth < baseDepth && (r.flags & mapFlags.PRESENT) !== 0;
    const zero = (r.flags & mapFlags.ZERO) !== 0 && (r.flags & mapFlags.DATA) === 0;
    merge(first, dirty, zero);
    if (first === last) continue;
    finish();
    if (dirty && last - first > 1n) emit(first + 1n, last - first - 1n, zero ? "zero" : "data");
    merge(last, dirty, zero);
  }
  finish();
  return out;
}

/** qemu's mirror job: at most 1 MiB per copy, 16 MiB of dirty chunks per iteration. */
const MAX_IO_BYTES = 1n << 20n;
const BUF_SIZE = 16n * MAX_IO_BYTES;

/**
 * The writes of qemu's active commit into a qcow2 base, as block/mirror.c's
 * mirror_iteration decides them, in units of the base's clusters. The job
 * works in chunks of bdrv_get_default_bitmap_granularity (the base's cluster
 * size, clamped to 4..64 KiB); a chunk is dirty when a layer above the base
 * allocates any of it. From each dirty chunk it asks bdrv_block_status_above
 * over the whole chain (base and below included) and takes the first run:
 * a DATA run is copied (whole chunks, at most 1 MiB); a run without data at
 * least one chunk long whose chunks are whole base clusters is written as
 * zeroes; anything shorter than a chunk, or not cluster aligned, is copied
 * as one chunk (or its chunks), zeroes and all. So where runs are shorter
 * than a chunk, base clusters no layer above allocates, or that the chain
 * reads as zeroes, are written as data, and qemu-img check counts them
 * (seed 7 #1, #9, #19: allocated-clusters). Runs end where qemu's block
 * status ends them: at a change of layer or kind (the map guest's runs) and
 * at every L2 table boundary of each qcow2 layer consulted (qcow2_get_host_offset
 * answers one L2 slice at a time); `spans[d]` is layer d's L2 table span in
 * bytes (undefined for raw).
 *
 * `written`, when given, receives the byte ranges the job's requests cover
 * ([from, to), ascending, adjacent ones merged): what bdrv_set_dirty marks
 * in the base's enabled bitmaps. They are the ops' clusters but where a
 * chunk is smaller than a base cluster (clusters over 64 KiB), where they
 * are the chunks alone.
 */
export function mirrorOps(
  runs: MapRun[],
  baseDepth: number,
  clusterBits: number,
  size: bigint,
  spans: (bigint | undefined)[],
  written?: [bigint, bigint][],
): WriteOp[] {
  const cb = BigInt(clusterBits);
  const cs = 1n << cb;
  const g = cs < 4096n ? 4096n : cs > 65536n ? 65536n : cs;
  const sorted = runs.filter((r) => r.length > 0n && r.start < size).sort((a, b) =>
    a.start < b.start ? -1 : a.start > b.start ? 1 : 0
  );
  // Dirty chunk ranges [from, to) in chunk units, ascending and merged.
  const dirty: [bigint, bigint][] = [];
  for (const r of sorted) {
    if (r.depth >= baseDepth || (r.flags & mapFlags.PRESENT) === 0) continue;
    const end = r.start + r.length < size ? r.start + r.length : size;
    const a = r.start / g, b = (end + g - 1n) / g;
    const last = dirty[dirty.length - 1];
    if (last && last[1] >= a) {
      if (b > last[1]) last[1] = b;
    } else dirty.push([a, b]);
  }
  let k = 0;
  /** bdrv_block_status_above(top, NULL) at `at`, asked up to `end`. */
  const status = (at: bigint, end: bigint): { data: boolean; zero: boolean; len: bigint } => {
    while (k < sorted.length && sorted[k].start + sorted[k].length <= at) k++;
    const r = sorted[k];
    if (!r || r.start > at) return { data: false, zero: true, len: end - at };
    let stop = r.start + r.length < end ? r.start + r.length : end;
    for (let d = 0; d <= r.depth && d < spans.length; d++) {
      const sp = spans[d];
      if (sp === undefined) continue;
      const b = (at / sp + 1n) * sp;
      if (b < stop) stop = b;
    }
    return {
      data: (r.flags & mapFlags.DATA) !== 0,
      zero: (r.flags & mapFlags.ZERO) !== 0,
      len: stop - at,
    };
  };
  const out: WriteOp[] = [];
  const emit = (from: bigint, to: bigint, kind: "data" | "zero") => {
    if (written) {
      const w = written[written.length - 1];
      if (w && w[1] >= from) {
        if (to > w[1]) w[1] = to;
      } else written.push([from, to]);
    }
    const c0 = from >> cb, c1 = (to + cs - 1n) >> cb;
    let c = c0;
    const last = out[out.length - 1];
    if (last && last.cluster + last.count > c) {
      // The cluster a previous copy already wrote (a chunk smaller than a cluster).
      c = last.cluster + last.count;
      if (c >= c1) return;
    }
    if (last && last.kind === kind && last.cluster + last.count === c) last.count += c1 - c;
    else out.push({ cluster: c, count: c1 - c, kind });
  };
  for (const [a, b] of dirty) {
    for (let it = a; it < b;) {
      const nb0 = b - it < BUF_SIZE / g ? b - it : BUF_SIZE / g;
      let offset = it * g, nb = nb0;
      const end = offset + nb * g;
      while (nb > 0n && offset < size) {
        const st = status(offset, end < size ? end : size);
        let io = st.len;
        if (st.data && io > MAX_IO_BYTES) io = MAX_IO_BYTES;
        io -= io % g;
        let kind: "data" | "zero" = "data";
        if (io < g) io = g;
        else if (!st.data && offset % cs === 0n && io % cs === 0n && st.zero) kind = "zero";
        if (offset + io > size) io = size - offset;
        emit(offset, offset + io, kind);
        offset += io;
        nb -= (io + g - 1n) / g;
      }
      it += nb0;
    }
  }
  return out;
}

/** The base's allocated clusters from a map of the base alone (depth 0 runs). */
export function existingRuns(runs: MapRun[], clusterBits: number): ExistingRun[] {
  const out: ExistingRun[] = [];
  const cb = BigInt(clusterBits);
  for (const r of runs) {
    if (r.depth !== 0 || (r.flags & mapFlags.PRESENT) === 0) continue;
    const cluster = r.start >> cb, count = ((r.start + r.length + (1n << cb) - 1n) >> cb) - cluster;
    let kind: ExistingRun["kind"];
    if (r.flags & mapFlags.COMPRESSED) kind = "compressed";
    else if (r.flags & mapFlags.DATA) kind = "normal";
    else if (r.flags & mapFlags.OFFSET_VALID) kind = "zero_alloc";
    else kind = "zero_plain";
    const host = kind === "normal" || kind === "zero_alloc"
      ? r.offset - (r.start - (cluster << cb))
      : undefined;
    const last = out[out.length - 1];
    if (
      last && last.kind === kind && last.cluster + last.count === cluster &&
      (host === undefined || last.host! + (last.count << cb) === host)
    ) {
      last.count += count;
    } else if (last && last.cluster + last.count > cluster) {
      // A cluster split between two runs (a partial last cluster, or a data
      // cluster whose head is a hole in the file): keep the first; the rest
      // of this run starts that many clusters further on, in the file too.
      const skip = last.cluster + last.count - cluster;
      const extra = count - skip;
      const h = host === undefined ? undefined : host + (skip << cb);
      if (extra > 0n && last.kind === kind && (h === undefined || last.host! + (last.count << cb) === h)) {
        last.count += extra;
      } else if (extra > 0n) {
        out.push({ cluster: last.cluster + last.count, count: extra, kind, host: h });
      }
    } else {
      out.push({ cluster, count, kind, host });
    }
  }
  return out;
}

/**
 * How qcow2_make_empty empties `m`: "complete" (make_completely_empty: v3,
 * no snapshots, bitmaps, encryption or data file, and the L1 table with three
 * clusters inside one refcount block), "discard" (its fallback: every
 * cluster discarded; with snapshots make_empty_discard.ts plans it), or why
 * instar does not (qemu would discard).
 */
export function makeEmptyMethod(m: Qcow2Model): "complete" | "discard" | { refused: string } {
  const cs = m.clusterSize;
  const l1Clusters = (BigInt(m.layout.l1Size) * 8n + cs - 1n) / cs;
  const perBlock = (cs * 8n) / BigInt(m.refcountBits);
  if (m.layout.cryptMethod !== 0 || m.hasDataFileBit || m.extendedL2) {
    return {
      refused: "instar does not empty encrypted overlays, a data file or extended L2 entries (use -d)",
    };
  }
  // Snapshots and bitmaps hold clusters make_completely_empty would drop.
  if (m.version < 3 || 3n + l1Clusters > perBlock || m.nbSnapshots > 0 || m.nbBitmaps > 0) return "discard";
  return "complete";
}

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

/** Zero writes over [from, from+len), split so no write is over 1 MiB. */
function zeroes(from: bigint, len: bigint): Patch[] {
  const out: Patch[] = [];
  const step = 1n << 20n;
  for (let at = from; at < from + len; at += step) {
    const n = from + len - at < step ? from + len - at : step;
    out.push({ kind: "write", offset: at, bytes: new Uint8Array(Number(n)) });
  }
  return out;
}

/** make_completely_empty's steps for `m` in a file of `fileSize` bytes. */
export function planMakeEmpty(m: Qcow2Model, fileSize: bigint): FilePlan[] {
  const cs = m.clusterSize;
  const l1Size = BigInt(m.layout.l1Size);
  const l1Clusters = (l1Size * 8n + cs - 1n) / cs;
  const incompat = m.incompatibleFeatures;
  const newEnd = (3n + l1Clusters) * cs;
  const big = fileSize > newEnd ? fileSize : newEnd;
  const steps: FilePlan[] = [];
  const push = (patches: Patch[], size = big) => {
    for (let i = 0; i === 0 || i < patches.length; i += MAX_PATCHES) {
      steps.push({ patches: patches.slice(i, i + MAX_PATCHES), fileSize: size });
    }
  };
  // qcow2_mark_dirty.
  push([{ kind: "write", offset: 72n, bytes: u64(incompat | 1n) }]);
  // The L1 table, then the clusters for the new reftable, refblock and L1.
  // Where the two ranges overlap one write covers both.
  const l1From = m.layout.l1TableOffset, l1To = l1From + l1Clusters * cs;
  const areaFrom = cs, areaTo = cs + (2n + l1Clusters) * cs;
  if (l1To <= areaFrom || l1From >= areaTo) {
    push(zeroes(l1From, l1To - l1From));
    push(zeroes(areaFrom, areaTo - areaFrom));
  } else {
    const from = l1From < areaFrom ? l1From : areaFrom, to = l1To > areaTo ? l1To : areaTo;
    push(zeroes(from, to - from));
  }
  // Header: l1_table_offset, refcount_table_offset, refcount_table_clusters.
  const f = new Uint8Array(20);
  const dv = new DataView(f.buffer);
  dv.setBigUint64(0, 3n * cs);
  dv.setBigUint64(8, cs);
  dv.setUint32(16, 1);
  push([{ kind: "write", offset: 40n, bytes: f }]);
  // The first refcount block in the table.
  push([{ kind: "write", offset: cs, bytes: u64(2n * cs) }]);
  // qcow2_alloc_clusters(3 clusters + the L1 table): clusters 0.. counted 1.
  const n = 3n + l1Clusters;
  const bits = m.refcountBits;
  const block = new Uint8Array(Number(cs));
  const bdv = new DataView(block.buffer);
  for (let i = 0; i < Number(n); i++) {
    if (bits < 8) {
      const per = 8 / bits;
      block[Math.floor(i / per)] |= 1 << ((i % per) * bits);
    } else if (bits === 8) block[i] = 1;
    else if (bits === 16) bdv.setUint16(i * 2, 1);
    else if (bits === 32) bdv.setUint32(i * 4, 1);
    else bdv.setBigUint64(i * 8, 1n);
  }
  // Only the counted entries: the rest of the block is already zero.
  const used = Math.ceil((Number(n) * bits) / 8);
  push([{ kind: "write", offset: 2n * cs, bytes: block.slice(0, used) }]);
  // qcow2_mark_clean, then the file cut.
  push([{ kind: "write", offset: 72n, bytes: u64(incompat & ~1n) }]);
  push([], newEnd);
  return steps;
}
