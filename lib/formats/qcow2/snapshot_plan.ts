// The qcow2 internal-snapshot planner: a pure function from the metadata the
// snapshot_scan guest extracted (snapshot_scan.ts) to the writes that perform
// qemu 7.2's qcow2_snapshot_create (snapshot -c), qcow2_snapshot_goto (-a)
// and qcow2_snapshot_delete (-d).
//
// To leave the bytes qemu-img leaves, the planner replays qemu's steps on
// the shared refcount model (refcounts.ts: first-fit allocation from the
// free-cluster hint, which starts at 0 as in a freshly opened image):
// qcow2_update_snapshot_refcount walks an L1 table entry by entry, adds the
// addend to each referenced cluster (a compressed entry's whole byte range,
// then the L2 table itself) and recomputes OFLAG_COPIED from the refcount
// it then reads (1: set; compressed: never); qcow2_write_snapshots lays out
// the table (each entry 8-aligned, header, the 24 known extra bytes, unknown
// extra data, id, name; the padding left unwritten), allocates it, then
// writes nb_snapshots and snapshots_offset and frees the old table. Every
// cluster whose refcount reaches 0 is discarded (QCOW2_DISCARD_SNAPSHOT:
// a hole punched), and an L2 table freed that way is never written back.
//
// Crash order (one synced step each; a crash between any two leaves at
// most leaked clusters and OFLAG_COPIED flags `qemu-img check -r leaks`
// puts right, never a reference to a cluster that is free):
//   0. only when an allocation finds the refcount table full
//      (qcow2_refcount_area): the refcount blocks with every count raised
//      so far and the new table; the entries qemu had hooked into the old
//      table; the header's refcount table fields. The old table is freed
//      afterwards (in blocks step 1 writes) and not discarded;
//   1. new structures nothing points at yet: the snapshot's L1 copy, the new
//      snapshot table, refcount blocks with every raised refcount (the
//      allocations and the snapshot's new references);
//   2. entries of new refcount blocks in the refcount table;
//   3. OFLAG_COPIED cleared where a refcount rose (L2 entries, L1 tables);
//   4. the pointer: the header's nb_snapshots/snapshots_offset (-c, -d) or
//      the active L1 table (-a);
// -a of a snapshot whose L1 table is larger than the active one first grows
// the active one as qcow2_grow_l1_table does (exact size): the new table
// with the active entries (and the refcount blocks counting it) synced, then
// the header's l1_size/l1_table_offset, the old table freed (not discarded:
// QCOW2_DISCARD_OTHER), its lowered count written with the next blocks.
//   5. refcount blocks with the lowered refcounts (the old table, the
//      deleted snapshot's or the replaced active layer's clusters);
//   6. OFLAG_COPIED set where a refcount fell to 1 (entries and L1);
//   7. discards of the clusters now free.
// Steps with nothing to do are left out. docs/snapshot.md has the details.
import { fail, type FilePlan, MAX_PATCHES, ok, type Patch, type PlanResult, planViolation } from "../plan.ts";
import { RefcountError, RefcountModel } from "./refcounts.ts";
import { dirtyBlockPatches, hookupPatches, tableMoveSteps } from "./refcount_growth.ts";
import type { Qcow2SnapshotScan, SnapEntry, SnapL2Run } from "./snapshot_scan.ts";

const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
const COPIED = 1n << 63n;
const U64 = (1n << 64n) - 1n;
/** qemu's QCOW_MAX_SNAPSHOTS and QCOW_MAX_SNAPSHOTS_SIZE. */
export const MAX_SNAPSHOTS = 65536;
const MAX_SNAPSHOTS_SIZE = 1024n * 65536n;
/** Header fields: nb_snapshots (u32) then snapshots_offset (u64). */
const HDR_NB_SNAPSHOTS = 60n;
/** Header fields: l1_size (u32) then l1_table_offset (u64). */
const HDR_L1_SIZE = 36n;
/** Kinds of SNAP_L2RUN (snapRunKinds). */
const KIND_DATA = 1, KIND_COMPRESSED = 2;
/** More steps than this and the plan is refused (bounded work for the applier). */
export const MAX_STEPS = 4096;

