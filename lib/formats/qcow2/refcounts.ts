// qemu's refcount bookkeeping (block/qcow2-refcount.c), replayed in memory
// so a planner leaves the layout qemu-img leaves: the first-fit search from
// the free-cluster hint (alloc_clusters_noref), update_refcount with its
// -EAGAIN restart when a refcount block had to be hooked up
// (alloc_refcount_block), qcow2_alloc_clusters_at, and qcow2_refcount_area,
// which lays out new self-describing refcount blocks and a new refcount
// table past the end of the image and switches to them.
//
// The create planner starts it from qemu's empty image, the resize planner
// from what the resize_scan guest reported (the counts as runs). Counts are
// kept in refcount blocks encoded exactly as on disk (every width 1..64,
// sub-byte widths LSB-first, seed 002 bug C), materialized only for the
// blocks an operation touches, so writing a block is a copy and a large
// preallocation costs one pass over the clusters it adds.
//
// The model does no I/O. Callers learn of the two events that write outside
// the blocks (a new block, a moved table) through a listener, and take the
// dirty blocks and the table entries to hook up when they write a step.
import { refcountMax, refcountMetadata } from "./encode.ts";

export interface RefRun {
  start: bigint; // first cluster index
  count: bigint;
  refcount: bigint; // > 0
}

/** Why the replay cannot go on: qemu's EFBIG, a count out of range, or a corrupt start. */
export class RefcountError extends Error {
  constructor(readonly kind: "too_big" | "range" | "corrupt", message: string) {
    super(message);
    this.name = "RefcountError";
  }
}

/** qemu's -EAGAIN from alloc_refcount_block: restart the cluster search. */
class Again {}

/** qemu's QCOW_MAX_REFTABLE_SIZE (8 MiB), which qemu compares with entry counts. */
export const MAX_REFTABLE = 8n * 1024n * 1024n;
/** qemu's QCOW_MAX_CLUSTER_OFFSET: host offsets fit bits 9..55. */
export const MAX_CLUSTER_OFFSET = (1n << 56n) - 1n;
const INT64_MAX = (1n << 63n) - 1n;

export interface RefcountStart {
  clusterBits: number;
  refcountOrder: number;
  /** Refcount table: byte offset and length in clusters. */
  tableOffset: bigint;
  tableClusters: bigint;
  /** Table index -> refcount block byte offset (entries with an offset only). */
  table: Map<bigint, bigint>;
  /** Non-zero counts of existing blocks, ascending and disjoint, inside blocks of `table`. */
  runs: RefRun[];
  /** Table indices whose block is new (all zero) rather than described by `runs`. */
  created?: Iterable<bigint>;
}

/** A refcount table qcow2_refcount_area has just replaced. */
export interface TableMove {
  oldOffset: bigint;
  oldClusters: bigint;
  /** The old table's entries as it is dropped (the Map is not changed again). */
  oldEntries: Map<bigint, bigint>;
  /** Entries hooked into the old table since the last takeHookups(): qemu
   * wrote each as its block was made, so they are in the old table too. */
  oldHookups: bigint[];
}

export interface RefcountListener {
  /** A new refcount block for table index `t` was placed (at model.table.get(t)). */
  blockCreated?(t: bigint): void;
  /**
   * qcow2_refcount_area wrote its blocks and the new table and switched the
   * header to it; called before the old table's clusters are freed.
   */
  tableMoved?(move: TableMove): void;
}

/** Reads entry i of an encoded block (one width per model). */
type Reader = (b: Uint8Array, dv: DataView, i: number) => number;
type Writer = (b: Uint8Array, dv: DataView, i: number, v: number) => void;

function accessors(bits: number): [Reader, Writer] {
  switch (bits) {
    case 1:
    case 2:
    case 4: {
      const perByteLog = Math.log2(8 / bits), mask = (1 << bits) - 1;
      return [
        (b, _dv, i) => (b[i >> perByteLog] >> ((i & ((1 << perByteLog) - 1)) * bits)) & mask,
        (b, _dv, i, v) => {
          const at = i >> perByteLog, shift = (i & ((1 << perByteLog) - 1)) * bits;
          b[at] = (b[at] & ~(mask << shift)) | (v << shift);
        },
      ];
    }
    case 8:
      return [(b, _dv, i) => b[i], (b, _dv, i, v) => (b[i] = v)];
    case 16:
      return [(_b, dv, i) => dv.getUint16(i * 2), (_b, dv, i, v) => dv.setUint16(i * 2, v)];
    case 32:
      return [(_b, dv, i) => dv.getUint32(i * 4), (_b, dv, i, v) => dv.setUint32(i * 4, v)];
    default:
      throw new RangeError(`no numeric accessor for ${bits}-bit refcounts`);
  }
}

