// The qcow2 resize planner: a pure function from the metadata the guest's
// resize_scan extracted (header facts, active L1 entries, refcount table,
// refcounts as runs, and for a shrink the clusters the discard frees and the
// L2 entry ranges it clears) plus the new size, to the writes that perform
// qemu 7.2's qcow2_co_truncate with preallocation off, metadata, falloc or
// full.
//
// To leave the same layout qemu-img leaves, the planner replays qemu's
// allocator on the shared refcount model (refcounts.ts: first fit from the
// free-cluster hint, refcount blocks hooked up with the -EAGAIN restart, the
// refcount table grown by qcow2_refcount_area), the L1 growth of
// qcow2_grow_l1_table, preallocate_co (metadata), the refcount area, data
// run and L2 linking of the falloc/full branch, and for a shrink the
// discard, L1 shrink, refcount-table shrink and the final cut of the file
// after the last used cluster (qcow2_get_last_cluster).
//
// Every refcount width 1..64 is encoded as on disk by the model, sub-byte
// widths LSB-first (seed 002 bug C); the header is patched in place (size,
// L1 fields, refcount table fields) so refcount_order and everything else
// stay as they are.
//
// The result is a list of steps, each a FilePlan that planViolation accepts,
// applied in order with a flush after each. Like qemu's own syncs, the order
// keeps the image consistent after a crash between any two steps (at worst
// it leaks clusters, which `qemu-img check -r leaks` repairs): new clusters
// are written before anything points at them, references are switched
// before the clusters they replace are freed; see docs/resize.md.
import {
  fail,
  type FilePlan,
  MAX_PATCHES,
  ok,
  type Patch,
  type PlanResult,
  planViolation,
  type WritePatch,
} from "../plan.ts";
import { refcountMax } from "./encode.ts";
import { MAX_CLUSTER_OFFSET, RefcountError, RefcountModel, type RefRun } from "./refcounts.ts";

export type { RefRun } from "./refcounts.ts";

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
  /**
   * Scans with arg[1] bit 2 only: each compressed guest cluster of the active
   * L1 -> the host clusters [first, first + count) its data spans.
   */
  compressed?: Map<bigint, { first: bigint; count: bigint }>;
}

export type Qcow2Prealloc = "off" | "metadata" | "falloc" | "full";

export interface Qcow2ResizeOptions {
  newSize: bigint;
  /** Anything but "off" needs a scan made with the grow-range check (guest
   * arg[1] bit 0) that found the new range free (no RESIZE_F_BUSY_TAIL). */
  preallocation?: Qcow2Prealloc;
}

export interface ResizeSteps {
  /** Applied in order, each followed by a flush. A zero patch is the data
   * area falloc/full allocate: the applier allocates it (posix_fallocate)
   * or writes zeroes, as the mode says. */
  steps: FilePlan[];
  /** qemu's free_cluster_index after the resize: where the bitmaps' store
   * at close (resize_bitmaps.ts) continues allocating from. */
  freeIndex?: bigint;
}

/** The host offset bits of an L1 (or L2) entry. */
export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
/** QCOW_OFLAG_COPIED: the cluster's refcount is exactly 1. */
export const COPIED = 1n << 63n;
const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
const INT64_MAX = (1n << 63n) - 1n;
const INT_MAX = 2147483647n;
const MAX_L1_ENTRIES = (32n << 20n) / 8n;
/** Header field offsets (qcow2 spec). */
const HDR_SIZE = 24n;
const HDR_L1_SIZE = 36n;
const HDR_REFTABLE = 48n;
/**
 * The most clusters one preallocating resize lays out. The model keeps the
 * counts of every block it touches and the new L2 tables in memory (about
 * 10 bytes per cluster at 16-bit refcounts): 2^24 clusters is 1 TiB at the
 * default cluster size. Past it the planner refuses with a typed error
 * rather than run out of memory.
 */
export const MAX_PREALLOC_CLUSTERS = 1n << 24n;

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

export function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, false);
  return b;
}