/** Why a plan fails: qemu's own error (errno name) or instar's refusal. */
export type SnapshotFailure =
  | { kind: "qemu"; errno: "EFBIG" | "EINVAL" | "ENOENT"; message: string }
  | { kind: "refuse"; message: string };

export type SnapshotPlan = { ok: true; steps: FilePlan[] } | { ok: false; failure: SnapshotFailure };

export interface CreateRequest {
  /** The name as qemu-img keeps it: at most 255 bytes. */
  name: Uint8Array;
  dateSec: number;
  dateNsec: number;
}

class Refusal extends Error {
  constructor(readonly failure: SnapshotFailure) {
    super(failure.message);
  }
}

const refuse = (message: string) => new Refusal({ kind: "refuse", message });

function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v & U64, false);
  return b;
}

/** glibc strtoul(s, NULL, 10) on a 64-bit host, over bytes. */
export function strtoul(s: Uint8Array): bigint {
  let i = 0;
  while (i < s.length && (s[i] === 0x20 || (s[i] >= 0x09 && s[i] <= 0x0d))) i++;
  let neg = false;
  if (i < s.length && (s[i] === 0x2b || s[i] === 0x2d)) neg = s[i++] === 0x2d;
  let v = 0n, over = false, digits = 0;
  for (; i < s.length && s[i] >= 0x30 && s[i] <= 0x39; i++, digits++) {
    v = v * 10n + BigInt(s[i] - 0x30);
    if (v > U64) over = true;
  }
  if (digits === 0) return 0n;
  if (over) return U64;
  return neg ? (-v) & U64 : v;
}

/** find_new_snapshot_id: one more than the largest id strtoul reads. */
export function newSnapshotId(entries: SnapEntry[]): Uint8Array {
  let max = 0n;
  for (const e of entries) {
    const id = strtoul(e.id);
    if (id > max) max = id;
  }
  return new TextEncoder().encode(((max + 1n) & U64).toString());
}

/** The patches of qcow2_write_snapshots (no padding written) and the table's size. */
export function encodeSnapshotTable(entries: SnapEntry[], at: bigint): { patches: Patch[]; size: bigint } {
  const patches: Patch[] = [];
  let off = 0n;
  for (const e of entries) {
    off = (off + 7n) & ~7n;
    const extra = 24 + e.unknownExtra.length;
    const len = 40 + extra + e.id.length + e.name.length;
    const b = new Uint8Array(len);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(0, e.l1Offset & U64);
    dv.setUint32(8, e.l1Size);
    dv.setUint16(12, e.id.length);
    dv.setUint16(14, e.name.length);
    dv.setUint32(16, e.dateSec);
    dv.setUint32(20, e.dateNsec);
    dv.setBigUint64(24, e.vmClockNsec & U64);
    // Older readers see a VM state too large for 32 bits as none.
    dv.setUint32(32, e.vmStateSize <= 0xffffffffn ? Number(e.vmStateSize) : 0);
    dv.setUint32(36, extra);
    dv.setBigUint64(40, e.vmStateSize & U64);
    dv.setBigUint64(48, e.diskSize & U64);
    dv.setBigUint64(56, e.icount & U64);
    b.set(e.unknownExtra, 64);
    b.set(e.id, 64 + e.unknownExtra.length);
    b.set(e.name, 64 + e.unknownExtra.length + e.id.length);
    patches.push({ kind: "write", offset: at + off, bytes: b });
    off += BigInt(len);
    if (off > MAX_SNAPSHOTS_SIZE) {
      throw new Refusal({ kind: "qemu", errno: "EFBIG", message: "File too large" });
    }
  }
  return { patches, size: off };
}

/** The state qemu's replay keeps: refcounts, L2 entries as the cache holds them, and the steps so far. */
class Replay {
  readonly rc: RefcountModel;
  readonly cb: bigint;
  readonly cs: bigint;
  readonly entryBytes: bigint;
  /** L2 entries changed in memory: file offset -> first word. */
  readonly l2vals = new Map<bigint, bigint>();
  /** L2 entries changed since the last takeEntries(). */
  private readonly l2dirty = new Set<bigint>();
  /** L2 table offset -> its runs, ascending. */
  readonly tables = new Map<bigint, SnapL2Run[]>();
  readonly steps: FilePlan[] = [];
  size: bigint;
  /** The active L1 table as it now stands (qcow2_grow_l1_table moves it). */
  l1Offset: bigint;
  l1Size: number;