interface Block {
  bytes: Uint8Array;
  dv: DataView;
}

export class RefcountModel {
  readonly cb: bigint;
  readonly cs: bigint;
  readonly bits: number;
  readonly rbBits: bigint;
  readonly perBlock: bigint;
  readonly max: bigint;
  tableOffset: bigint;
  tableClusters: bigint;
  /** Table index -> block byte offset. Replaced (not changed) when the table moves. */
  table: Map<bigint, bigint>;
  /** Entries hooked into the current table since takeHookups(). */
  readonly hookups = new Set<bigint>();
  /** Blocks changed since takeDirty(). */
  readonly dirty = new Set<bigint>();
  /** Blocks placed by this model (their counts start at zero). */
  readonly created: Set<bigint>;
  /** qemu's free_cluster_index. */
  freeIndex = 0n;
  /**
   * When set, the clusters a decrement takes to zero, as [start, end) runs
   * in the order they were freed: qemu discards those when the free's
   * discard type passes through (a shrink's QCOW2_DISCARD_ALWAYS).
   */
  freed?: [bigint, bigint][];
  listener: RefcountListener = {};
  private readonly runs: RefRun[];
  private readonly blocks = new Map<bigint, Block>();
  private readonly read?: Reader;
  private readonly write?: Writer;

  constructor(s: RefcountStart) {
    this.cb = BigInt(s.clusterBits);
    this.cs = 1n << this.cb;
    this.bits = 1 << s.refcountOrder;
    this.rbBits = this.cb + 3n - BigInt(s.refcountOrder);
    this.perBlock = 1n << this.rbBits;
    this.max = refcountMax(this.bits);
    this.tableOffset = s.tableOffset;
    this.tableClusters = s.tableClusters;
    this.table = new Map(s.table);
    this.runs = s.runs;
    this.created = new Set(s.created ?? []);
    if (this.bits <= 32) [this.read, this.write] = accessors(this.bits);
  }

  /** Entries the current table holds. */
  get tableEntries(): bigint {
    return this.tableClusters << (this.cb - 3n);
  }