/** Merges writes that touch end to end into one (fewer syscalls, fewer patches). */
function coalesce(patches: Patch[]): Patch[] {
  const sorted = [...patches].sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  const out: Patch[] = [];
  // Runs of touching writes are gathered first and joined once: joining as
  // they come copies the run again for every write (quadratic).
  for (let i = 0; i < sorted.length;) {
    const p = sorted[i];
    let j = i + 1;
    if (p.kind === "write") {
      let end = p.offset + BigInt(p.bytes.length);
      while (j < sorted.length) {
        const q = sorted[j];
        if (q.kind !== "write" || q.offset !== end) break;
        end += BigInt(q.bytes.length);
        j++;
      }
    }
    if (j === i + 1) {
      out.push(p);
    } else {
      const run = sorted.slice(i, j) as WritePatch[];
      const b = new Uint8Array(run.reduce((n, w) => n + w.bytes.length, 0));
      let at = 0;
      for (const w of run) {
        b.set(w.bytes, at);
        at += w.bytes.length;
      }
      out.push({ kind: "write", offset: p.offset, bytes: b });
    }
    i = j;
  }
  return out;
}

function patchEnd(p: Patch): bigint {
  return p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
}

/** The steps so far and the file length they leave. */
export class StepLog {
  readonly steps: FilePlan[] = [];
  constructor(public size: bigint) {}

  /**
   * One step: the patches, then the file is at least as long as they reach
   * (or exactly `size`). More than MAX_PATCHES become several steps: every
   * step's patches are independent of one another (they may land in any
   * order on a crash), so any split of them keeps that true.
   */
  push(patches: Patch[], size?: bigint) {
    if (patches.length === 0 && (size === undefined || size === this.size)) return;
    const merged = coalesce(patches);
    this.size = size ?? fileEnd(this.size, merged);
    for (let i = 0; i === 0 || i < merged.length; i += MAX_PATCHES) {
      this.steps.push({ patches: merged.slice(i, i + MAX_PATCHES), fileSize: this.size });
    }
  }
}

/** The model started from the scan; a moved refcount table becomes two steps of `log`. */
export function modelOf(scan: Qcow2ResizeScan, log: StepLog): RefcountModel {
  const table = new Map<bigint, bigint>();
  for (const [i, v] of scan.reftable) table.set(BigInt(i), v & REFT_OFFSET_MASK);
  const rc = new RefcountModel({
    clusterBits: scan.clusterBits,
    refcountOrder: scan.refcountOrder,
    tableOffset: scan.reftableOffset,
    tableClusters: BigInt(scan.reftableClusters),
    table,
    runs: scan.runs,
  });
  rc.listener = {
    // qcow2_refcount_area: the blocks and the new table are synced before
    // the header names the table; the old one is freed after.
    tableMoved: (move) => {
      log.push([...blockPatches(rc), { kind: "write", offset: rc.tableOffset, bytes: rc.tableBytes() }]);
      // Blocks hooked into the old table since the last step: qemu wrote
      // their entries there at once, so the abandoned table holds them too.
      log.push(move.oldHookups.map((t) => ({
        kind: "write" as const,
        offset: move.oldOffset + t * 8n,
        bytes: be64(move.oldEntries.get(t)!),
      })));
      const f = new Uint8Array(12);
      new DataView(f.buffer).setBigUint64(0, rc.tableOffset);
      new DataView(f.buffer).setUint32(8, Number(rc.tableClusters));
      log.push([{ kind: "write", offset: HDR_REFTABLE, bytes: f }]);
    },
  };
  return rc;
}

/** The dirty refcount blocks, as writes (they stop being dirty). */
export function blockPatches(rc: RefcountModel): Patch[] {
  return rc.takeDirty().map((t) => ({
    kind: "write" as const,
    offset: rc.table.get(t)!,
    bytes: rc.blockBytes(t),
  }));
}

