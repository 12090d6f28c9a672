// The qcow2 resize planner: a pure function from the metadata the guest's
// resize_scan extracted (header facts, active L1 entries, refcount table,
// refcounts as runs, and for a shrink the clusters the discard frees and the
// L2 entry ranges it clears) plus the new size, to the writes that perform
// qemu 7.2's qcow2_co_truncate (preallocation=off).
//
// To leave the same layout qemu-img leaves, the planner replays qemu's
// allocator on an in-memory refcount model: first-fit cluster search from a
// free-cluster index (alloc_clusters_noref), refcount updates that hook up
// new self-describing refcount blocks and restart the search
// (update_refcount / alloc_refcount_block, the -EAGAIN dance), the L1 growth
// of qcow2_grow_l1_table, the discard/L1 shrink/refcount-table shrink of a
// shrink and the final cut of the file after the last used cluster
// (qcow2_get_last_cluster). Growing the refcount table itself
// (qcow2_refcount_area) is not replayed: such a resize is refused before
// anything is written.
//
// Every refcount width 1..64 goes through encode.ts's setRefcount, which
// packs sub-byte widths LSB-first (seed 002 bug C); the header is patched in
// place (size, L1 fields) so refcount_order and everything else stay as
// they are.
//
// The result is a list of steps, each a FilePlan that planViolation accepts,
// applied in order with a flush after each. The order keeps the image
// consistent after a crash between any two steps (at worst it leaks
// clusters, which `qemu-img check -r leaks` repairs); see docs/resize.md.
import { fail, type FilePlan, ok, type Patch, type PlanResult, planViolation } from "../plan.ts";
import { refcountMax, setRefcount } from "./encode.ts";

export interface RefRun {
  start: bigint; // first cluster index
  count: bigint;
  refcount: bigint; // > 0
}

export interface ByteRange {
  start: bigint;
  count: bigint;
}

/** What the resize_scan guest reported, after record decoding. */
export interface Qcow2ResizeScan {
  clusterBits: number;
  refcountOrder: number;
  extendedL2: boolean;
  /** Current virtual size (header). */
  virtualSize: bigint;
  /** Current length of the image file (host fact, not from the guest). */
  fileSize: bigint;
  l1Offset: bigint;
  l1Size: number;
  /** Non-zero active L1 entries, raw values. */
  l1: Map<number, bigint>;
  reftableOffset: bigint;
  reftableClusters: number;
  /** Refcount-table entries with an offset, raw values. */
  reftable: Map<number, bigint>;
  /** Non-zero refcounts of the clusters the refcount blocks describe, ascending. */
  runs: RefRun[];
  /** Shrink only: host cluster runs that each lose one reference. */
  frees: ByteRange[];
  /** Shrink only: file byte ranges of L2 entries to clear. */
  zeros: ByteRange[];
  /** The image names a backing file (preallocation's copy-on-write would read it). */
  hasBacking?: boolean;
}

export interface Qcow2ResizeOptions {
  newSize: bigint;
  /** "metadata" needs a scan made with the grow-range check (guest arg[1] bit 0)
   * that found the new range free (no RESIZE_F_BUSY_TAIL). */
  preallocation?: "off" | "metadata";
}

export interface ResizeSteps {
  steps: FilePlan[];
}

const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
const COPIED = 1n << 63n;
const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
/** qemu's QCOW_MAX_CLUSTER_OFFSET: host offsets fit bits 9..55. */
const MAX_CLUSTER_OFFSET = (1n << 56n) - 1n;
const INT64_MAX = (1n << 63n) - 1n;
const INT_MAX = 2147483647n;
const MAX_L1_ENTRIES = (32n << 20n) / 8n;
/** Header field offsets (qcow2 spec). */
const HDR_SIZE = 24n;
const HDR_L1_SIZE = 36n;

/** qemu's -EAGAIN from alloc_refcount_block: restart the cluster search. */
class Again {}

/** A refusal met while replaying qemu's steps (the image or request is unsupported). */
export class ResizeRefusal extends Error {
  constructor(
    readonly kind: "overflow" | "invalid_size" | "unsupported" | "invalid_option",
    message: string,
  ) {
    super(message);
    this.name = "ResizeRefusal";
  }
}

