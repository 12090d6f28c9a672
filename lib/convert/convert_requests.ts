// qemu-img convert's write requests, in its order (qemu-img.c 7.2,
// without -W and -c): convert_iteration_sectors walks the source by block
// status (a run ends where its status, its layer or its host offsets change,
// where a layer's driver ends its answer: a qcow2 L2 table, a vmdk grain or
// extent, a vpc block holding data; and is shortened to the source's
// alignment), a data run (and with -S 0 a zero run too) is written in
// buffers of buf_sectors from its start, and convert_co_write cuts each
// data buffer into is_allocated_sectors_min pieces: data pieces are
// written, zero pieces (and zero runs) write-zeroed, or skipped when the
// target is known to read as zeroes (--target-is-zero). Pure: the block
// status comes from the map guest, the zero sectors from the rebase_diff
// guest, both as runs; the result is bounded by `max` (undefined past it).

import { firstEndingAfter } from "./nb_requests.ts";
import type { StatusLayer } from "../formats/types.ts";

/** One block-status run of the source (the map guest's extents). */
export interface StatusRun {
  start: bigint;
  length: bigint;
  zero: boolean;
  /** The chain layer that answered (0: the top). */
  depth: number;
}

export interface RequestInput {
  /** The source's virtual size in bytes. */
  size: bigint;
  /** Runs tiling [0, size), ascending. */
  runs: StatusRun[];
  /** Where each chain layer's answers end (top first; missing: nowhere). */
  layers: StatusLayer[];
  /** src_alignment in bytes: the top's bdrv_get_info cluster size, at least 512. */
  srcAlign: bigint;
  /** -S in bytes (a multiple of 512; 0: everything written as data). */
  minSparse: bigint;
  /** buf_sectors in bytes. */
  bufBytes: bigint;
  /** Byte ranges of the source's non-zero sectors, ascending (needed when minSparse > 0). */
  nonZero: [bigint, bigint][];
  targetIsZero: boolean;
  /** The most requests returned. */
  max: number;
  /**
   * The target's cluster size: write-zeroes requests meeting at a multiple
   * of it are returned as one (they zero the same clusters, each whole or in
   * part, as the one would: request_ops.ts), so a vmdk's unallocated grains
   * do not count one request each. Omitted: none are joined.
   */
  joinZeroesAt?: bigint;
}

/** Where an answer of layer `l` starting at `at` ends at the latest (undefined: no limit). */
function layerLimit(l: StatusLayer, at: bigint): bigint | undefined {
  let lo = 0, hi = l.extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (l.extents[mid].start <= at) lo = mid + 1;
    else hi = mid;
  }
  if (lo === 0) return undefined;
  const e = l.extents[lo - 1];
  let lim = lo < l.extents.length ? l.extents[lo].start : undefined;
  if (e.span > 0n) {
    const s = e.start + ((at - e.start) / e.span + 1n) * e.span;
    if (lim === undefined || s < lim) lim = s;
  }
  return lim;
}

/** One write request: bytes [start, end) written with data or write-zeroed. */
export interface Request {
  start: bigint;
  end: bigint;
  kind: "data" | "zero";
}

/** BDRV_REQUEST_MAX_SECTORS: INT_MAX >> 9. */
const REQUEST_MAX_SECTORS = 0x7fffffffn >> 9n;