/** Entries of new blocks written into the current refcount table. */
export function hookupPatches(rc: RefcountModel): Patch[] {
  return rc.takeHookups().map((t) => ({
    kind: "write" as const,
    offset: rc.tableOffset + t * 8n,
    bytes: be64(rc.table.get(t)!),
  }));
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
 * Plans `qemu-img resize` of a qcow2 image. The caller has checked
 * everything qemu-img checks before truncating (size positive, multiple of
 * 512, --shrink given when shrinking).
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
    const { steps, freeIndex } = opts.newSize < roundUp512(scan.virtualSize)
      ? shrink(scan, opts.newSize)
      : grow(scan, opts.newSize, prealloc);
    for (const s of steps) {
      const v = planViolation(s);
      if (v) return fail("unsupported", `Resize plan broke an invariant: ${v}`);
    }
    return ok({ steps, freeIndex });
  } catch (e) {
    if (e instanceof ResizeRefusal) return fail(e.kind, e.message);
    if (e instanceof RefcountError) {
      if (e.kind === "too_big") return fail("overflow", e.message);
      return fail(
        "unsupported",
        e.kind === "range"
          ? `${e.message}; the image is inconsistent (qemu-img check reports it)`
          : e.message,
      );
    }
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

/** Runs `f`; qemu's EFBIG from the model becomes qemu-img's message for the stage. */
function stage<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof RefcountError && e.kind === "too_big") {
      throw new ResizeRefusal("overflow", `${what}: ${e.message}`);
    }
    throw e;
  }
}

/** qcow2_co_truncate, growing (or keeping the size): qcow2_grow_l1_table, preallocation, the size. */
function grow(scan: Qcow2ResizeScan, newSize: bigint, prealloc: Qcow2Prealloc): ResizeSteps {
  const log = new StepLog(scan.fileSize);
  const rc = modelOf(scan, log);
  const newL1 = sizeToL1(newSize, scan.clusterBits, scan.extendedL2);
  let l1Off = scan.l1Offset;
  let l1Size = BigInt(scan.l1Size);
  const oldLen = roundUp512(scan.virtualSize);
  if (prealloc !== "off") {
    const cs = rc.cs;
    const clusters = (newSize + cs - 1n) / cs - oldLen / cs;
    if (clusters > MAX_PREALLOC_CLUSTERS) {
      throw new ResizeRefusal(
        "unsupported",
        `Preallocating more than ${MAX_PREALLOC_CLUSTERS} clusters is beyond instar's resize planner ` +
          "(try a larger cluster size)",
      );
    }
  }
  if (newL1 > BigInt(scan.l1Size)) {
    if (newL1 > INT_MAX / 8n || newL1 > MAX_L1_ENTRIES) {
      throw new ResizeRefusal("overflow", "Failed to grow the L1 table: File too large");
    }
    const bytes = newL1 * 8n;
    const n = (bytes + rc.cs - 1n) >> rc.cb;
    l1Off = stage("Failed to grow the L1 table", () => rc.alloc(n)) << rc.cb;
    l1Size = newL1;
    const table = new Uint8Array(Number(bytes));
    const dv = new DataView(table.buffer);
    for (const [i, v] of scan.l1) dv.setBigUint64(i * 8, v, false);
    // Step 1: the refcount blocks, the new L1 table in clusters nothing references yet.
    log.push([...blockPatches(rc), { kind: "write", offset: l1Off, bytes: table }]);
    // Step 2: entries of new refcount blocks in the table.
    log.push(hookupPatches(rc));
    // Step 3: switch the header to the new L1 table.
    const l1Fields = new Uint8Array(12);
    const hv = new DataView(l1Fields.buffer);
    hv.setUint32(0, Number(newL1), false);
    hv.setBigUint64(4, l1Off, false);
    log.push([{ kind: "write", offset: HDR_L1_SIZE, bytes: l1Fields }]);
    // Step 4: free the old table (qcow2_free_clusters, no discard).
    const oldBytes = BigInt(scan.l1Size) * 8n;
    if (oldBytes > 0n) {
      const first = scan.l1Offset >> rc.cb;
      const last = (scan.l1Offset + oldBytes - 1n) >> rc.cb;
      rc.update(first, last - first + 1n, -1n);
      log.push(blockPatches(rc));
    }
  }
  if (prealloc !== "off") {
    const g: Grow = { rc, log, l2: new L2Linker(rc, scan, l1Off, l1Size), scan, oldLen, newLen: newSize };
    if (prealloc === "metadata") preallocMetadata(g);
    else preallocData(g);
  }
  log.push([sizePatch(newSize)]);
  return { steps: log.steps, freeIndex: rc.freeIndex };
}

