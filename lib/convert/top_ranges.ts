// `convert -n -B BACKING`: qemu-img creates no target, so the backing file's
// name is never used (not even opened), but it sets target_has_backing, and
// convert_iteration_sectors then asks bdrv_block_status_above(src, its
// backing file): only what the source's top layer allocates is written
// (data as data, zeroes as write-zeroes), the rest of the target is left as
// it was. One exception: a run the top leaves unallocated that *starts* at or
// past the backing file's end reads as zeroes from the top itself
// (bdrv_co_block_status adds BDRV_BLOCK_ZERO there) and is written as
// zeroes; such runs end at the top's next allocated cluster or L2 table
// boundary (qcow2_get_host_offset answers one L2 slice), so a run that begins
// inside the backing file and reaches past its end is left alone whole. Pure: the byte ranges of the source the command writes, from the map
// guest's runs of the source chain.
import { mapFlags } from "../abi/spec.ts";
import type { WriteOp } from "../formats/qcow2/write_plan.ts";

/** One map extent (start, length, flags, depth in the chain; validated by the caller). */
export interface TopRun {
  start: bigint;
  length: bigint;
  flags: number;
  depth: number;
}

/**
 * The ranges [from, to) of a disk of `size` bytes that the source's top
 * layer decides: what it allocates (data or zeroes), and its unallocated
 * runs (split at multiples of `span`, its L2 table's reach) that start at or
 * past `backingLength`. Ascending and merged.
 */
export function topRanges(
  runs: TopRun[],
  size: bigint,
  backingLength: bigint,
  span: bigint,
): [bigint, bigint][] {
  const out: [bigint, bigint][] = [];
  const add = (from: bigint, to: bigint) => {
    if (to > size) to = size;
    if (to <= from) return;
    const last = out[out.length - 1];
    if (last && last[1] >= from) {
      if (to > last[1]) last[1] = to;
    } else out.push([from, to]);
  };
  const sorted = [...runs].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  /** The top's unallocated [from, to), piece by piece as its block status answers. */
  const gap = (from: bigint, to: bigint) => {
    for (let at = from; at < to;) {
      const next = (at / span + 1n) * span < to ? (at / span + 1n) * span : to;
      if (at >= backingLength) add(at, next);
      at = next;
    }
  };
  let pos = 0n;
  for (const r of sorted) {
    if (r.depth !== 0 || (r.flags & mapFlags.PRESENT) === 0) continue;
    if (r.start > pos) gap(pos, r.start);
    add(r.start, r.start + r.length);
    if (r.start + r.length > pos) pos = r.start + r.length;
  }
  if (pos < size) gap(pos, size);
  return out;
}

/**
 * The target-cluster writes (`ops`, covering the disk) restricted to the top's
 * `ranges`: clusters inside a range are kept, clusters outside all dropped.
 * A cluster only partly inside (qemu writes just that part, the target keeps
 * the rest) is returned as `partial` for the caller to refuse: the in-place
 * writer copies whole clusters.
 */
export function restrictOps(
  ops: WriteOp[],
  ranges: [bigint, bigint][],
  clusterBits: number,
  size: bigint,
): { ops: WriteOp[]; partial?: bigint } {
  const cb = BigInt(clusterBits);
  const cs = 1n << cb;
  const out: WriteOp[] = [];
  const keep: [bigint, bigint][] = [];
  for (const [from, to] of ranges) {
    const end = to === size ? ((to + cs - 1n) >> cb) << cb : to;
    if (from % cs !== 0n) return { ops: [], partial: from >> cb };
    if (end % cs !== 0n) return { ops: [], partial: end >> cb };
    keep.push([from >> cb, end >> cb]);
  }
  let k = 0;
  for (const op of ops) {
    const opEnd = op.cluster + op.count;
    while (k < keep.length && keep[k][1] <= op.cluster) k++;
    for (let j = k; j < keep.length && keep[j][0] < opEnd; j++) {
      const a = keep[j][0] > op.cluster ? keep[j][0] : op.cluster;
      const b = keep[j][1] < opEnd ? keep[j][1] : opEnd;
      if (b > a) out.push({ cluster: a, count: b - a, kind: op.kind });
    }
  }
  return { ops: out };
}

/**
 * restrictOps where partly covered clusters are written too: each becomes a
 * "data" op of its own, and `pieces` maps it to the byte ranges of it the
 * top decides (qemu writes only those, data or zeroes). The caller writes
 * them in place into a target cluster that already holds data (qemu's
 * writes there, zeroes included, go in place) and refuses any other kind.
 */
export function restrictOpsWithPieces(
  ops: WriteOp[],
  ranges: [bigint, bigint][],
  clusterBits: number,
  size: bigint,
): { ops: WriteOp[]; pieces: Map<bigint, [bigint, bigint][]> } {
  const cb = BigInt(clusterBits);
  const cs = 1n << cb;
  const pieces = new Map<bigint, [bigint, bigint][]>();
  const whole: [bigint, bigint][] = [];
  const addWhole = (lo: bigint, hi: bigint) => {
    const last = whole[whole.length - 1];
    if (last && last[1] === lo) last[1] = hi;
    else whole.push([lo, hi]);
  };
  for (const [from, to] of ranges) {
    if (to <= from) continue;
    const end = to === size ? ((to + cs - 1n) >> cb) << cb : to;
    const first = from >> cb, last = (end - 1n) >> cb;
    const partOf = (c: bigint): [bigint, bigint] | undefined => {
      const lo = from > c << cb ? from : c << cb, hi = end < (c + 1n) << cb ? end : (c + 1n) << cb;
      return hi - lo === cs ? undefined : [lo, hi > size ? size : hi];
    };
    const head = partOf(first), tail = first === last ? head : partOf(last);
    for (const [c, p] of [[first, head], [last, tail]] as const) {
      if (!p || (c === last && first === last && pieces.get(c)?.includes(p))) continue;
      const list = pieces.get(c) ?? [];
      list.push(p);
      pieces.set(c, list);
    }
    const wFirst = head ? first + 1n : first, wLast = tail ? last - 1n : last;
    if (wLast >= wFirst) addWhole(wFirst << cb, (wLast + 1n) << cb);
  }
  // A cluster with a piece is written by its pieces alone.
  const kept = restrictOps(ops, whole, clusterBits, size).ops;
  const out: WriteOp[] = [...kept];
  for (const c of pieces.keys()) out.push({ cluster: c, count: 1n, kind: "data" });
  out.sort((x, y) => (x.cluster < y.cluster ? -1 : x.cluster > y.cluster ? 1 : 0));
  // Whole ranges and pieces can meet in one cluster only through pieces.
  for (let i = 1; i < out.length; i++) {
    if (out[i].cluster < out[i - 1].cluster + out[i - 1].count) throw new Error("overlapping cluster writes");
  }
  return { ops: out, pieces };
}