function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, false);
  return b;
}

/**
 * The refcount structures in memory: the guest's runs as the base, changes in
 * an overlay, the refcount table as a sparse map. get() answers what qemu's
 * qcow2_get_refcount answers (0 for clusters no refcount block describes).
 */
class Refcounts {
  readonly cb: bigint;
  readonly cs: bigint;
  readonly rbBits: bigint;
  readonly perBlock: bigint;
  readonly max: bigint;
  readonly bits: number;
  readonly tableEntries: bigint;
  /** table index -> refcount block offset (no entry: none). */
  readonly table = new Map<bigint, bigint>();
  /** Blocks allocated by this resize: their base is all zero. */
  readonly fresh = new Set<bigint>();
  readonly overlay = new Map<bigint, bigint>();
  /** table index -> clusters changed in that block. */
  readonly overlayByBlock = new Map<bigint, Set<bigint>>();
  readonly dirty = new Set<bigint>();
  freeIndex = 0n;

  constructor(readonly scan: Qcow2ResizeScan) {
    this.cb = BigInt(scan.clusterBits);
    this.cs = 1n << this.cb;
    this.bits = 1 << scan.refcountOrder;
    this.rbBits = this.cb + 3n - BigInt(scan.refcountOrder);
    this.perBlock = 1n << this.rbBits;
    this.max = refcountMax(this.bits);
    this.tableEntries = BigInt(scan.reftableClusters) << (this.cb - 3n);
    for (const [i, v] of scan.reftable) this.table.set(BigInt(i), v & REFT_OFFSET_MASK);
  }