export function convertRequests(x: RequestInput): Request[] | undefined {
  const total = (x.size + 511n) >> 9n;
  const out: Request[] = [];
  const align = x.srcAlign >> 9n > 0n ? x.srcAlign >> 9n : 1n;
  const buf = x.bufBytes >> 9n;
  const min = x.minSparse >> 9n;
  let pow = 1n; // s->alignment: pow2floor(min_sparse) (a qcow2 target's request alignment is 1)
  while (pow * 2n <= min) pow *= 2n;
  let runIdx = 0;
  let nextStatus = 0n, zero = false;
  const push = (s: bigint, n: bigint, kind: "data" | "zero") => {
    if (kind === "zero" && x.targetIsZero) return true;
    const end = (s + n) << 9n;
    const start = s << 9n, prev = out[out.length - 1];
    if (
      kind === "zero" && x.joinZeroesAt && prev?.kind === "zero" && prev.end === start &&
      start % x.joinZeroesAt === 0n
    ) {
      prev.end = end > x.size ? x.size : end;
      return true;
    }
    out.push({ start, end: end > x.size ? x.size : end, kind });
    return out.length <= x.max;
  };
  for (let s = 0n; s < total;) {
    let n = total - s < REQUEST_MAX_SECTORS ? total - s : REQUEST_MAX_SECTORS;
    if (nextStatus <= s) {
      const at = s << 9n;
      while (runIdx < x.runs.length && x.runs[runIdx].start + x.runs[runIdx].length <= at) runIdx++;
      const r = x.runs[runIdx];
      if (!r || r.start > at) return undefined;
      let end = r.start + r.length;
      if (end > at + (n << 9n)) end = at + (n << 9n);
      // Each layer asked (those above the one that answered, and it) answers up to its limit.
      for (let d = 0; d <= r.depth && d < x.layers.length; d++) {
        const l = x.layers[d];
        if (l.dataOnly && (d !== r.depth || r.zero)) continue;
        const lim = layerLimit(l, at);
        if (lim !== undefined && end > lim) end = lim;
      }
      n = (end - at + 511n) >> 9n;
      const tail = (s + n) % align;
      if (n > tail) n -= tail;
      zero = r.zero;
      nextStatus = s + n;
    }
    if (n > nextStatus - s) n = nextStatus - s;
    if ((!zero || min === 0n) && n > buf) n = buf;
    if (zero) {
      if (!push(s, n, min === 0n ? "data" : "zero")) return undefined;
    } else if (min === 0n) {
      if (!push(s, n, "data")) return undefined;
    } else {
      for (let p = s, left = n; left > 0n;) {
        const [data, k] = allocatedSectorsMin(x.nonZero, p, left, min, pow);
        if (!push(p, k, data ? "data" : "zero")) return undefined;
        p += k;
        left -= k;
      }
    }
    s += n;
  }
  return out;
}

/** Sector s: non-zero, and how many sectors from s (at most n) are alike. */
function sameRun(nonZero: [bigint, bigint][], s: bigint, n: bigint): [boolean, bigint] {
  const at = s << 9n;
  const k = firstEndingAfter(nonZero, at);
  const data = k < nonZero.length && nonZero[k][0] <= at;
  const end = data ? nonZero[k][1] : k < nonZero.length ? nonZero[k][0] : (s + n) << 9n;
  const i = ((end + 511n) >> 9n) - s;
  return [data, i < n ? i : n];
}

/** qemu-img's is_allocated_sectors: [data, pnum]. */
function allocatedSectors(
  nonZero: [bigint, bigint][],
  s: bigint,
  n: bigint,
  align: bigint,
): [boolean, bigint] {
  let [data, i] = sameRun(nonZero, s, n);
  if (i === n) return [data, n];
  const tail = (s + i) & (align - 1n);
  if (tail) {
    if (!data && i <= tail) data = true;
    if (data) {
      i += align - tail;
      if (i > n) i = n;
    } else {
      i -= tail;
    }
  }
  return [data, i];
}

/** qemu-img's is_allocated_sectors_min: a data piece takes in zero runs shorter than `min` that follow it. */
function allocatedSectorsMin(
  nonZero: [bigint, bigint][],
  s: bigint,
  n: bigint,
  min: bigint,
  align: bigint,
): [boolean, bigint] {
  if (n < min) min = n;
  const [first, k] = allocatedSectors(nonZero, s, n, align);
  if (!first) return [false, k];
  let used = k, checked = k;
  s += k;
  n -= k;
  while (n > 0n) {
    const [data, p] = allocatedSectors(nonZero, s, n, align);
    s += p;
    n -= p;
    checked += p;
    if (data) used = checked;
    else if (p >= min) break;
  }
  return [true, used];
}