  constructor(readonly scan: Qcow2SnapshotScan) {
    this.cb = BigInt(scan.clusterBits);
    this.cs = 1n << this.cb;
    this.entryBytes = scan.extendedL2 ? 16n : 8n;
    this.size = scan.fileSize;
    this.l1Offset = scan.l1Offset;
    this.l1Size = scan.l1Size;
    const table = new Map<bigint, bigint>();
    for (const [i, v] of scan.reftable) table.set(BigInt(i), v & REFT_OFFSET_MASK);
    this.rc = new RefcountModel({
      clusterBits: scan.clusterBits,
      refcountOrder: scan.refcountOrder,
      tableOffset: scan.reftableOffset,
      tableClusters: BigInt(scan.reftableClusters),
      table,
      runs: scan.runs,
    });
    this.rc.freed = [];
    this.rc.listener = {
      // qcow2_refcount_area (an allocation found the refcount table full):
      // the refcount blocks with every count raised so far and the new table
      // are synced before the header names the table; the entries qemu had
      // hooked into the old table go there too (its bytes stay in the file);
      // the old table's clusters are freed after the switch, in blocks the
      // next step writes.
      tableMoved: (move) => {
        for (const step of tableMoveSteps(this.rc, move, this.takeBlocks())) this.push(step);
      },
    };
    for (const r of scan.l2) {
      const t = r.entry & ~(this.cs - 1n);
      let list = this.tables.get(t);
      if (!list) this.tables.set(t, list = []);
      list.push(r);
    }
  }

  /**
   * qcow2_update_snapshot_refcount over the non-zero entries of one L1 table
   * (index -> raw value; changed in place). True when the L1 table changed.
   */
  updateSnapshotRefcount(l1: Map<number, bigint>, addend: -1n | 0n | 1n): boolean {
    const rc = this.rc, cs = this.cs, eb = this.entryBytes;
    let modified = false;
    const indices = [...l1.keys()].sort((a, b) => a - b);
    for (const i of indices) {
      const raw = l1.get(i)!;
      const l2 = raw & L1E_OFFSET_MASK;
      for (const run of this.tables.get(l2) ?? []) {
        if (addend !== 0n && run.kind === KIND_DATA) this.bump(run.refFirst, BigInt(run.count), addend);
        for (let k = 0; k < run.count; k++) {
          const at = run.entry + BigInt(k) * eb;
          const orig = run.kind === KIND_DATA ? run.value + BigInt(k) * cs : run.value;
          const old = this.l2vals.get(at) ?? orig;
          let refcount = 0n;
          if (run.kind === KIND_DATA) {
            refcount = rc.get(run.refFirst + BigInt(k));
          } else if (run.kind === KIND_COMPRESSED) {
            if (addend !== 0n) this.bump(run.refFirst, BigInt(run.refClusters), addend);
            refcount = 2n; // compressed clusters are never written in place
          }
          const entry = (old & ~COPIED) | (refcount === 1n ? COPIED : 0n);
          if (entry !== old) {
            this.l2vals.set(at, entry);
            this.l2dirty.add(at);
          }
        }
      }
      if (addend !== 0n) this.bump(l2 >> this.cb, 1n, addend);
      const next = l2 | (rc.get(l2 >> this.cb) === 1n ? COPIED : 0n);
      if (next !== raw) {
        l1.set(i, next);
        modified = true;
      }
    }
    return modified;
  }

  /**
   * update_refcount for clusters the image references: each must have a
   * refcount block (a referenced cluster without one is a corrupt image,
   * where qemu would place a block and count from 0).
   */
  bump(first: bigint, n: bigint, addend: -1n | 1n) {
    for (let t = first >> this.rc.rbBits; n > 0n && t <= (first + n - 1n) >> this.rc.rbBits; t++) {
      if (!this.rc.table.has(t)) {
        throw refuse("Inconsistent image metadata: a referenced cluster has no refcount block");
      }
    }
    this.rc.update(first, n, addend);
  }

