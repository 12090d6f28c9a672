// `convert -n -B`: which of qemu-img's write requests inside a target
// cluster the source's top layer writes only in part are data writes and
// which write-zeroes. img_convert reads a top data run in buffers of 2 MiB
// from the run's start and, with -S, cuts each buffer by
// is_allocated_sectors_min (zero stretches of at least -S sectors become
// write-zeroes, data ends rounded up to pow2floor(-S) sectors, a short zero
// run before data counts as data); the top's zero runs (and, with -n, its
// unallocated runs past its backing file's end) are write-zeroes. Pure: it
// works on the source's non-zero sectors (the rebase_diff guest's 512-byte
// classification) and the top's data runs (the map guest's).

/** 2 MiB: img_convert's buf_sectors, the most one data request covers. */
const IO_BUF_SIZE = 2n << 20n;

/** One write request qemu-img issues (guest bytes [lo, hi)). */
export interface Request {
  lo: bigint;
  hi: bigint;
  data: boolean;
}

/** Ascending disjoint ranges, touching ones merged. */
export function mergeRanges(ranges: [bigint, bigint][]): [bigint, bigint][] {
  const out: [bigint, bigint][] = [];
  for (const [a, b] of ranges) {
    const last = out[out.length - 1];
    if (last && last[1] >= a) {
      if (b > last[1]) last[1] = b;
    } else out.push([a, b]);
  }
  return out;
}

/** Index of the first of the ascending, disjoint ranges that ends after x. */
export function firstEndingAfter(ranges: [bigint, bigint][], x: bigint): number {
  let lo = 0, hi = ranges.length;
  while (lo < hi) {
    const m = (lo + hi) >> 1;
    if (ranges[m][1] <= x) lo = m + 1;
    else hi = m;
  }
  return lo;
}

/** The requests of the top's data runs, with the sectors that hold non-zero bytes. */
export class TopRequests {
  private readonly align: bigint;
  private readonly min: bigint;
  private readonly cache = new Map<bigint, Request[]>();

  constructor(
    /** The top's data runs (ascending, disjoint; already cut where its block status is). */
    private readonly runs: [bigint, bigint][],
    /** Byte ranges of whole sectors holding non-zero bytes (ascending, merged). */
    private readonly nonZero: [bigint, bigint][],
    /** -S in bytes (> 0). */
    minSparse: bigint,
  ) {
    this.min = minSparse >> 9n > 0n ? minSparse >> 9n : 1n;
    let a = 1n;
    while (a * 2n <= this.min) a *= 2n;
    this.align = a;
  }

  /** Whether sector x is zero, and how many sectors from x (at most n) are alike. */
  private run(x: bigint, n: bigint): [boolean, bigint] {
    const at = x << 9n;
    const k = firstEndingAfter(this.nonZero, at);
    const r = this.nonZero[k];
    if (r && r[0] <= at) {
      const len = (r[1] - at + 511n) >> 9n;
      return [false, len < n ? len : n];
    }
    const len = r ? (r[0] - at) >> 9n : n;
    return [true, len < n ? len : n];
  }

  /** qemu-img's is_allocated_sectors: [data, sectors]. */
  private allocated(x: bigint, n: bigint): [boolean, bigint] {
    let [zero, i] = this.run(x, n);
    if (i === n) return [!zero, n];
    const tail = (x + i) & (this.align - 1n);
    if (tail) {
      if (zero && i <= tail) zero = false;
      if (!zero) {
        i += this.align - tail;
        if (i > n) i = n;
      } else i -= tail;
    }
    return [!zero, i];
  }

  /** qemu-img's is_allocated_sectors_min: [data, sectors]. */
  private allocatedMin(x: bigint, n: bigint): [boolean, bigint] {
    const min = n < this.min ? n : this.min;
    const [d, p] = this.allocated(x, n);
    if (!d) return [false, p];
    let used = p, checked = p;
    x += p, n -= p;
    while (n > 0n) {
      const [d2, p2] = this.allocated(x, n);
      x += p2, n -= p2, checked += p2;
      if (d2) used = checked;
      else if (p2 >= min) break;
    }
    return [true, used];
  }

  /** The requests of the buffer starting at `from` (a run's start plus whole buffers) and ending at `to`. */
  private buffer(from: bigint, to: bigint): Request[] {
    const hit = this.cache.get(from);
    if (hit) return hit;
    const out: Request[] = [];
    const sectors = (to - from + 511n) >> 9n;
    for (let s = 0n; s < sectors;) {
      const [data, n] = this.allocatedMin((from >> 9n) + s, sectors - s);
      const lo = from + (s << 9n);
      let hi = lo + (n << 9n);
      if (hi > to) hi = to;
      out.push({ lo, hi, data });
      s += n;
    }
    this.cache.set(from, out);
    return out;
  }

  /** qemu's requests over [lo, hi) (one piece of a target cluster), in order, cut to it. */
  requests(lo: bigint, hi: bigint): Request[] {
    const out: Request[] = [];
    const push = (r: Request) => {
      const a = r.lo > lo ? r.lo : lo, b = r.hi < hi ? r.hi : hi;
      if (b > a) out.push({ lo: a, hi: b, data: r.data });
    };
    let pos = lo;
    for (let k = firstEndingAfter(this.runs, lo); k < this.runs.length && this.runs[k][0] < hi; k++) {
      const [a, b] = this.runs[k];
      if (a > pos) push({ lo: pos, hi: a, data: false });
      const first = (pos > a ? pos - a : 0n) / IO_BUF_SIZE;
      for (let x = a + first * IO_BUF_SIZE; x < b && x < hi; x += IO_BUF_SIZE) {
        for (const r of this.buffer(x, x + IO_BUF_SIZE < b ? x + IO_BUF_SIZE : b)) push(r);
      }
      pos = b;
    }
    if (hi > pos) push({ lo: pos, hi, data: false });
    return out;
  }
}

/** The top's data runs cut where its block status answers (one L2 table's reach, `span`). */
export function cutAtSpan(runs: [bigint, bigint][], span: bigint): [bigint, bigint][] {
  if (span <= 0n) return runs;
  const out: [bigint, bigint][] = [];
  for (const [a, b] of runs) {
    for (let x = a; x < b;) {
      const next = (x / span + 1n) * span;
      const y = next < b ? next : b;
      out.push([x, y]);
      x = y;
    }
  }
  return out;
}