  /** Count of cluster c by the runs (blocks not materialized, not created). */
  private base(c: bigint): bigint {
    const runs = this.runs;
    let lo = 0, hi = runs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = runs[mid];
      if (c < r.start) hi = mid - 1;
      else if (c >= r.start + r.count) lo = mid + 1;
      else return r.refcount;
    }
    return 0n;
  }

  /** Index of the first run ending after cluster c. */
  private runAfter(c: bigint): number {
    let a = 0, b = this.runs.length;
    while (a < b) {
      const m = (a + b) >> 1;
      if (this.runs[m].start + this.runs[m].count <= c) a = m + 1;
      else b = m;
    }
    return a;
  }

  private getIn(b: Block, i: number): bigint {
    return this.read ? BigInt(this.read(b.bytes, b.dv, i)) : b.dv.getBigUint64(i * 8);
  }

  private setIn(b: Block, i: number, v: bigint) {
    if (this.write) this.write(b.bytes, b.dv, i, Number(v));
    else b.dv.setBigUint64(i * 8, v);
  }

  /** Block t's counts as encoded bytes, filled from the runs on first use. */
  private block(t: bigint): Block {
    let b = this.blocks.get(t);
    if (b) return b;
    const bytes = new Uint8Array(Number(this.cs));
    b = { bytes, dv: new DataView(bytes.buffer) };
    if (!this.created.has(t)) {
      const lo = t << this.rbBits, hi = lo + this.perBlock;
      for (let k = this.runAfter(lo); k < this.runs.length && this.runs[k].start < hi; k++) {
        const r = this.runs[k];
        const s = r.start > lo ? r.start : lo, e = r.start + r.count < hi ? r.start + r.count : hi;
        for (let c = s; c < e; c++) this.setIn(b, Number(c - lo), r.refcount);
      }
    }
    this.blocks.set(t, b);
    return b;
  }

  /** qcow2_get_refcount: 0 for clusters no refcount block describes. */
  get(c: bigint): bigint {
    const t = c >> this.rbBits;
    if (!this.table.has(t)) return 0n;
    const b = this.blocks.get(t);
    if (b) return this.getIn(b, Number(c - (t << this.rbBits)));
    return this.created.has(t) ? 0n : this.base(c);
  }

  /** Sets one count directly (no allocation, no hint); marks the block dirty. */
  set(c: bigint, v: bigint) {
    const t = c >> this.rbBits;
    this.setIn(this.block(t), Number(c - (t << this.rbBits)), v);
    this.dirty.add(t);
  }

  /** Whether clusters [c, c+n) all have refcount 0 (qcow2_change_refcount_order's empty refblock). */
  allZero(c: bigint, n: bigint): boolean {
    return this.freeRun(c, n) === n;
  }

  /** How many clusters from c on (at most n) have refcount 0. */
  private freeRun(c: bigint, n: bigint): bigint {
    let got = 0n;
    while (got < n) {
      const at = c + got, t = at >> this.rbBits;
      const lo = t << this.rbBits, hi = lo + this.perBlock;
      const want = at + (n - got) < hi ? at + (n - got) : hi;
      let stop = want; // first used cluster in [at, want), or want
      if (this.table.has(t)) {
        const b = this.blocks.get(t);
        if (b) {
          const i0 = Number(at - lo), i1 = Number(want - lo);
          let i = i0;
          if (this.read) { while (i < i1 && this.read(b.bytes, b.dv, i) === 0) i++; }
          else while (i < i1 && b.dv.getBigUint64(i * 8) === 0n) i++;
          stop = lo + BigInt(i);
        } else if (!this.created.has(t)) {
          const k = this.runAfter(at);
          if (k < this.runs.length && this.runs[k].start < want) {
            stop = this.runs[k].start > at ? this.runs[k].start : at;
          }
        }
      }
      got += stop - at;
      if (stop < want) break;
    }
    return got;
  }

  /** alloc_clusters_noref: the first run of n free clusters from the hint; the hint moves past it. */
  allocNoref(n: bigint, max: bigint): bigint {
    let p = this.freeIndex;
    for (;;) {
      const r = this.freeRun(p, n);
      if (r === n) break;
      p += r + 1n; // qemu steps over the used cluster and starts again
    }
    this.freeIndex = p + n;
    if (this.freeIndex > 0n && this.freeIndex - 1n > (max >> this.cb)) {
      throw new RefcountError("too_big", "File too large");
    }
    return p;
  }

  /** qcow2_alloc_clusters: first fit, retried while a refcount block was hooked up. */
  alloc(n: bigint): bigint {
    for (;;) {
      const at = this.allocNoref(n, MAX_CLUSTER_OFFSET);
      try {
        this.update(at, n, 1n);
        return at;
      } catch (e) {
        if (!(e instanceof Again)) throw e;
      }
    }
  }

  /** qcow2_alloc_clusters_at: as many of the n clusters from `at` as are free; how many. */
  allocAt(at: bigint, n: bigint): bigint {
    if (n === 0n) return 0n;
    for (;;) {
      const i = this.freeRun(at, n);
      try {
        this.update(at, i, 1n);
        return i;
      } catch (e) {
        if (!(e instanceof Again)) throw e;
      }
    }
  }

  /** update_refcount over clusters [start, start+n) by `addend` (+1 or -1). */
  update(start: bigint, n: bigint, addend: 1n | -1n) {
    const end = start + n;
    const undo = (upTo: bigint) => {
      if (upTo > start) this.update(start, upTo - start, addend === 1n ? -1n : 1n);
    };
    for (let c = start; c < end;) {
      const t = c >> this.rbBits;
      // A cluster without a refcount block has refcount 0: dropping a
      // reference to it is an underflow (an inconsistent start), not a
      // reason to allocate a block and retry.
      if (addend < 0n && !this.table.has(t)) {
        undo(c);
        throw new RefcountError("range", `Refcount of cluster ${c} would leave the range 0..${this.max}`);
      }
      try {
        this.allocBlock(c);
      } catch (e) {
        if (e instanceof Again && this.freeIndex > start) this.freeIndex = start;
        // qemu undoes the clusters it already changed, then fails.
        undo(c);
        throw e;
      }
      const b = this.block(t), lo = t << this.rbBits;
      const segEnd = end < lo + this.perBlock ? end : lo + this.perBlock;
      const i0 = Number(c - lo), i1 = Number(segEnd - lo);
      let bad = -1, firstZero = -1;
      const freed = addend < 0n ? this.freed : undefined;
      if (this.read) {
        const add = Number(addend), max = Number(this.max);
        for (let i = i0; i < i1; i++) {
          const v = this.read(b.bytes, b.dv, i) + add;
          if (v < 0 || v > max) {
            bad = i;
            break;
          }
          if (v === 0) {
            if (firstZero < 0) firstZero = i;
            if (freed) this.noteFreed(lo + BigInt(i));
          }
          this.write!(b.bytes, b.dv, i, v);
        }
      } else {
        for (let i = i0; i < i1; i++) {
          const v = b.dv.getBigUint64(i * 8) + addend;
          if (v < 0n || v > this.max) {
            bad = i;
            break;
          }
          if (v === 0n) {
            if (firstZero < 0) firstZero = i;
            if (freed) this.noteFreed(lo + BigInt(i));
          }
          b.dv.setBigUint64(i * 8, v);
        }
      }
      this.dirty.add(t);
      if (firstZero >= 0 && lo + BigInt(firstZero) < this.freeIndex) this.freeIndex = lo + BigInt(firstZero);
      if (bad >= 0) {
        undo(lo + BigInt(bad));
        throw new RefcountError(
          "range",
          `Refcount of cluster ${lo + BigInt(bad)} would leave the range 0..${this.max}`,
        );
      }
      c = segEnd;
    }
  }

  /** Adds cluster c to the freed runs (merged with the last run when it follows it). */
  noteFreed(c: bigint) {
    const runs = this.freed!;
    const last = runs[runs.length - 1];
    if (last && last[1] === c) last[1] = c + 1n;
    else runs.push([c, c + 1n]);
  }

  /** alloc_refcount_block for cluster c: nothing when its block exists, else place one and throw Again. */
  private allocBlock(c: bigint) {
    const t = c >> this.rbBits;
    if (this.table.has(t)) return;
    const block = this.allocNoref(1n, INT64_MAX);
    if (block === 0n) {
      throw new RefcountError("corrupt", "Preventing invalid allocation of refcount block at offset 0");
    }
    if (block >> this.rbBits === t) {
      // The block describes itself.
      this.created.add(t);
      this.blocks.delete(t);
      this.table.set(t, block << this.cb);
      this.set(block, 1n);
    } else {
      // Described elsewhere: this can recurse (at most twice in qemu's words).
      this.update(block, 1n, 1n);
      this.created.add(t);
      this.blocks.delete(t);
      this.table.set(t, block << this.cb);
      this.dirty.add(t);
    }
    this.listener.blockCreated?.(t);
    if (t < this.tableEntries) {
      this.hookups.add(t);
      throw new Again();
    }
    // The table is full: blocks describing everything so far and a bigger
    // table go past the last cluster counted (qcow2_refcount_area).
    const top = c + 1n > block + 1n ? c + 1n : block + 1n;
    const used = (top + this.perBlock - 1n) >> this.rbBits;
    this.refcountArea(used << this.rbBits, 0n, false, t);
    throw new Again();
  }

  /**
   * qcow2_refcount_area(start, additional, exact, index, block): refcount
   * blocks and a new table from cluster `start` on (which must be past every
   * used cluster), covering them and `extra` clusters after them; the
   * table entry `newIndex` (when given) already names a placed block.
   * Returns the first cluster after the new structures.
   */
  refcountArea(start: bigint, extra: bigint, exact: boolean, newIndex?: bigint): bigint {
    const total = refcountMetadata(start + extra, this.cs, this.bits, !exact).blocks;
    if (total > MAX_REFTABLE) throw new RefcountError("too_big", "File too large");
    const areaIndex = start >> this.rbBits;
    const perTableCluster = this.cs / 8n;
    let size = exact ? total : total + (total + 1n) / 2n;
    size = ((size + perTableCluster - 1n) / perTableCluster) * perTableCluster;
    const tableClusters = size / perTableCluster;
    if (size > MAX_REFTABLE) throw new RefcountError("too_big", "File too large");
    // qemu copies the old entries up to the last used one, or only the
    // ones that fit when the table shrinks; either way those below `size`.
    const table = new Map<bigint, bigint>();
    for (const [i, v] of this.table) if (i < size) table.set(i, v);
    if (newIndex !== undefined && newIndex >= total) {
      throw new RefcountError("corrupt", "refcount area does not cover the new refcount block");
    }
    let missing = 0n;
    for (let i = areaIndex; i < total; i++) if (!table.has(i)) missing++;
    const tableStart = start + missing;
    const end = tableStart + tableClusters;
    const old: TableMove = {
      oldOffset: this.tableOffset,
      oldClusters: this.tableClusters,
      oldEntries: this.table,
      oldHookups: this.takeHookups(),
    };
    this.table = table;
    let at = start;
    for (let i = areaIndex; i < total; i++) {
      if (!table.has(i)) {
        table.set(i, at << this.cb);
        this.created.add(i);
        this.blocks.delete(i);
        this.dirty.add(i);
        at++;
        this.listener.blockCreated?.(i);
      }
      const first = i << this.rbBits;
      if (first < end) {
        const from = first < start ? start : first;
        const to = end < first + this.perBlock ? end : first + this.perBlock;
        for (let c = from; c < to; c++) {
          // qemu asserts these are free (the caller promised empty space).
          if (this.get(c) !== 0n) throw new RefcountError("corrupt", `refcount area over used cluster ${c}`);
          this.set(c, 1n);
        }
      }
    }
    this.tableOffset = tableStart << this.cb;
    this.tableClusters = tableClusters;
    this.listener.tableMoved?.(old);
    // The old table's clusters are freed (their bytes stay in the file).
    if (old.oldClusters > 0n) this.update(old.oldOffset >> this.cb, old.oldClusters, -1n);
    return end;
  }

  /** Block t as it stands, encoded (a copy). */
  blockBytes(t: bigint): Uint8Array {
    return this.block(t).bytes.slice();
  }

  /** The current table, encoded, tableClusters long. */
  tableBytes(entries: Map<bigint, bigint> = this.table, clusters: bigint = this.tableClusters): Uint8Array {
    const b = new Uint8Array(Number(clusters * this.cs));
    const dv = new DataView(b.buffer);
    const n = clusters << (this.cb - 3n);
    for (const [i, v] of entries) if (i < n) dv.setBigUint64(Number(i) * 8, v);
    return b;
  }

  /** The dirty blocks `which` selects (all by default), ascending by index; they stop being dirty. */
  takeDirty(which: (t: bigint) => boolean = () => true): bigint[] {
    const out = [...this.dirty].filter(which).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const t of out) this.dirty.delete(t);
    return out.filter((t) => this.table.has(t));
  }

  /** Table indices to write into the current table; they stop being pending. */
  takeHookups(): bigint[] {
    const out = [...this.hookups].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    this.hookups.clear();
    return out.filter((t) => this.table.has(t));
  }

  /** Whether block t counts nothing but (perhaps) itself. */
  unused(t: bigint): boolean {
    const own = this.table.get(t)! >> this.cb;
    const lo = t << this.rbBits, hi = lo + this.perBlock;
    for (let c = lo; c < hi;) {
      const free = this.freeRun(c, hi - c);
      c += free;
      if (c >= hi) break;
      if (c !== own) return false;
      c++;
    }
    return true;
  }

  /** Drops block t from the table (qcow2_shrink_reftable); its counts are forgotten. */
  drop(t: bigint) {
    this.table.delete(t);
    this.blocks.delete(t);
    this.dirty.delete(t);
  }

  /** qcow2_get_last_cluster: the last cluster below `limit` with a non-zero count, or -1. */
  lastUsed(limit: bigint): bigint {
    if (limit <= 0n) return -1n;
    const indices = [...this.table.keys()].filter((t) => t << this.rbBits < limit)
      .sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
    for (const t of indices) {
      const lo = t << this.rbBits;
      const hi = lo + this.perBlock < limit ? lo + this.perBlock : limit;
      const b = this.blocks.get(t);
      if (b) {
        for (let i = Number(hi - lo) - 1; i >= 0; i--) if (this.getIn(b, i) !== 0n) return lo + BigInt(i);
      } else if (!this.created.has(t)) {
        // The last run starting below hi: it either straddles hi or ends by it.
        const j = this.runAfter(hi);
        if (j < this.runs.length && this.runs[j].start < hi) return hi - 1n;
        if (j > 0 && this.runs[j - 1].start + this.runs[j - 1].count > lo) {
          return this.runs[j - 1].start + this.runs[j - 1].count - 1n;
        }
      }
    }
    return -1n;
  }
}