  /** Changed L2 entries since the last call, as 8-byte writes; none into freed clusters. */
  takeEntries(): Patch[] {
    const out: Patch[] = [];
    for (const at of [...this.l2dirty].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (this.rc.get(at >> this.cb) === 0n) continue; // freed: qemu drops the cached table
      out.push({ kind: "write", offset: at, bytes: be64(this.l2vals.get(at)!) });
    }
    this.l2dirty.clear();
    return out;
  }

  /** The refcount blocks changed since the last call, whole. */
  takeBlocks(): Patch[] {
    return dirtyBlockPatches(this.rc);
  }

  /** Table entries of refcount blocks placed since the last call. */
  takeHookups(): Patch[] {
    return hookupPatches(this.rc);
  }

  /** Holes for every cluster freed and still free (refcount 0), inside the file. */
  takeDiscards(): Patch[] {
    const runs = this.rc.freed!.map(([a, b]): [bigint, bigint] => [a, b])
      .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    this.rc.freed = [];
    const merged: [bigint, bigint][] = [];
    for (const r of runs) {
      const last = merged[merged.length - 1];
      if (last && r[0] <= last[1]) last[1] = r[1] > last[1] ? r[1] : last[1];
      else merged.push(r);
    }
    const out: Patch[] = [];
    for (const [a, b] of merged) {
      for (let c = a; c < b;) {
        if (this.rc.get(c) !== 0n) {
          c++;
          continue;
        }
        let d = c + 1n;
        while (d < b && this.rc.get(d) === 0n) d++;
        const s = c * this.cs, e = d * this.cs < this.size ? d * this.cs : this.size;
        if (s < e) out.push({ kind: "zero", offset: s, length: e - s });
        c = d;
      }
    }
    return out;
  }

  /** One step (or several of at most MAX_PATCHES each); writes that touch are joined. */
  push(patches: Patch[]) {
    if (patches.length === 0) return;
    const sorted = [...patches].sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
    // Each run of touching writes is copied once (joining them pairwise
    // copied a 64 MiB table of 64 KiB entries ~500 times).
    const merged: Patch[] = [];
    for (let i = 0; i < sorted.length;) {
      const p = sorted[i];
      let j = i + 1;
      if (p.kind === "write") {
        let end = p.offset + BigInt(p.bytes.length), len = p.bytes.length;
        for (; j < sorted.length; j++) {
          const q = sorted[j];
          if (q.kind !== "write" || q.offset !== end) break;
          end += BigInt(q.bytes.length);
          len += q.bytes.length;
        }
        if (j > i + 1) {
          const b = new Uint8Array(len);
          for (let k = i, at = 0; k < j; k++) {
            const w = sorted[k] as { bytes: Uint8Array };
            b.set(w.bytes, at);
            at += w.bytes.length;
          }
          merged.push({ kind: "write", offset: p.offset, bytes: b });
          i = j;
          continue;
        }
      }
      merged.push(p);
      i = j;
    }
    for (const p of merged) {
      const end = p.offset +
        (p.kind === "write" ? BigInt(p.bytes.length) : p.kind === "zero" ? p.length : p.length);
      if (end > this.size) this.size = end;
    }
    for (let i = 0; i < merged.length; i += MAX_PATCHES) {
      const step = { patches: merged.slice(i, i + MAX_PATCHES), fileSize: this.size };
      const v = planViolation(step);
      if (v) throw refuse(`Inconsistent image metadata: ${v}`);
      this.steps.push(step);
    }
    if (this.steps.length > MAX_STEPS) throw refuse("the snapshot needs too many steps for instar");
  }

  /** Clusters [offset, offset + bytes) as qcow2_alloc_clusters allocates them; the byte offset. */
  alloc(bytes: bigint): bigint {
    const n = (bytes + this.cs - 1n) >> this.cb;
    // What an allocation frees (its undo before the -EAGAIN restart:
    // QCOW2_DISCARD_NEVER; a replaced refcount table: QCOW2_DISCARD_OTHER)
    // is not discarded, as qemu's default passes neither through.
    const freed = this.rc.freed;
    this.rc.freed = undefined;
    let at: bigint;
    try {
      at = this.rc.alloc(n);
    } finally {
      this.rc.freed = freed;
    }
    // qcow2_pre_write_overlap_check: a refcount of 0 on a cluster the image
    // uses (a corrupt image) must not make a new structure overwrite it.
    const c = this.inUse(at, at + n);
    if (c !== undefined) throw refuse(`Preventing invalid write on metadata (cluster ${c} is in use)`);
    return at << this.cb;
  }

