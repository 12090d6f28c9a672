// The qcow2 refcount-width planner (amend -o refcount_bits=N): a pure
// function from the metadata the guest's resize_scan reported (refcount
// table, refcounts as runs) to the writes qemu 7.2's
// qcow2_change_refcount_order makes, replayed on the shared refcount model
// (refcounts.ts) so the file comes out as qemu's does:
//
//   1. walks over the old refcount table, new refblock by new refblock
//      (1 << (cluster_bits + 3 - order) entries each): a block with a
//      non-zero count gets a new-table slot (the table grows in whole
//      clusters) and a cluster from qcow2_alloc_clusters in the OLD
//      structures; after a walk that allocated, the new table's clusters
//      are (re)allocated (the previous try freed first); repeated until a
//      walk allocates nothing;
//   2. the new refblocks are written, holding the old counts (which now
//      include the new blocks and table) at the new width, then the new
//      refcount table;
//   3. the header switches refcount_order, the table offset and its size;
//   4. the old refblocks and the old table are freed in the NEW structures
//      (QCOW2_DISCARD_OTHER: nothing is discarded), the new blocks rewritten.
//
// Crash order, one step each, synced: the new blocks and the new table are
// written where nothing points yet, and the old blocks that count them are
// updated, before the header (the one pointer) switches; the old structures
// are freed only after it did. A crash before the header leaves the old
// image with leaked clusters, after it the new image with leaked clusters.
//
// Refused (never written): a walk that would need new blocks or a new table
// in the old structures (qemu hooks them up; not replayed here yet), and a
// count too large for the new width past the first new block (qemu would
// have allocated blocks before failing).
import { type FilePlan, MAX_PATCHES, type Patch } from "../plan.ts";
import { RefcountError, RefcountModel, type RefRun } from "./refcounts.ts";

const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
/** QCOW_MAX_REFTABLE_SIZE in entries. */
const MAX_REFTABLE_ENTRIES = (8n << 20n) / 8n;
/** The most refcount entries the planner re-encodes (bounds time and memory). */
export const MAX_REENCODED = 1n << 26n;

export interface RefcountOrderScan {
  clusterBits: number;
  refcountOrder: number;
  fileSize: bigint;
  reftableOffset: bigint;
  reftableClusters: number;
  /** Refcount-table entries with an offset (raw values). */
  reftable: Map<number, bigint>;
  /** Non-zero refcounts, ascending. */
  runs: RefRun[];
  /** Byte ranges no allocation may land in besides the header, the old
   * table and blocks (the L1 table, L2 tables): qemu's overlap check. */
  protect?: { start: bigint; count: bigint }[];
}

export type RefcountOrderResult =
  | { kind: "error"; message: string }
  | { kind: "refuse"; why: string }
  | {
    kind: "write";
    /** Steps 1-2 (new structures), 3 is the caller's header, then 4. */
    before: FilePlan[];
    after: FilePlan[];
    reftableOffset: bigint;
    reftableClusters: number;
    /** Alloc walks made (qemu's progress counts them; the write walk follows). */
    allocWalks: number;
    /** Entries of the old refcount table (each walk visits them). */
    oldTableEntries: bigint;
  };

const hex = (v: bigint) => (v === 0n ? "0" : `0x${v.toString(16)}`);

function chunk(patches: Patch[], fileSize: bigint): FilePlan[] {
  const out: FilePlan[] = [];
  for (let i = 0; i < patches.length; i += MAX_PATCHES) {
    out.push({ patches: patches.slice(i, i + MAX_PATCHES), fileSize });
  }
  return out;
}