  private base(c: bigint): bigint {
    const runs = this.scan.runs;
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

  present(t: bigint): boolean {
    return this.table.has(t);
  }

  get(c: bigint): bigint {
    const t = c >> this.rbBits;
    if (!this.table.has(t)) return 0n;
    const o = this.overlay.get(c);
    if (o !== undefined) return o;
    return this.fresh.has(t) ? 0n : this.base(c);
  }

  set(c: bigint, v: bigint) {
    const t = c >> this.rbBits;
    this.overlay.set(c, v);
    let s = this.overlayByBlock.get(t);
    if (!s) this.overlayByBlock.set(t, s = new Set());
    s.add(c);
    this.dirty.add(t);
  }

  /** alloc_clusters_noref: first run of n clusters with refcount 0 from freeIndex. */
  allocNoref(n: bigint, max: bigint): bigint {
    for (let i = 0n; i < n; i++) {
      const idx = this.freeIndex++;
      if (this.get(idx) !== 0n) i = -1n;
    }
    if (this.freeIndex > 0n && this.freeIndex - 1n > (max >> this.cb)) {
      throw new ResizeRefusal("overflow", "File too large");
    }
    return this.freeIndex - n;
  }

  /** qcow2_alloc_clusters: first fit, retried while a refcount block was hooked up. */
  allocClusters(n: bigint): bigint {
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
    for (;;) {
      let i = 0n;
      while (i < n && this.get(at + i) === 0n) i++;
      try {
        this.update(at, i, 1n);
        return i;
      } catch (e) {
        if (!(e instanceof Again)) throw e;
      }
    }
  }

  /** update_refcount over clusters [start, start+n) by +1 or -1. */
  update(start: bigint, n: bigint, addend: 1n | -1n) {
    let oldTable = -1n;
    for (let c = start; c < start + n; c++) {
      const t = c >> this.rbBits;
      // A cluster without a refcount block has refcount 0: dropping a
      // reference to it is an underflow (an inconsistent scan), not a
      // reason to allocate a block and retry (the fuzzer's Again escape).
      if (addend < 0n && !this.table.has(t)) {
        if (c > start) this.update(start, c - start, 1n);
        throw new ResizeRefusal(
          "unsupported",
          `Refcount of cluster ${c} would leave the range 0..${this.max}; ` +
            "the image is inconsistent (qemu-img check reports it)",
        );
      }
      if (t !== oldTable) {
        try {
          this.allocRefcountBlock(c);
        } catch (e) {
          if (e instanceof Again && this.freeIndex > start) this.freeIndex = start;
          // qemu undoes the clusters it already changed, then fails.
          if (c > start) this.update(start, c - start, addend === 1n ? -1n : 1n);
          throw e;
        }
      }
      oldTable = t;
      const v = this.get(c) + addend;
      if (v < 0n || v > this.max) {
        if (c > start) this.update(start, c - start, addend === 1n ? -1n : 1n);
        throw new ResizeRefusal(
          "unsupported",
          `Refcount of cluster ${c} would leave the range 0..${this.max}; ` +
            "the image is inconsistent (qemu-img check reports it)",
        );
      }
      if (v === 0n && c < this.freeIndex) this.freeIndex = c;
      this.set(c, v);
    }
  }

  /** alloc_refcount_block for cluster c, without refcount-table growth. */
  private allocRefcountBlock(c: bigint) {
    const t = c >> this.rbBits;
    if (this.table.has(t)) return;
    const block = this.allocNoref(1n, INT64_MAX);
    if (block === 0n) {
      throw new ResizeRefusal("unsupported", "Preventing invalid allocation of refcount block at offset 0");
    }
    if (block >> this.rbBits === t) {
      // The block describes itself.
      this.table.set(t, block << this.cb);
      this.fresh.add(t);
      this.set(block, 1n);
    } else {
      this.update(block, 1n, 1n);
      this.table.set(t, block << this.cb);
      this.fresh.add(t);
      this.dirty.add(t);
    }
    if (t >= this.tableEntries) {
      throw new ResizeRefusal(
        "unsupported",
        "Resizing this image needs a larger refcount table, which instar does not support yet",
      );
    }
    throw new Again();
  }

  /** Entries of block t in ascending order of cluster (non-zero only). */
  *entries(t: bigint): Generator<[bigint, bigint]> {
    const lo = t << this.rbBits, hi = lo + this.perBlock;
    const changed = this.overlayByBlock.get(t) ?? new Set<bigint>();
    if (!this.fresh.has(t)) {
      const runs = this.scan.runs;
      let a = 0, b = runs.length;
      while (a < b) {
        const m = (a + b) >> 1;
        if (runs[m].start + runs[m].count <= lo) a = m + 1;
        else b = m;
      }
      for (let i = a; i < runs.length && runs[i].start < hi; i++) {
        const r = runs[i];
        const s = r.start > lo ? r.start : lo;
        const e = r.start + r.count < hi ? r.start + r.count : hi;
        for (let c = s; c < e; c++) if (!changed.has(c)) yield [c, r.refcount];
      }
    }
    for (const c of changed) {
      const v = this.overlay.get(c)!;
      if (v !== 0n) yield [c, v];
    }
  }

  encode(t: bigint): Uint8Array {
    const b = new Uint8Array(Number(this.cs));
    const lo = t << this.rbBits;
    for (const [c, v] of this.entries(t)) setRefcount(b, Number(c - lo), v, this.bits);
    return b;
  }

  /** Whether block t holds no reference apart from (optionally) its own. */
  unused(t: bigint): boolean {
    const own = this.table.get(t)! >> this.cb;
    for (const [c] of this.entries(t)) if (c !== own || own >> this.rbBits !== t) return false;
    return true;
  }

  /** Patches writing the dirty blocks `which` selects (all by default); they
   * leave the dirty set, the others stay in it. Dropped blocks are not written. */
  flush(which: (t: bigint) => boolean = () => true): Patch[] {
    const out: Patch[] = [];
    for (const t of [...this.dirty].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (!which(t)) continue;
      this.dirty.delete(t);
      if (!this.table.has(t)) continue;
      out.push({ kind: "write", offset: this.table.get(t)!, bytes: this.encode(t) });
    }
    return out;
  }
}

/** Merges writes that touch end to end into one (fewer syscalls, fewer patches). */
function coalesce(patches: Patch[]): Patch[] {
  const sorted = [...patches].sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  const out: Patch[] = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (
      last && last.kind === "write" && p.kind === "write" &&
      last.offset + BigInt(last.bytes.length) === p.offset
    ) {
      const b = new Uint8Array(last.bytes.length + p.bytes.length);
      b.set(last.bytes);
      b.set(p.bytes, last.bytes.length);
      out[out.length - 1] = { kind: "write", offset: last.offset, bytes: b };
    } else {
      out.push(p);
    }
  }
  return out;
}