/**
 * The L1 and L2 tables as preallocation changes them: get_cluster_table
 * (l2_allocate for a missing table, first fit, zero-filled) and the entries
 * qcow2_alloc_cluster_link_l2 sets (host offset | COPIED; with extended L2
 * entries the bitmap stays clear, as for qemu's preallocated links).
 */
class L2Linker {
  private readonly l1: Map<bigint, bigint>;
  private readonly l1Changed = new Set<bigint>();
  /** Per L1 index: the table's offset, whether it is new, its entries
   * encoded as on disk and the range of entries set (lo..hi). */
  private readonly tables = new Map<
    bigint,
    { offset: bigint; fresh: boolean; bytes: Uint8Array; dv: DataView; lo: number; hi: number }
  >();
  readonly perL2: bigint;
  private readonly entryBytes: number;

  constructor(
    private readonly rc: RefcountModel,
    private readonly scan: Qcow2ResizeScan,
    private readonly l1Off: bigint,
    private readonly l1Size: bigint,
  ) {
    this.l1 = new Map([...scan.l1].map(([i, v]) => [BigInt(i), v]));
    this.entryBytes = scan.extendedL2 ? 16 : 8;
    this.perL2 = rc.cs / BigInt(this.entryBytes);
  }

  /** get_cluster_table for L1 index idx. */
  table(idx: bigint) {
    let t = this.tables.get(idx);
    if (t) return t;
    if (idx >= this.l1Size) throw new ResizeRefusal("unsupported", "Preallocation past the L1 table");
    const e = this.l1.get(idx) ?? 0n;
    const off = e & L1E_OFFSET_MASK;
    let offset: bigint, fresh: boolean;
    if (off) {
      // A shared L2 table would be copied on write by qemu; instar refuses.
      if (!(e & COPIED)) {
        throw new ResizeRefusal("unsupported", "instar does not preallocate into a shared L2 table");
      }
      [offset, fresh] = [off, false];
    } else {
      offset = this.rc.alloc(1n) << this.rc.cb;
      this.l1.set(idx, offset | COPIED);
      this.l1Changed.add(idx);
      fresh = true;
    }
    const bytes = new Uint8Array(Number(this.rc.cs));
    t = { offset, fresh, bytes, dv: new DataView(bytes.buffer), lo: Number(this.perL2), hi: 0 };
    this.tables.set(idx, t);
    return t;
  }

  /** Links n guest clusters from `guest` (within one L2 table) to host clusters from `host`. */
  link(guest: bigint, host: bigint, n: bigint) {
    const t = this.table(guest / this.perL2);
    const l2i = Number(guest % this.perL2);
    for (let i = 0; i < Number(n); i++) {
      t.dv.setBigUint64((l2i + i) * this.entryBytes, ((host + BigInt(i)) << this.rc.cb) | COPIED);
    }
    if (l2i < t.lo) t.lo = l2i;
    if (l2i + Number(n) > t.hi) t.hi = l2i + Number(n);
  }