/** qcow2_change_refcount_order to 2^order bits. */
export function planRefcountOrder(scan: RefcountOrderScan, order: number): RefcountOrderResult {
  const refuse = (why: string): RefcountOrderResult => ({ kind: "refuse", why });
  const cb = BigInt(scan.clusterBits), cs = 1n << cb;
  const newBits = 1 << order;
  const newPer = 1n << (cb + 3n - BigInt(order));
  const table = new Map<bigint, bigint>();
  for (const [i, v] of scan.reftable) {
    const off = v & REFT_OFFSET_MASK;
    if (off % cs !== 0n) return { kind: "error", message: "Image is corrupt (unaligned refblock offset)" };
    if (off < cs || off + cs > scan.fileSize) {
      return refuse("a refcount block lies outside the file (the image is corrupt)");
    }
    table.set(BigInt(i), off);
  }
  const rtEnd = scan.reftableOffset + BigInt(scan.reftableClusters) * cs;
  if (scan.reftableOffset < cs || rtEnd > scan.fileSize) {
    return refuse("the refcount table lies outside the file (the image is corrupt)");
  }
  const seenBlocks = new Set<bigint>();
  for (const off of table.values()) {
    if (seenBlocks.has(off) || (off < rtEnd && scan.reftableOffset < off + cs)) {
      return refuse("refcount blocks overlap each other or the refcount table (the image is corrupt)");
    }
    seenBlocks.add(off);
  }
  let grew = false;
  const old = new RefcountModel({
    clusterBits: scan.clusterBits,
    refcountOrder: scan.refcountOrder,
    tableOffset: scan.reftableOffset,
    tableClusters: BigInt(scan.reftableClusters),
    table,
    runs: scan.runs,
  });
  old.listener = { blockCreated: () => (grew = true), tableMoved: () => (grew = true) };
  const oldEntries = BigInt(scan.reftableClusters) << (cb - 3n);
  const total = oldEntries << old.rbBits; // clusters the old table can describe
  const blocks = (total + newPer - 1n) / newPer;

  // The first count too wide for the new width (the walk reads in order).
  if (newBits < 64) {
    const max = (1n << BigInt(newBits)) - 1n;
    for (const r of scan.runs) {
      if (r.refcount <= max || r.start >= total) continue;
      if (r.start >= newPer) {
        return refuse("a refcount is too large for the new width past the first refcount block");
      }
      return {
        kind: "error",
        message: `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset ${
          hex(r.start << cb)
        } has a refcount of ${r.refcount}`,
      };
    }
  }
  if (blocks > MAX_REFTABLE_ENTRIES * 64n) {
    return refuse("the refcount table is too large for instar to walk");
  }

  const newTable = new Map<bigint, bigint>();
  let newSize = 0n, reftableAt = 0n, allocatedSize = 0n, walks = 0;
  const perTableCluster = cs / 8n;
  try {
    for (;;) {
      let allocated = false;
      walks++;
      for (let k = 0n; k < blocks; k++) {
        const lo = k * newPer, n = lo + newPer <= total ? newPer : total - lo;
        if (old.allZero(lo, n)) continue;
        if (k >= newSize) {
          newSize = ((k + 1n + perTableCluster - 1n) / perTableCluster) * perTableCluster;
          if (newSize > MAX_REFTABLE_ENTRIES) {
            return {
              kind: "error",
              message:
                "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting",
            };
          }
        }
        if (!newTable.has(k)) {
          newTable.set(k, old.alloc(1n) << cb);
          allocated = true;
        }
        if (grew) return refuse("the new refcount blocks need new refcount structures in the old ones");
      }
      if (!allocated) break;
      if (reftableAt) old.update(reftableAt >> cb, (allocatedSize * 8n + cs - 1n) >> cb, -1n);
      reftableAt = old.alloc((newSize * 8n + cs - 1n) >> cb) << cb;
      allocatedSize = newSize;
      if (grew) return refuse("the new refcount table needs new refcount structures in the old ones");
    }
  } catch (e) {
    if (e instanceof RefcountError) return refuse(`refcount replay failed: ${e.message}`);
    throw e;
  }
  if (newTable.size === 0) return refuse("the image has no refcounts");
  if (BigInt(newTable.size) * newPer > MAX_REENCODED) {
    return refuse("too many refcounts for instar to re-encode");
  }

  // qemu's overlap check: an allocation over metadata means the counts were
  // wrong (a corrupt image, or a hostile scan); nothing is written.
  const guarded: { start: bigint; count: bigint }[] = [
    { start: 0n, count: cs },
    { start: scan.reftableOffset, count: BigInt(scan.reftableClusters) * cs },
    ...[...table.values()].map((o) => ({ start: o, count: cs })),
    ...(scan.protect ?? []),
  ];
  const tableBytesLen = ((newSize * 8n + cs - 1n) >> cb) << cb;
  for (const [at, len] of [...[...newTable.values()].map((o) => [o, cs]), [reftableAt, tableBytesLen]]) {
    if (guarded.some((g) => at < g.start + g.count && g.start < at + len)) {
      return refuse("an allocation would overwrite metadata (the image is corrupt; run qemu-img check)");
    }
  }
  // The file grows to the last cluster allocated.
  let end = scan.fileSize;
  for (const off of [...newTable.values(), reftableAt + ((newSize * 8n + cs - 1n) >> cb << cb) - cs]) {
    if (off + cs > end) end = off + cs;
  }
  // Every cluster the plan writes must lie inside the new end and past the header.
  const tableClusters = Number((newSize * 8n + cs - 1n) >> cb);

  // The new counts: the old ones (as the allocations left them) at the new width.
  const fresh = new RefcountModel({
    clusterBits: scan.clusterBits,
    refcountOrder: order,
    tableOffset: reftableAt,
    tableClusters: BigInt(tableClusters),
    table: newTable,
    runs: [],
    created: newTable.keys(),
  });
  for (const k of newTable.keys()) {
    const lo = k * newPer;
    const hi = lo + newPer <= total ? lo + newPer : total;
    for (let c = lo; c < hi; c++) {
      const v = old.get(c);
      if (v !== 0n) fresh.set(c, v);
    }
  }
  const newBlocks = (): Patch[] =>
    fresh.takeDirty().map((k) => ({ kind: "write", offset: newTable.get(k)!, bytes: fresh.blockBytes(k) }));

  // Steps 1-2: old blocks that now count the new structures, the new blocks, the new table.
  const oldBlocks: Patch[] = old.takeDirty().map((t) => ({
    kind: "write",
    offset: old.table.get(t)!,
    bytes: old.blockBytes(t),
  }));
  const tableBytes = fresh.tableBytes(newTable, BigInt(tableClusters));
  const before = chunk([
    ...oldBlocks,
    ...newBlocks(),
    { kind: "write", offset: reftableAt, bytes: tableBytes.subarray(0, Number(newSize * 8n)) },
  ], end);

  // Step 4: the old blocks and table freed in the new structures.
  try {
    for (const off of [...table.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((e) => e[1])) {
      fresh.update(off >> cb, 1n, -1n);
    }
    fresh.update(scan.reftableOffset >> cb, BigInt(scan.reftableClusters), -1n);
  } catch (e) {
    if (e instanceof RefcountError) return refuse(`refcount replay failed: ${e.message}`);
    throw e;
  }
  const after = chunk(newBlocks(), end);
  return {
    kind: "write",
    before,
    after,
    reftableOffset: reftableAt,
    reftableClusters: tableClusters,
    allocWalks: walks,
    oldTableEntries: oldEntries,
  };
}