  /** A cluster of [from, to) the image uses (header, refcount structures, tables, data), if any. */
  private inUse(from: bigint, to: bigint): bigint | undefined {
    const hit = (a: bigint, b: bigint) => (a < to && from < b ? (a > from ? a : from) : undefined);
    const span = (off: bigint, bytes: bigint) =>
      bytes <= 0n ? undefined : hit(off >> this.cb, ((off + bytes - 1n) >> this.cb) + 1n);
    const s = this.scan;
    // The refcount table as it now stands (a replaced one is free).
    let c = hit(0n, 1n) ?? span(this.rc.tableOffset, this.rc.tableClusters << this.cb) ??
      span(this.l1Offset, BigInt(this.l1Size) * 8n) ?? span(s.snapshotsOffset, s.tableSize);
    for (const v of s.reftable.values()) c ??= span(v & REFT_OFFSET_MASK, 1n);
    for (const e of s.snapshots) c ??= span(e.l1Offset, BigInt(e.l1Size) * 8n);
    for (const m of [s.activeL1, s.picked?.l1 ?? new Map<number, bigint>()]) {
      for (const v of m.values()) c ??= span(v & L1E_OFFSET_MASK, 1n);
    }
    for (const r of s.l2) {
      if (r.kind === KIND_DATA) c ??= hit(r.refFirst, r.refFirst + BigInt(r.count));
      else if (r.kind === KIND_COMPRESSED) c ??= hit(r.refFirst, r.refFirst + BigInt(r.refClusters));
    }
    return c;
  }

  /**
   * qcow2_grow_l1_table(size, exact): a new table with the active entries,
   * counted and synced, then the header's l1_size and l1_table_offset, then
   * the old table freed (QCOW2_DISCARD_OTHER: never punched).
   */
  growL1(size: number, active: Map<number, bigint>) {
    if (size <= this.l1Size) return;
    if (size > (32 << 20) / 8) throw new Refusal({ kind: "qemu", errno: "EFBIG", message: "File too large" });
    const bytes = BigInt(size) * 8n;
    const at = this.alloc(bytes);
    this.push([...this.takeBlocks(), { kind: "write", offset: at, bytes: this.l1Bytes(active, size) }]);
    this.push(this.takeHookups());
    const h = new Uint8Array(12);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, size);
    dv.setBigUint64(4, at);
    this.push([{ kind: "write", offset: HDR_L1_SIZE, bytes: h }]);
    const freed = this.rc.freed;
    this.rc.freed = undefined;
    try {
      this.free(this.l1Offset, BigInt(this.l1Size) * 8n);
    } finally {
      this.rc.freed = freed;
    }
    this.l1Offset = at;
    this.l1Size = size;
  }

  /** qcow2_free_clusters(offset, bytes): one reference less for each cluster the range touches. */
  free(offset: bigint, bytes: bigint) {
    if (bytes <= 0n) return;
    const first = offset >> this.cb, last = (offset + bytes - 1n) >> this.cb;
    this.rc.update(first, last - first + 1n, -1n);
  }

  l1Bytes(l1: Map<number, bigint>, size: number): Uint8Array {
    const b = new Uint8Array(size * 8);
    const dv = new DataView(b.buffer);
    for (const [i, v] of l1) if (i < size) dv.setBigUint64(i * 8, v);
    return b;
  }
}

/**
 * The header's nb_snapshots alone: check -r all dropping overhanging
 * snapshots writes the new count before anything else
 * (qcow2_check_read_snapshot_table), the table left where it is.
 */
export function snapshotCountPatch(nb: number): Patch {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, nb);
  return { kind: "write", offset: HDR_NB_SNAPSHOTS, bytes: b };
}