function patchEnd(p: Patch): bigint {
  return p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
}

/** Validates the scan against the bounds of its own header; a message when it is inconsistent. */
export function scanViolation(s: Qcow2ResizeScan): string | undefined {
  if (s.clusterBits < 9 || s.clusterBits > 21) return `cluster_bits ${s.clusterBits} out of range`;
  if (s.refcountOrder < 0 || s.refcountOrder > 6) return `refcount_order ${s.refcountOrder} out of range`;
  const cs = 1n << BigInt(s.clusterBits);
  if (s.l1Size < 0 || BigInt(s.l1Size) > MAX_L1_ENTRIES) return `L1 size ${s.l1Size} out of range`;
  if (s.l1Offset % cs !== 0n && s.l1Size > 0) return "L1 table offset not cluster aligned";
  const tableEntries = BigInt(s.reftableClusters) << BigInt(s.clusterBits - 3);
  if (tableEntries > 1n << 20n) return "refcount table too large";
  if (s.reftableOffset % cs !== 0n) return "refcount table offset not cluster aligned";
  for (const [i, v] of s.l1) {
    if (!Number.isInteger(i) || i < 0 || i >= s.l1Size) return `L1 index ${i} out of range`;
    if (v < 0n || v >= 1n << 64n) return `L1 entry ${i} out of range`;
  }
  for (const [i, v] of s.reftable) {
    if (!Number.isInteger(i) || i < 0 || BigInt(i) >= tableEntries) {
      return `refcount table index ${i} out of range`;
    }
    const off = v & REFT_OFFSET_MASK;
    if (off === 0n || off % cs !== 0n || v >= 1n << 64n) return `refcount table entry ${i} invalid`;
  }
  const rbBits = BigInt(s.clusterBits + 3 - s.refcountOrder);
  const max = refcountMax(1 << s.refcountOrder);
  let prevEnd = 0n;
  for (const r of s.runs) {
    if (r.count <= 0n || r.start < prevEnd || r.refcount <= 0n || r.refcount > max) {
      return "refcount runs malformed";
    }
    prevEnd = r.start + r.count;
    for (let t = r.start >> rbBits; t <= (prevEnd - 1n) >> rbBits; t++) {
      if (!s.reftable.has(Number(t))) return "refcount run outside the refcount blocks";
    }
  }
  for (const f of s.frees) {
    if (
      f.count <= 0n || f.start < 0n || f.start + f.count > (MAX_CLUSTER_OFFSET >> BigInt(s.clusterBits)) + 1n
    ) {
      return "freed cluster range out of range";
    }
  }
  return undefined;
}

/** qemu's size_to_l1: L1 entries needed to map `size` bytes. */
export function sizeToL1(size: bigint, clusterBits: number, extendedL2: boolean): bigint {
  const l2Bits = BigInt(clusterBits) - (extendedL2 ? 4n : 3n);
  const shift = BigInt(clusterBits) + l2Bits;
  return (size + (1n << shift) - 1n) >> shift;
}

/**
 * Plans `qemu-img resize` of a qcow2 image with preallocation=off. The
 * caller has checked everything qemu-img checks before truncating (size
 * positive, multiple of 512, --shrink given when shrinking).
 */
