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
// When an allocation in step 1 needs a refcount block the old table has
// no entry for, qemu's alloc_refcount_block places one (hooked into the old
// table), or, with the old table full, qcow2_refcount_area lays out new
// blocks and a larger old-width table past the file and switches the header
// to it; the walk reads the old table as it then stands (its size, and the
// blocks in it, as of the moment it reaches each entry). The model replays
// both (refcounts.ts).
//
// Crash order, one step each, synced: a moved old-width table first (its
// blocks and the table, the entries hooked into the table it replaces, the
// header's refcount-table fields: the image stays a valid old-width image);
// then the new blocks and the new table are written where nothing points
// yet, and the old blocks that count them (new ones among them) are
// updated, and new old blocks hooked into the old table, before the header
// (the one pointer) switches; the old structures are freed only after it
// did. A crash before the header leaves the old image with leaked
// clusters, after it the new image with leaked clusters.
//
// A count too large for the new width fails as qemu's walk does when it
// reads it: the new blocks completed before it were allocated and are
// freed again, so the file is left as it was (refused, never written, when
// those allocations needed new old-width refcount structures, which qemu
// keeps).
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
    /** The old table's size as each alloc walk saw it (it grows when the old table moves). */
    walks: WalkSizes[];
    /** Entries of the old table the writing walk visits. */
    writeEntries: bigint;
  };

/** One walk_over_reftable: the table size from entry `from` on, and the size at its end. */
export interface WalkSizes {
  sizes: { from: bigint; size: bigint }[];
  end: bigint;
}

/** Header fields: refcount_table_offset (u64) then refcount_table_clusters (u32). */
const HDR_REFTABLE = 48n;

function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