function headerPatch(nb: number, offset: bigint): Patch {
  const b = new Uint8Array(12);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, nb);
  dv.setBigUint64(4, offset);
  return { kind: "write", offset: HDR_NB_SNAPSHOTS, bytes: b };
}

/** Runs a replay; qemu's refcount failures become qemu's errno. */
function run(scan: Qcow2SnapshotScan, body: (r: Replay) => void): SnapshotPlan {
  try {
    const r = new Replay(scan);
    body(r);
    return { ok: true, steps: r.steps };
  } catch (e) {
    if (e instanceof Refusal) return { ok: false, failure: e.failure };
    if (e instanceof RefcountError) {
      if (e.kind === "too_big") {
        return { ok: false, failure: { kind: "qemu", errno: "EFBIG", message: e.message } };
      }
      if (e.kind === "range") {
        return { ok: false, failure: { kind: "qemu", errno: "EINVAL", message: e.message } };
      }
      return { ok: false, failure: { kind: "refuse", message: `Inconsistent image metadata: ${e.message}` } };
    }
    throw e;
  }
}

function checkScan(scan: Qcow2SnapshotScan) {
  if (scan.clusterBits < 9 || scan.clusterBits > 21) throw refuse("cluster size out of range");
  if (scan.refcountOrder < 0 || scan.refcountOrder > 6) throw refuse("refcount width out of range");
  if (scan.l1Size < 0 || scan.l1Size > (32 << 20) / 8) throw refuse("L1 size out of range");
  if (scan.snapshots.length > MAX_SNAPSHOTS) throw refuse("too many snapshots");
}

/** qcow2_snapshot_create with vm_state_size 0 (qemu-img snapshot -c). */
export function planSnapshotCreate(scan: Qcow2SnapshotScan, req: CreateRequest): SnapshotPlan {
  return run(scan, (r) => {
    checkScan(scan);
    if (scan.snapshots.length >= MAX_SNAPSHOTS) {
      throw new Refusal({ kind: "qemu", errno: "EFBIG", message: "File too large" });
    }
    if (req.name.length > 255 || req.name.includes(0)) throw refuse("snapshot name out of range");
    const active = new Map(scan.activeL1);
    // The L1 copy, as the active table stands before its flags change.
    const l1Bytes = BigInt(scan.l1Size) * 8n;
    const l1Copy = r.alloc(l1Bytes);
    const copy = r.l1Bytes(active, scan.l1Size);
    const entry: SnapEntry = {
      id: newSnapshotId(scan.snapshots),
      name: req.name,
      unknownExtra: new Uint8Array(0),
      l1Offset: l1Copy,
      l1Size: scan.l1Size,
      dateSec: req.dateSec,
      dateNsec: req.dateNsec,
      vmClockNsec: 0n,
      vmStateSize: 0n,
      // bs->total_sectors * BDRV_SECTOR_SIZE
      diskSize: scan.virtualSize & ~511n,
      icount: 0n,
    };
    const l1Changed = r.updateSnapshotRefcount(active, 1n);
    const entries = [...scan.snapshots, entry];
    const sizeOnly = encodeSnapshotTable(entries, 0n).size;
    const tableAt = r.alloc(sizeOnly);
    const table = encodeSnapshotTable(entries, tableAt);
    const first: Patch[] = [...r.takeBlocks(), ...table.patches];
    if (l1Bytes > 0n) first.push({ kind: "write", offset: l1Copy, bytes: copy });
    r.push(first);
    r.push(r.takeHookups());
    const flags = r.takeEntries();
    if (l1Changed) {
      flags.push({ kind: "write", offset: scan.l1Offset, bytes: r.l1Bytes(active, scan.l1Size) });
    }
    r.push(flags);
    r.push([headerPatch(entries.length, tableAt)]);
    r.free(scan.snapshotsOffset, scan.tableSize);
    r.push(r.takeBlocks());
    r.push(r.takeDiscards());
  });
}