  /**
   * The steps that make the links live, after the allocations: (A) refcount
   * blocks, new L2 tables and `extra` (data the preallocation writes) in
   * clusters nothing references yet, the file at least `end` long; (B) the
   * entries of new refcount blocks; (C) existing L2 tables' new entries and
   * the L1 entries as qemu writes them (qcow2_write_l1_entry: the 512-byte
   * sector holding the entry).
   */
  emit(log: StepLog, extra: Patch[], end: bigint) {
    const rc = this.rc;
    const stepA: Patch[] = [...blockPatches(rc), ...extra];
    const stepC: Patch[] = [];
    const eb = this.entryBytes;
    for (const t of this.tables.values()) {
      if (t.fresh) {
        stepA.push({ kind: "write", offset: t.offset, bytes: t.bytes });
      } else if (t.hi > t.lo) {
        // Entries in the grow range of an existing table were all zero (the
        // guest's check), so the run from the first to the last linked
        // entry only puts the new values over zeroes.
        stepC.push({
          kind: "write",
          offset: t.offset + BigInt(t.lo * eb),
          bytes: t.bytes.slice(t.lo * eb, t.hi * eb),
        });
      }
    }
    const a = fileEnd(log.size, stepA);
    log.push(stepA, a > end ? a : end);
    log.push(hookupPatches(rc));
    const sectors = new Set([...this.l1Changed].map((i) => i >> 6n));
    for (const sct of sectors) {
      const first = sct << 6n;
      const count = this.l1Size - first < 64n ? this.l1Size - first : 64n;
      const b = new Uint8Array(Number(count * 8n));
      const dv = new DataView(b.buffer);
      for (let i = 0n; i < count; i++) dv.setBigUint64(Number(i) * 8, this.l1.get(first + i) ?? 0n, false);
      stepC.push({ kind: "write", offset: this.l1Off + first * 8n, bytes: b });
    }
    log.push(stepC);
  }
}