/** The old model's dirty blocks, as writes (they stop being dirty). */
function oldBlockPatches(m: RefcountModel): Patch[] {
  return m.takeDirty().map((t) => ({
    kind: "write" as const,
    offset: m.table.get(t)!,
    bytes: m.blockBytes(t),
  }));
}

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
  const old = new RefcountModel({
    clusterBits: scan.clusterBits,
    refcountOrder: scan.refcountOrder,
    tableOffset: scan.reftableOffset,
    tableClusters: BigInt(scan.reftableClusters),
    table,
    runs: scan.runs,
  });
  // Steps written while the walks allocate: each move of the old table.
  const moves: Patch[][] = [];
  old.listener = {
    tableMoved: (move) => {
      moves.push([...oldBlockPatches(old), {
        kind: "write",
        offset: old.tableOffset,
        bytes: old.tableBytes(),
      }]);
      moves.push(move.oldHookups.map((t) => ({
        kind: "write" as const,
        offset: move.oldOffset + t * 8n,
        bytes: be64(move.oldEntries.get(t)!),
      })));
      const f = new Uint8Array(12);
      new DataView(f.buffer).setBigUint64(0, old.tableOffset);
      new DataView(f.buffer).setUint32(8, Number(old.tableClusters));
      moves.push([{ kind: "write", offset: HDR_REFTABLE, bytes: f }]);
    },
  };
  const oldEntries = BigInt(scan.reftableClusters) << (cb - 3n);
  const total = oldEntries << old.rbBits; // clusters the old table can describe
  const blocks = (total + newPer - 1n) / newPer;

  // The first count too wide for the new width (the walk reads in order).
  let wide: RefRun | undefined;
  if (newBits < 64) {
    const max = (1n << BigInt(newBits)) - 1n;
    wide = scan.runs.find((r) => r.refcount > max && r.start < total);
  }
  const wideError: RefcountOrderResult | undefined = wide && {
    kind: "error",
    message: `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset ${
      hex(wide.start << cb)
    } has a refcount of ${wide.refcount}`,
  };
  if (wide && wide.start < newPer) return wideError!;
  if (blocks > MAX_REFTABLE_ENTRIES * 64n) {
    return refuse("the refcount table is too large for instar to walk");
  }

  const newTable = new Map<bigint, bigint>();
  let newSize = 0n, reftableAt = 0n, allocatedSize = 0n;
  const perTableCluster = cs / 8n;
  const walks: WalkSizes[] = [];
  let tooBig = false;
  /** alloc_refblock for new block k. */
  const allocRefblock = (k: bigint, empty: boolean): boolean => {
    if (empty) return false;
    if (k >= newSize) {
      newSize = ((k + 1n + perTableCluster - 1n) / perTableCluster) * perTableCluster;
      if (newSize > MAX_REFTABLE_ENTRIES) {
        tooBig = true;
        return false;
      }
    }
    if (newTable.has(k)) return false;
    newTable.set(k, old.alloc(1n) << cb);
    return true;
  };
  /**
   * walk_over_reftable with alloc_refblock: over the old table as it stands
   * when the walk reaches each entry (a block placed after the walk read
   * its entry counts as absent until the next walk), a new block's worth
   * of entries at a time; each new block's operation runs when the walk
   * reads the first entry after it (after that entry's table slot was
   * read), or after the loop for the last one.
   */
  const walk = (): boolean => {
    let allocated = false;
    const sizes = [{ from: 0n, size: old.tableEntries }];
    let k = 0n, fill = 0n, empty = true;
    const op = () => {
      if (allocRefblock(k, empty)) allocated = true;
      k++;
      fill = 0n;
      empty = true;
    };
    for (let j = 0n; j < old.tableEntries && !tooBig; j++) {
      if (sizes[sizes.length - 1].size !== old.tableEntries) sizes.push({ from: j, size: old.tableEntries });
      const present = old.table.has(j);
      const lo = j << old.rbBits;
      for (let i = 0n; i < old.perBlock && !tooBig;) {
        if (fill === newPer) op();
        const take = newPer - fill < old.perBlock - i ? newPer - fill : old.perBlock - i;
        if (present && empty && !old.allZero(lo + i, take)) empty = false;
        fill += take;
        i += take;
      }
    }
    if (fill > 0n && !tooBig) op();
    walks.push({ sizes, end: old.tableEntries });
    return allocated;
  };
  /**
   * The first walk as far as qemu's goes when it meets the too-wide count
   * at cluster `stop`: the new blocks completed before it are allocated
   * (in the old structures), the one holding it never is. qemu's error
   * path frees them again: the file is left as it was, unless an
   * allocation needed a new old-width refcount block or moved the old
   * table (kept by qemu; instar refuses those).
   */
  const walkUntil = (stop: bigint): boolean => {
    let k = 0n, fill = 0n, empty = true;
    for (let j = 0n; j < old.tableEntries && !tooBig; j++) {
      const present = old.table.has(j);
      const lo = j << old.rbBits;
      for (let i = 0n; i < old.perBlock && !tooBig;) {
        if (fill === newPer) {
          allocRefblock(k, empty);
          k++;
          fill = 0n;
          empty = true;
        }
        const take = newPer - fill < old.perBlock - i ? newPer - fill : old.perBlock - i;
        if (lo + i + take > stop) return true;
        if (present && empty && !old.allZero(lo + i, take)) empty = false;
        fill += take;
        i += take;
      }
    }
    return false;
  };
  const tooLarge: RefcountOrderResult = {
    kind: "error",
    message:
      "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting",
  };
  if (wide) {
    try {
      const reached = walkUntil(wide.start);
      if (tooBig) return tooLarge;
      if (!reached) return refuse("the too-wide refcount lies past the refcount table");
    } catch (e) {
      if (e instanceof RefcountError) return refuse(`refcount replay failed: ${e.message}`);
      throw e;
    }
    if (moves.length > 0 || old.takeHookups().length > 0) {
      return refuse(
        "a refcount is too large for the new width, and the blocks qemu allocates before failing " +
          "need new refcount structures",
      );
    }
    return wideError!;
  }
  try {
    for (;;) {
      const allocated = walk();
      if (tooBig) return tooLarge;
      if (!allocated) break;
      if (reftableAt) old.update(reftableAt >> cb, (allocatedSize * 8n + cs - 1n) >> cb, -1n);
      reftableAt = old.alloc((newSize * 8n + cs - 1n) >> cb) << cb;
      allocatedSize = newSize;
      if (walks.length > 64) return refuse("the refcount structures did not settle");
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
  // wrong (a corrupt image, or a hostile scan); nothing is written. The old
  // table and blocks are guarded where they stand at the end (a table qemu
  // moved away from is free, and may hold new blocks).
  const guarded: { start: bigint; count: bigint }[] = [
    { start: 0n, count: cs },
    { start: old.tableOffset, count: old.tableClusters * cs },
    ...[...old.table.values()].map((o) => ({ start: o, count: cs })),
    ...(scan.protect ?? []),
  ];
  const tableBytesLen = ((newSize * 8n + cs - 1n) >> cb) << cb;
  for (const [at, len] of [...[...newTable.values()].map((o) => [o, cs]), [reftableAt, tableBytesLen]]) {
    if (guarded.some((g) => at < g.start + g.count && g.start < at + len)) {
      return refuse("an allocation would overwrite metadata (the image is corrupt; run qemu-img check)");
    }
  }
  const tableClusters = Number((newSize * 8n + cs - 1n) >> cb);
  const finalTotal = old.tableEntries << old.rbBits;

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
    const hi = lo + newPer <= finalTotal ? lo + newPer : finalTotal;
    for (let c = lo; c < hi; c++) {
      const v = old.get(c);
      if (v !== 0n) fresh.set(c, v);
    }
  }
  const newBlocks = (): Patch[] =>
    fresh.takeDirty().map((k) => ({ kind: "write", offset: newTable.get(k)!, bytes: fresh.blockBytes(k) }));

  // Steps 1-2: old blocks that now count the new structures (and new old
  // blocks), the new blocks, the new table; then new old blocks' entries.
  const tableBytes = fresh.tableBytes(newTable, BigInt(tableClusters));
  const stepPatches: Patch[][] = [
    ...moves,
    [
      ...oldBlockPatches(old),
      ...newBlocks(),
      { kind: "write", offset: reftableAt, bytes: tableBytes.subarray(0, Number(newSize * 8n)) },
    ],
    old.takeHookups().map((t) => ({
      kind: "write" as const,
      offset: old.tableOffset + t * 8n,
      bytes: be64(old.table.get(t)!),
    })),
  ];

  // Step 4: the old blocks and table (as they stand) freed in the new structures.
  try {
    for (const off of [...old.table.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((e) => e[1])) {
      fresh.update(off >> cb, 1n, -1n);
    }
    fresh.update(old.tableOffset >> cb, old.tableClusters, -1n);
  } catch (e) {
    if (e instanceof RefcountError) return refuse(`refcount replay failed: ${e.message}`);
    throw e;
  }
  const afterPatches = newBlocks();
  // The file grows to the last cluster written.
  let end = scan.fileSize;
  for (const p of [...stepPatches.flat(), ...afterPatches]) {
    const e = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
    if (e > end) end = e;
  }
  const reftableEnd = reftableAt + tableBytesLen;
  if (reftableEnd > end) end = reftableEnd;
  return {
    kind: "write",
    before: stepPatches.filter((p) => p.length > 0).flatMap((p) => chunk(p, end)),
    after: chunk(afterPatches, end),
    reftableOffset: reftableAt,
    reftableClusters: tableClusters,
    allocWalks: walks.length,
    oldTableEntries: oldEntries,
    walks,
    writeEntries: old.tableEntries,
  };
}