export function planQcow2Resize(scan: Qcow2ResizeScan, opts: Qcow2ResizeOptions): PlanResult<ResizeSteps> {
  const bad = scanViolation(scan);
  if (bad) return fail("unsupported", `Inconsistent image metadata: ${bad}`);
  if (opts.newSize <= 0n || opts.newSize > INT64_MAX) {
    return fail("invalid_size", "New image size must be positive");
  }
  if (opts.newSize % 512n !== 0n) return fail("invalid_size", "The new size must be a multiple of 512");
  try {
    const prealloc = opts.preallocation ?? "off";
    if (prealloc !== "off" && opts.newSize <= roundUp512(scan.virtualSize)) {
      return fail("invalid_option", "Preallocation can only be used for growing images");
    }
    const steps = opts.newSize < roundUp512(scan.virtualSize)
      ? shrink(scan, opts.newSize)
      : grow(scan, opts.newSize, prealloc);
    for (const s of steps) {
      const v = planViolation(s);
      if (v) return fail("unsupported", `Resize plan broke an invariant: ${v}`);
    }
    return ok({ steps });
  } catch (e) {
    if (e instanceof ResizeRefusal) return fail(e.kind, e.message);
    if (e instanceof RangeError) return fail("overflow", e.message);
    throw e;
  }
}

function roundUp512(n: bigint): bigint {
  return (n + 511n) / 512n * 512n;
}

function sizePatch(newSize: bigint): Patch {
  return { kind: "write", offset: HDR_SIZE, bytes: be64(newSize) };
}

function fileEnd(size: bigint, patches: Patch[]): bigint {
  let end = size;
  for (const p of patches) if (patchEnd(p) > end) end = patchEnd(p);
  return end;
}

/** qcow2_co_truncate, growing (or keeping the size): qcow2_grow_l1_table, then the size. */
function grow(scan: Qcow2ResizeScan, newSize: bigint, prealloc: "off" | "metadata"): FilePlan[] {
  const rc = new Refcounts(scan);
  const newL1 = sizeToL1(newSize, scan.clusterBits, scan.extendedL2);
  let size = scan.fileSize;
  const steps: FilePlan[] = [];
  let l1Off = scan.l1Offset;
  let l1Size = BigInt(scan.l1Size);
  if (newL1 > BigInt(scan.l1Size)) {
    if (newL1 > INT_MAX / 8n || newL1 > MAX_L1_ENTRIES) {
      throw new ResizeRefusal("overflow", "Failed to grow the L1 table: File too large");
    }
    const bytes = newL1 * 8n;
    const n = (bytes + rc.cs - 1n) >> rc.cb;
    l1Off = rc.allocClusters(n) << rc.cb;
    l1Size = newL1;
    const table = new Uint8Array(Number(bytes));
    const dv = new DataView(table.buffer);
    for (const [i, v] of scan.l1) dv.setBigUint64(i * 8, v, false);
    // Step 1: new clusters only (new refcount blocks, the new L1 table).
    const fresh = new Set([...rc.fresh]);
    const freshBlocks = rc.flush((t) => fresh.has(t));
    const step1 = coalesce([...freshBlocks, { kind: "write", offset: l1Off, bytes: table }]);
    size = fileEnd(size, step1);
    steps.push({ patches: step1, fileSize: size });
    // Step 2: existing refcount blocks and the table entries of new ones.
    const step2: Patch[] = rc.flush();
    for (const t of fresh) {
      step2.push({ kind: "write", offset: scan.reftableOffset + t * 8n, bytes: be64(rc.table.get(t)!) });
    }
    steps.push({ patches: coalesce(step2), fileSize: size });
    // Step 3: switch the header to the new table.
    const l1Fields = new Uint8Array(12);
    const hv = new DataView(l1Fields.buffer);
    hv.setUint32(0, Number(newL1), false);
    hv.setBigUint64(4, l1Off, false);
    steps.push({ patches: [{ kind: "write", offset: HDR_L1_SIZE, bytes: l1Fields }], fileSize: size });
    // Step 4: free the old table (qcow2_free_clusters, no discard).
    const oldBytes = BigInt(scan.l1Size) * 8n;
    if (oldBytes > 0n) {
      const first = scan.l1Offset >> rc.cb;
      const last = (scan.l1Offset + oldBytes - 1n) >> rc.cb;
      rc.update(first, last - first + 1n, -1n);
      steps.push({ patches: coalesce(rc.flush()), fileSize: size });
    }
  }
  if (prealloc === "metadata") {
    size = preallocMetadata(rc, scan, l1Off, l1Size, roundUp512(scan.virtualSize), newSize, size, steps);
  }
  steps.push({ patches: [sizePatch(newSize)], fileSize: size });
  return steps;
}