/** What a preallocating grow works on: the model, the steps, the tables, the old and new sizes. */
interface Grow {
  rc: RefcountModel;
  log: StepLog;
  l2: L2Linker;
  scan: Qcow2ResizeScan;
  /** The old virtual size rounded up to 512, and the new size. */
  oldLen: bigint;
  newLen: bigint;
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
 */
function preallocMetadata({ rc, log, l2, scan, oldLen, newLen }: Grow) {
  const cs = rc.cs, cb = rc.cb;
  const perL2 = l2.perL2;
  const callMax = (INT_MAX >> cb) << cb;
  const capClusters = REQUEST_MAX_BYTES >> cb;
  let offset = oldLen;
  let lastHost = 0n, lastBytes = 0n, firstCluster = -1n;
  while (offset < newLen) {
    const bytes = newLen - offset < callMax ? newLen - offset : callMax;
    let start = offset, remaining = bytes;
    let clusterOff = -1n, hostOff = -1n;
    while (remaining > 0n) {
      const gc = start >> cb;
      l2.table(gc / perL2); // handle_copied's get_cluster_table
      const inCl = start & (cs - 1n);
      const l2i = gc % perL2;
      let n = (inCl + remaining + cs - 1n) >> cb;
      if (n > perL2 - l2i) n = perL2 - l2i;
      if (n > capClusters) n = capClusters;
      let host: bigint;
      if (clusterOff < 0n) {
        host = rc.alloc(n) << cb;
      } else {
        const got = rc.allocAt(clusterOff >> cb, n);
        if (got === 0n) break;
        n = got;
        host = (clusterOff >> cb) << cb;
      }
      l2.link(gc, host >> cb, n);
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
  // With extended L2 entries the copy-on-write covers only the subclusters
  // the request touches (qemu's calculate_l2_meta), so the parts are cut
  // at subcluster boundaries; without, the unit is the whole cluster.
  const unit = scan.extendedL2 ? cs / 32n : cs;
  const headFrom = head - head % unit, tailTo = tail === 0n ? 0n : ((tail + unit - 1n) / unit) * unit;
  if (head > headFrom && firstCluster >= 0n) {
    cow.push({
      kind: "write",
      offset: firstCluster + headFrom,
      bytes: new Uint8Array(Number(head - headFrom)),
    });
  }
  if (tailTo > tail) {
    const lastCluster = ((lastHost + lastBytes - 1n) >> cb) << cb;
    cow.push({ kind: "write", offset: lastCluster + tail, bytes: new Uint8Array(Number(tailTo - tail)) });
  }
  l2.emit(log, cow, lastHost + lastBytes);
}

/**
 * qcow2_co_truncate's falloc/full branch: new refcount structures at the
 * end of the used clusters covering themselves, the data clusters and their
 * L2 tables (qcow2_refcount_area, which also moves the refcount table); the
 * data clusters right after them (qcow2_alloc_clusters_at); the file grown
 * over them with the mode's allocation; then every new guest cluster from
 * the one holding the old end linked to its data cluster, L2 tables
 * allocated as linking needs them.
 */
function preallocData({ rc, log, l2, scan, oldLen, newLen }: Grow) {
  const cs = rc.cs, cb = rc.cb;
  // qcow2_get_last_cluster over the file as it now is.
  const last = rc.lastUsed((log.size + cs - 1n) >> cb);
  const oldFile = last >= 0n ? last + 1n : (log.size + cs - 1n) >> cb;
  const firstGuest = oldLen >> cb;
  const nbData = ((newLen + cs - 1n) >> cb) - firstGuest;
  // One L2 table more than the data needs, for an unaligned head or tail.
  const nbL2 = (nbData + l2.perL2 - 1n) / l2.perL2 + 1n;
  const start = stage(
    "Failed to resize refcount structures",
    () => rc.refcountArea(oldFile, nbData + nbL2, true),
  );
  if (rc.allocAt(start, nbData) !== nbData) {
    throw new ResizeRefusal("unsupported", "Failed to allocate data clusters");
  }
  const newFileSize = (start + nbData) << cb;
  // file-posix refuses to preallocate a file down to a shorter length
  // (unreferenced clusters past the last used one); qemu fails there after
  // writing the refcount area, instar before writing anything.
  if (log.size > newFileSize) {
    throw new ResizeRefusal(
      "unsupported",
      "Failed to resize underlying file: Cannot use preallocation for shrinking files",
    );
  }
  // The data area is allocated from the current end of the file; any
  // unreferenced bytes already there become data as they are, as in qemu.
  const extra: Patch[] = [];
  const from = log.size > start << cb ? log.size : start << cb;
  if (newFileSize > from) extra.push({ kind: "zero", offset: from, length: newFileSize - from });
  // The first new cluster holds the old end: qemu copies the head of it
  // (perform_cow) from the guest view, which is zeroes without a backing
  // file (the guest checked the cluster is unallocated); with one it would
  // be the backing image's data: refused.
  const head = oldLen & (cs - 1n);
  if (head && scan.hasBacking) {
    throw new ResizeRefusal(
      "unsupported",
      "instar does not preallocate a partial cluster of an image with a backing file",
    );
  }
  if (head && start << cb < from) {
    const end = (start << cb) + head < from ? (start << cb) + head : from;
    extra.push({ kind: "write", offset: start << cb, bytes: new Uint8Array(Number(end - (start << cb))) });
  }
  let guest = firstGuest, host = start;
  for (let left = nbData; left > 0n;) {
    let n = l2.perL2 - guest % l2.perL2;
    if (n > left) n = left;
    l2.link(guest, host, n);
    guest += n;
    host += n;
    left -= n;
  }
  l2.emit(log, extra, newFileSize);
}

/**
 * qcow2_co_truncate, shrinking: discard the cut-off clusters, shrink the L1
 * table, drop refcount blocks that became unused, cut the file after the last
 * used cluster, then write the size.
 */
/** The most transient L2 tables a shrink models (see shrink). */
const TRANSIENT_MAX = 4096;

function shrink(scan: Qcow2ResizeScan, newSize: bigint): ResizeSteps {
  const log = new StepLog(scan.fileSize);
  const rc = modelOf(scan, log);
  const cs = rc.cs;
  const newL1 = sizeToL1(newSize, scan.clusterBits, scan.extendedL2);
  const entryBytes = scan.extendedL2 ? 16n : 8n;
  // L2 tables that survive, by offset: the guest's zero ranges must lie in one.
  const kept = new Set<bigint>();
  for (const [i, v] of scan.l1) {
    if (BigInt(i) < newL1 && (v & L1E_OFFSET_MASK) !== 0n) kept.add(v & L1E_OFFSET_MASK);
  }
  // qcow2_cluster_discard goes through get_cluster_table, which allocates
  // an L2 table (l2_allocate: first fit, zero-filled, the L1 entry's sector
  // written) for every L1 entry of the cut-off range that has none. Only
  // the entry holding the new end survives the L1 shrink, so only its table
  // stays: the file keeps an empty L2 cluster there, as qemu's does. It is
  // allocated before any discard frees a cluster, as in qemu's walk.
  // Order: zero table and refcounts synced, then the L1 entry.
  const cut = (newSize + cs - 1n) & ~(cs - 1n);
  const oldLen = roundUp512(scan.virtualSize);
  const perTable = (cs / entryBytes) * cs;
  const firstIdx = cut / perTable;
  const firstEntry = scan.l1.get(Number(firstIdx)) ?? 0n;
  // An L2 table an internal snapshot shares (no OFLAG_COPIED) is copied
  // there instead (l2_allocate), the old one losing one reference with the
  // frees; the guest's zero ranges in it go to the copy.
  const sharedFirst = (firstEntry & L1E_OFFSET_MASK) !== 0n && (firstEntry & COPIED) === 0n;
  let moved: [bigint, bigint] | undefined;
  if (cut < oldLen && firstIdx < newL1 && ((firstEntry & L1E_OFFSET_MASK) === 0n || sharedFirst)) {
    const table = rc.alloc(1n) << rc.cb;
    const old = firstEntry & L1E_OFFSET_MASK;
    if (sharedFirst) {
      if (rc.get(old >> rc.cb) < 2n) {
        throw new ResizeRefusal(
          "unsupported",
          "Inconsistent image metadata: an L2 table without OFLAG_COPIED is not shared (run qemu-img check -r all)",
        );
      }
      moved = [old, table];
      kept.delete(old);
      kept.add(table);
    }
    log.push([
      ...blockPatches(rc),
      sharedFirst
        ? { kind: "copy", offset: table, from: old, length: cs }
        : { kind: "write", offset: table, bytes: new Uint8Array(Number(cs)) },
    ]);
    log.push(hookupPatches(rc));
    // qcow2_write_l1_entry: the 512-byte sector holding the entry.
    const first = firstIdx & ~63n;
    const count = BigInt(scan.l1Size) - first < 64n ? BigInt(scan.l1Size) - first : 64n;
    const sector = new Uint8Array(Number(count * 8n));
    const dv = new DataView(sector.buffer);
    for (let i = 0n; i < count; i++) {
      const v = first + i === firstIdx ? table | COPIED : scan.l1.get(Number(first + i)) ?? 0n;
      dv.setBigUint64(Number(i) * 8, v, false);
    }
    log.push([{ kind: "write", offset: scan.l1Offset + first * 8n, bytes: sector }]);
  }
  // The tables qemu allocates for the entries past the new L1 size are freed
  // again by qcow2_shrink_l1_table: they leave no bytes, but they may grow
  // the file, which the final cut then brings back to the last used cluster
  // (a file not cluster aligned before ends aligned after). Their clusters
  // are modelled as allocated and freed with the other dropped L2 tables;
  // past TRANSIENT_MAX of them only the file length could still change, and
  // it already has. (qemu frees each range's data as it walks, so it may
  // reuse a freed cluster for a later table; either way they end up free.)
  const transient: bigint[] = [];
  let grownTo = log.size;
  if (cut < oldLen) {
    const lastIdx = (oldLen - 1n) / perTable;
    for (let i = firstIdx > newL1 ? firstIdx : newL1; i <= lastIdx && transient.length < TRANSIENT_MAX; i++) {
      // A shared table (no OFLAG_COPIED) is copied first, then dropped: a
      // transient cluster too (its old table loses the reference below).
      const e = scan.l1.get(Number(i)) ?? 0n;
      if ((e & L1E_OFFSET_MASK) !== 0n && (e & COPIED) !== 0n) continue;
      const c = rc.alloc(1n);
      transient.push(c);
      if ((c + 1n) << rc.cb > grownTo) grownTo = (c + 1n) << rc.cb;
    }
  }
  // Refcount blocks those allocations placed (alloc_refcount_block): written
  // and hooked into the table in force before anything else (a moved table
  // already holds them: its own steps came from the listener).
  const hooked = hookupPatches(rc);
  if (hooked.length > 0) {
    log.push(blockPatches(rc));
    log.push(hooked);
  }
  const step1: Patch[] = [];
  for (const z0 of scan.zeros) {
    const z = moved && (z0.start & ~(cs - 1n)) === moved[0]
      ? { ...z0, start: z0.start - moved[0] + moved[1] }
      : z0;
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
  // Both free with QCOW2_DISCARD_ALWAYS, so every cluster that reaches
  // refcount 0 is discarded (a hole punched), and so is every dropped
  // refcount block (qcow2_discard_refcount_block).
  rc.freed = [];
  for (const f of scan.frees) rc.update(f.start, f.count, -1n);
  // The copied table's original: one reference less (2 -> 1 at least).
  if (moved) rc.update(moved[0] >> rc.cb, 1n, -1n);
  for (let i = scan.l1Size - 1; BigInt(i) >= newL1; i--) {
    const off = (scan.l1.get(i) ?? 0n) & L1E_OFFSET_MASK;
    if (off) rc.update(off >> rc.cb, 1n, -1n);
  }
  for (const c of transient) rc.update(c, 1n, -1n);
  // qcow2_shrink_reftable: drop blocks with no reference but their own.
  const dropped = [...rc.table.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).filter((t) =>
    rc.unused(t)
  );
  // The table in force (qcow2_refcount_area may have moved it while the
  // transient tables were allocated), every block it names but the dropped
  // ones: the scan's entries as read, the blocks placed since as offsets.
  const reftable = new Uint8Array(Number(rc.tableEntries * 8n));
  const tv = new DataView(reftable.buffer);
  const droppedSet = new Set(dropped);
  for (const [t, off] of rc.table) {
    if (droppedSet.has(t)) continue;
    const raw = scan.reftable.get(Number(t));
    tv.setBigUint64(Number(t) * 8, raw !== undefined && (raw & REFT_OFFSET_MASK) === off ? raw : off, false);
  }
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
    rc.noteFreed(c);
    rc.drop(t);
  }
  const step2 = [...blockPatches(rc), {
    kind: "write" as const,
    offset: rc.tableOffset,
    bytes: reftable,
  }];
  // qcow2_get_last_cluster over the file length after the discard (which
  // may have added an L2 table, refcount blocks, a moved refcount table).
  if (log.size > grownTo) grownTo = log.size;
  const last = rc.lastUsed((grownTo + cs - 1n) >> rc.cb);
  if (last < 0n) throw new ResizeRefusal("unsupported", "There are no references in the refcount table");
  let size = grownTo;
  if ((last + 1n) * cs < size) size = (last + 1n) * cs;
  // The discards, once nothing references those clusters: zero patches
  // inside the file, which the applier punches as holes. Only the part the
  // final cut keeps matters.
  const punches: Patch[] = [];
  for (const [a, b] of mergeRuns(rc.freed)) {
    const from = a * cs, to = b * cs < size ? b * cs : size;
    if (from < to) punches.push({ kind: "zero", offset: from, length: to - from });
  }
  log.push(step1);
  log.push(step2);
  log.push(punches);
  log.push([sizePatch(newSize)], size);
  return { steps: log.steps, freeIndex: rc.freeIndex };
}

/** [start, end) runs sorted and merged where they touch or overlap. */
function mergeRuns(runs: [bigint, bigint][]): [bigint, bigint][] {
  const sorted = runs.map(([a, b]): [bigint, bigint] => [a, b])
    .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  const out: [bigint, bigint][] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) last[1] = r[1] > last[1] ? r[1] : last[1];
    else out.push(r);
  }
  return out;
}