/** qcow2_snapshot_delete of entry `index` (found by the caller). */
export function planSnapshotDelete(scan: Qcow2SnapshotScan, index: number): SnapshotPlan {
  return run(scan, (r) => {
    checkScan(scan);
    const sn = scan.snapshots[index];
    if (!sn || scan.picked?.index !== index) throw refuse("the scan did not walk the snapshot to delete");
    if (sn.l1Offset === scan.l1Offset) throw refuse("the snapshot shares the active L1 table");
    const entries = scan.snapshots.filter((_, i) => i !== index);
    const sizeOnly = encodeSnapshotTable(entries, 0n).size;
    const tableAt = r.alloc(sizeOnly);
    const table = encodeSnapshotTable(entries, tableAt);
    r.push([...r.takeBlocks(), ...table.patches]);
    r.push(r.takeHookups());
    r.push([headerPatch(entries.length, tableAt)]);
    r.free(scan.snapshotsOffset, scan.tableSize);
    r.updateSnapshotRefcount(new Map(scan.picked.l1), -1n);
    r.free(sn.l1Offset, BigInt(sn.l1Size) * 8n);
    r.push(r.takeBlocks());
    const active = new Map(scan.activeL1);
    const flags = r.updateSnapshotRefcount(active, 0n)
      ? [{
        kind: "write" as const,
        offset: scan.l1Offset,
        bytes: r.l1Bytes(active, scan.l1Size),
      }]
      : [];
    r.push([...r.takeEntries(), ...flags]);
    r.push(r.takeDiscards());
  });
}

/**
 * qcow2_write_snapshots with the entries as they are (check -r all's
 * qcow2_check_fix_snapshot_table after an incomplete entry: each entry is
 * written with its 24 bytes of extra data): the new table allocated
 * first-fit, then the header's pointer, then the old table freed.
 */
export function planSnapshotTableRewrite(scan: Qcow2SnapshotScan): SnapshotPlan {
  return run(scan, (r) => {
    checkScan(scan);
    const entries = scan.snapshots;
    const tableAt = r.alloc(encodeSnapshotTable(entries, 0n).size);
    const table = encodeSnapshotTable(entries, tableAt);
    r.push([...r.takeBlocks(), ...table.patches]);
    r.push(r.takeHookups());
    r.push([headerPatch(entries.length, tableAt)]);
    r.free(scan.snapshotsOffset, scan.tableSize);
    r.push(r.takeBlocks());
    r.push(r.takeDiscards());
  });
}

/** qcow2_snapshot_goto of entry `index` (found by the caller), same virtual size. */
export function planSnapshotGoto(scan: Qcow2SnapshotScan, index: number): SnapshotPlan {
  return run(scan, (r) => {
    checkScan(scan);
    const sn = scan.snapshots[index];
    if (!sn || scan.picked?.index !== index) throw refuse("the scan did not walk the snapshot to apply");
    if (sn.diskSize !== (scan.virtualSize & ~511n)) {
      throw refuse("instar does not apply a snapshot whose virtual size differs from the image's");
    }
    if (sn.l1Offset === scan.l1Offset) throw refuse("the snapshot shares the active L1 table");
    // The active table made large enough for the snapshot's (qcow2_grow_l1_table).
    r.growL1(sn.l1Size, scan.activeL1);
    const original = new Map(scan.picked.l1);
    // Raise: the snapshot's references, and its L1 table with the flags they leave.
    const snapL1 = new Map(original);
    const snapChanged = r.updateSnapshotRefcount(snapL1, 1n);
    r.push(r.takeBlocks());
    r.push(r.takeHookups());
    const raised = r.takeEntries();
    if (snapChanged) raised.push({ kind: "write", offset: sn.l1Offset, bytes: r.l1Bytes(snapL1, sn.l1Size) });
    r.push(raised);
    // Publish: the active L1 table becomes the snapshot's as read, padded with zeroes.
    r.push([{ kind: "write", offset: r.l1Offset, bytes: r.l1Bytes(original, r.l1Size) }]);
    // Lower: the old active layer's references.
    r.updateSnapshotRefcount(new Map(scan.activeL1), -1n);
    r.push(r.takeBlocks());
    const active = new Map(original);
    const flags = r.updateSnapshotRefcount(active, 0n)
      ? [{
        kind: "write" as const,
        offset: r.l1Offset,
        bytes: r.l1Bytes(active, r.l1Size),
      }]
      : [];
    r.push([...r.takeEntries(), ...flags]);
    r.push(r.takeDiscards());
  });
}

export { fail, ok };
export type { PlanResult };