/** qemu's BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to whole sectors. */
const REQUEST_MAX_BYTES = (INT_MAX >> 9n) << 9n;

/**
 * preallocate_co for preallocation=metadata: qcow2_alloc_host_offset over
 * [oldLen, newLen) in calls of at most INT_MAX (cluster aligned) bytes. Each
 * call walks its range: get_cluster_table allocates a missing L2 table (one
 * cluster, first fit), handle_alloc allocates data clusters (first fit for
 * the call's first run, then qcow2_alloc_clusters_at right after the previous
 * run, which ends the call when that cluster is taken). The L2 entries are
 * linked with COPIED; the file is extended to the end of the last run.
 * Appends its steps; returns the file size.
 */
function preallocMetadata(
  rc: Refcounts,
  scan: Qcow2ResizeScan,
  l1Off: bigint,
  l1Size: bigint,
  oldLen: bigint,
  newLen: bigint,
  size: bigint,
  steps: FilePlan[],
): bigint {
  if (scan.extendedL2) {
    throw new ResizeRefusal("unsupported", "instar does not preallocate images with extended L2 entries yet");
  }
  const cs = rc.cs, cb = rc.cb;
  const l2Bits = cb - 3n;
  const perL2 = 1n << l2Bits;
  const callMax = (INT_MAX >> cb) << cb;
  const capClusters = REQUEST_MAX_BYTES >> cb;
  const l1 = new Map<bigint, bigint>([...scan.l1].map(([i, v]) => [BigInt(i), v]));
  const l1Changed = new Set<bigint>();
  const tables = new Map<bigint, { offset: bigint; fresh: boolean; entries: Map<bigint, bigint> }>();
  const freshBefore = new Set(rc.fresh);
  const table = (idx: bigint) => {
    let t = tables.get(idx);
    if (t) return t;
    if (idx >= l1Size) throw new ResizeRefusal("unsupported", "Preallocation past the L1 table");
    const e = l1.get(idx) ?? 0n;
    const off = e & L1E_OFFSET_MASK;
    if (off) {
      // A shared L2 table would be copied on write by qemu; instar refuses.
      if (!(e & COPIED)) {
        throw new ResizeRefusal("unsupported", "instar does not preallocate into a shared L2 table");
      }
      t = { offset: off, fresh: false, entries: new Map() };
    } else {
      const at = rc.allocClusters(1n) << cb;
      l1.set(idx, at | COPIED);
      l1Changed.add(idx);
      t = { offset: at, fresh: true, entries: new Map() };
    }
    tables.set(idx, t);
    return t;
  };
  let offset = oldLen;
  let lastHost = 0n, lastBytes = 0n, firstCluster = -1n;
  while (offset < newLen) {
    const bytes = newLen - offset < callMax ? newLen - offset : callMax;
    let start = offset, remaining = bytes;
    let clusterOff = -1n, hostOff = -1n;
    while (remaining > 0n) {
      const gc = start >> cb;
      const t = table(gc >> l2Bits); // handle_copied's get_cluster_table
      const inCl = start & (cs - 1n);
      const l2i = gc & (perL2 - 1n);
      let n = (inCl + remaining + cs - 1n) >> cb;
      if (n > perL2 - l2i) n = perL2 - l2i;
      if (n > capClusters) n = capClusters;
      let host: bigint;
      if (clusterOff < 0n) {
        host = rc.allocClusters(n) << cb;
      } else {
        const got = rc.allocAt(clusterOff >> cb, n);
        if (got === 0n) break;
        n = got;
        host = (clusterOff >> cb) << cb;
      }
      for (let i = 0n; i < n; i++) t.entries.set(l2i + i, (host + (i << cb)) | COPIED);
      const avail = (n << cb) - inCl;
      const cur = remaining < avail ? remaining : avail;
      if (clusterOff < 0n) clusterOff = host + inCl;
      if (hostOff < 0n) hostOff = clusterOff;
      start += cur;
      remaining -= cur;
      clusterOff += cur;
    }
    if (firstCluster < 0n) firstCluster = hostOff - (offset & (cs - 1n));
    lastHost = hostOff;
    lastBytes = start - offset;
    offset = start;
  }
  // The partial first and last clusters get qemu's copy-on-write of the
  // parts outside the request (perform_cow): zeroes without a backing file.
  // With one, those bytes would come from the backing image: refused.
  const head = oldLen & (cs - 1n), tail = newLen & (cs - 1n);
  const cow: Patch[] = [];
  if ((head || tail) && scan.hasBacking) {
    throw new ResizeRefusal(
      "unsupported",
      "instar does not preallocate a partial cluster of an image with a backing file",
    );
  }
  if (head && firstCluster >= 0n) {
    cow.push({ kind: "write", offset: firstCluster, bytes: new Uint8Array(Number(head)) });
  }
  if (tail) {
    const lastCluster = ((lastHost + lastBytes - 1n) >> cb) << cb;
    cow.push({ kind: "write", offset: lastCluster + tail, bytes: new Uint8Array(Number(cs - tail)) });
  }
  // Step A: new clusters only: new refcount blocks, new L2 tables.
  const freshNow = new Set([...rc.fresh].filter((t) => !freshBefore.has(t)));
  const stepA: Patch[] = rc.flush((t) => freshNow.has(t));
  const stepC: Patch[] = [];
  for (const t of tables.values()) {
    if (t.fresh) {
      const b = new Uint8Array(Number(cs));
      const dv = new DataView(b.buffer);
      for (const [i, v] of t.entries) dv.setBigUint64(Number(i) * 8, v, false);
      stepA.push({ kind: "write", offset: t.offset, bytes: b });
    } else if (t.entries.size) {
      const idx = [...t.entries.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const lo = idx[0], hi = idx[idx.length - 1] + 1n;
      const b = new Uint8Array(Number((hi - lo) * 8n));
      const dv = new DataView(b.buffer);
      for (const [i, v] of t.entries) dv.setBigUint64(Number(i - lo) * 8, v, false);
      stepC.push({ kind: "write", offset: t.offset + lo * 8n, bytes: b });
    }
  }
  stepA.push(...cow);
  let end = fileEnd(size, stepA);
  if (lastHost + lastBytes > end) end = lastHost + lastBytes;
  steps.push({ patches: coalesce(stepA), fileSize: end });
  // Step B: the other refcount blocks, table entries of new blocks.
  const stepB: Patch[] = rc.flush();
  for (const t of freshNow) {
    stepB.push({ kind: "write", offset: scan.reftableOffset + t * 8n, bytes: be64(rc.table.get(t)!) });
  }
  steps.push({ patches: coalesce(stepB), fileSize: end });
  // Step C: link into live tables: existing L2 tails, L1 entries as qemu writes
  // them (qcow2_write_l1_entry: the 512-byte sector holding the entry).
  const sectors = new Set([...l1Changed].map((i) => i >> 6n));
  for (const sct of sectors) {
    const first = sct << 6n;
    const count = l1Size - first < 64n ? l1Size - first : 64n;
    const b = new Uint8Array(Number(count * 8n));
    const dv = new DataView(b.buffer);
    for (let i = 0n; i < count; i++) dv.setBigUint64(Number(i) * 8, l1.get(first + i) ?? 0n, false);
    stepC.push({ kind: "write", offset: l1Off + first * 8n, bytes: b });
  }
  steps.push({ patches: coalesce(stepC), fileSize: end });
  return end;
}

/**
 * qcow2_co_truncate, shrinking: discard the cut-off clusters, shrink the L1
 * table, drop refcount blocks that became unused, cut the file after the last
 * used cluster, then write the size.
 */
function shrink(scan: Qcow2ResizeScan, newSize: bigint): FilePlan[] {
  const rc = new Refcounts(scan);
  const cs = rc.cs;
  const newL1 = sizeToL1(newSize, scan.clusterBits, scan.extendedL2);
  const entryBytes = scan.extendedL2 ? 16n : 8n;
  // L2 tables that survive, by offset: the guest's zero ranges must lie in one.
  const kept = new Set<bigint>();
  for (const [i, v] of scan.l1) {
    if (BigInt(i) < newL1 && (v & L1E_OFFSET_MASK) !== 0n) kept.add(v & L1E_OFFSET_MASK);
  }
  const step1: Patch[] = [];
  for (const z of scan.zeros) {
    const table = z.start & ~(cs - 1n);
    if (
      z.count <= 0n || z.count % entryBytes !== 0n || z.start % entryBytes !== 0n || !kept.has(table) ||
      z.start + z.count > table + cs
    ) {
      throw new ResizeRefusal(
        "unsupported",
        "Inconsistent image metadata: L2 entry range outside a kept L2 table",
      );
    }
    step1.push({ kind: "write", offset: z.start, bytes: new Uint8Array(Number(z.count)) });
  }
  // qcow2_shrink_l1_table: zero the tail of the L1 table on disk.
  if (newL1 < BigInt(scan.l1Size)) {
    step1.push({
      kind: "write",
      offset: scan.l1Offset + newL1 * 8n,
      bytes: new Uint8Array(Number((BigInt(scan.l1Size) - newL1) * 8n)),
    });
  }
  // Refcounts: the discard's frees, then the L2 tables past the new L1 size.
  for (const f of scan.frees) rc.update(f.start, f.count, -1n);
  for (let i = scan.l1Size - 1; BigInt(i) >= newL1; i--) {
    const off = (scan.l1.get(i) ?? 0n) & L1E_OFFSET_MASK;
    if (off) rc.update(off >> rc.cb, 1n, -1n);
  }
  // qcow2_shrink_reftable: drop blocks with no reference but their own.
  const dropped = new Set<bigint>();
  for (const t of [...rc.table.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (rc.unused(t)) dropped.add(t);
  }
  const reftable = new Uint8Array(Number(rc.tableEntries * 8n));
  const tv = new DataView(reftable.buffer);
  for (const [i, v] of scan.reftable) if (!dropped.has(BigInt(i))) tv.setBigUint64(i * 8, v, false);
  for (const t of dropped) {
    // qcow2_discard_refcount_block: the block's own entry must be exactly 1.
    const off = rc.table.get(t)!;
    const c = off >> rc.cb;
    if (rc.get(c) !== 1n) {
      throw new ResizeRefusal(
        "unsupported",
        `Invalid refcount of refcount block at offset ${off}; run qemu-img check`,
      );
    }
    rc.set(c, 0n);
    rc.table.delete(t);
  }
  const step2 = [...rc.flush(), { kind: "write" as const, offset: scan.reftableOffset, bytes: reftable }];
  // qcow2_get_last_cluster over the old file length.
  const fileClusters = (scan.fileSize + cs - 1n) >> rc.cb;
  const last = lastUsedCluster(rc, fileClusters);
  if (last < 0n) throw new ResizeRefusal("unsupported", "There are no references in the refcount table");
  let size = scan.fileSize;
  if ((last + 1n) * cs < size) size = (last + 1n) * cs;
  const steps: FilePlan[] = [];
  const sz1 = fileEnd(scan.fileSize, step1);
  steps.push({ patches: coalesce(step1), fileSize: sz1 });
  steps.push({ patches: coalesce(step2), fileSize: fileEnd(sz1, step2) });
  steps.push({ patches: [sizePatch(newSize)], fileSize: size });
  return steps;
}

/** The last cluster below `limit` with a non-zero refcount, or -1. */
function lastUsedCluster(rc: Refcounts, limit: bigint): bigint {
  let best = -1n;
  for (const [c, v] of rc.overlay) {
    if (v !== 0n && c < limit && c > best && rc.present(c >> rc.rbBits)) best = c;
  }
  const runs = rc.scan.runs;
  for (let i = runs.length - 1; i >= 0; i--) {
    const r = runs[i];
    if (r.start + r.count - 1n <= best) break;
    let c = r.start + r.count - 1n;
    if (c >= limit) c = limit - 1n;
    for (; c >= r.start && c > best; c--) {
      if (rc.get(c) !== 0n) return c;
    }
  }
  return best;
}
