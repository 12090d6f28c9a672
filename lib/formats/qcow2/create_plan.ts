// The qcow2 create planner: the exact bytes qemu-img 7.2 writes for
// `create -f qcow2`. qemu builds the image in steps (qcow2_co_create): a
// bare header with a one-cluster refcount table at cluster 1 and an empty
// refcount block at cluster 2, then allocations through its cluster
// allocator (the header, table and block themselves, then the L1 table when
// the image is grown to its size), then the full header. Where the image
// lands therefore depends on that allocator's first-fit search and on when
// it adds refcount blocks, so this planner replays the allocator on a model
// of the refcounts (the Allocator class) instead of computing a layout.
import { alignUp, fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import {
  encodeHeader,
  l1EntriesFor,
  l1Entry,
  l2Entry,
  MAX_L1_BYTES,
  putL2,
  refcountMax,
  refcountMetadata,
  setRefcount,
} from "./encode.ts";

export type Prealloc = "off" | "metadata" | "falloc" | "full";

export interface Qcow2CreateOptions {
  /** Virtual size in bytes (rounded up to 512 here, as qemu does silently). */
  size: bigint;
  version: 2 | 3;
  clusterSize: bigint;
  refcountBits: number;
  extendedL2: boolean;
  lazyRefcounts: boolean;
  compressionType: "zlib" | "zstd";
  preallocation: Prealloc;
  backingFile?: string;
  backingFormat?: string;
}

/** Why the allocator could not go on (qemu: EFBIG or a case not replayed). */
class AllocError extends Error {
  constructor(message: string, readonly tooBig = false) {
    super(message);
  }
}

/** qemu's limit on the refcount table, compared with entry counts as qemu does. */
const MAX_REFTABLE = 8n * 1024n * 1024n;

/** A write qemu makes to the image file, in order: later ones win. */
interface DiskWrite {
  cluster: bigint;
  /** Bytes written (when not one cluster), known before the contents are. */
  length?: number;
  /** Bytes to store from the start of `cluster` (may span clusters). */
  bytes: () => Uint8Array;
}

/**
 * qemu's refcount bookkeeping for a fresh image: the refcount table, every
 * cluster's count, the "first free cluster" hint that only moves forward
 * unless a count drops to zero, and the writes that reach the file.
 */
/** Clusters one preallocating create plan may lay out (see qcow2CreatePlan):
 * 512 GiB at the default 64 KiB cluster size. */
const MAX_PREALLOC_CLUSTERS = 1n << 23n;

class Allocator {
  reftable: bigint[];
  reftableCluster = 1n;
  reftableClusters = 1n;
  /** Counts per refcount-block index (a fresh image never counts past 255). */
  readonly counts = new Map<number, Uint8Array>();
  free = 0n;
  readonly blockBits: bigint;
  readonly perBlock: bigint;
  readonly max: bigint;
  readonly writes: DiskWrite[] = [];

  constructor(readonly clusterSize: bigint, readonly refcountBits: number) {
    const clusterBits = clusterSize.toString(2).length - 1;
    this.blockBits = BigInt(clusterBits + 3 - Math.log2(refcountBits));
    this.perBlock = 1n << this.blockBits;
    this.max = refcountMax(refcountBits);
    // qcow2_co_create's starting point: a one-cluster table at cluster 1
    // whose first entry names the (empty) block at cluster 2.
    this.reftable = new Array(Number(clusterSize / 8n)).fill(0n);
    this.reftable[0] = 2n;
    // Tables are written whole when made and then entry by entry, so the
    // file ends up with each table array's last state.
    const initial = this.reftable;
    this.writes.push({ cluster: 1n, bytes: () => this.tableBytes(initial) });
    this.writeBlock(2n, 0n);
  }

  /** The refcount block for table index t lives at `cluster`; its final contents reach the file. */
  private writeBlock(cluster: bigint, t: bigint) {
    this.writes.push({ cluster, bytes: () => this.blockBytes(t) });
  }

  blockBytes(t: bigint): Uint8Array {
    const bytes = new Uint8Array(Number(this.clusterSize));
    const counts = this.counts.get(Number(t));
    if (counts) {
      for (let i = 0; i < counts.length; i++) {
        if (counts[i] !== 0) setRefcount(bytes, i, BigInt(counts[i]), this.refcountBits);
      }
    }
    return bytes;
  }

  tableBytes(table: bigint[]): Uint8Array {
    const bytes = new Uint8Array(table.length * 8);
    const dv = new DataView(bytes.buffer);
    table.forEach((b, i) => b !== 0n && dv.setBigUint64(i * 8, b * this.clusterSize, false));
    return bytes;
  }

  refcount(cluster: bigint): bigint {
    const t = cluster >> this.blockBits;
    if (t >= BigInt(this.reftable.length) || this.reftable[Number(t)] === 0n) return 0n;
    return BigInt(this.count(cluster));
  }

  private count(cluster: bigint): number {
    return this.counts.get(Number(cluster >> this.blockBits))?.[Number(cluster & (this.perBlock - 1n))] ?? 0;
  }

  private setCount(cluster: bigint, v: bigint) {
    if (v > 255n) throw new AllocError("refcount above 255");
    const t = Number(cluster >> this.blockBits);
    let counts = this.counts.get(t);
    if (!counts) {
      counts = new Uint8Array(Number(this.perBlock));
      this.counts.set(t, counts);
    }
    counts[Number(cluster & (this.perBlock - 1n))] = Number(v);
  }

  /** First-fit search for n free clusters from the hint (alloc_clusters_noref). */
  allocNoref(n: bigint): bigint {
    for (let i = 0n; i < n; i++) {
      const c = this.free++;
      if (this.refcount(c) !== 0n) i = -1n;
    }
    return this.free - n;
  }

  /** Makes sure the block counting `cluster` exists; "again" when one had to be made (alloc_refcount_block). */
  private ensureBlock(cluster: bigint): "ok" | "again" {
    const t = cluster >> this.blockBits;
    if (t < BigInt(this.reftable.length) && this.reftable[Number(t)] !== 0n) return "ok";
    const block = this.allocNoref(1n);
    if (block >> this.blockBits === t) {
      // The new block counts itself.
      this.setCount(block, 1n);
    } else if (this.update(block, 1n, 1n) === "again") {
      return "again";
    }
    if (t < BigInt(this.reftable.length)) {
      this.reftable[Number(t)] = block;
      this.writeBlock(block, t);
      return "again";
    }
    // The table is full: new blocks and a bigger table go past everything
    // counted so far (qcow2_refcount_area with no extra clusters).
    const used = ((cluster + 1n > block + 1n ? cluster + 1n : block + 1n) + this.perBlock - 1n) /
      this.perBlock;
    this.writeBlock(block, t);
    this.refcountArea(used * this.perBlock, t, block);
    return "again";
  }

  /**
   * qcow2_refcount_area(start, additional, exact, index, block): refcount
   * blocks and a new table from cluster `start` on, covering `additional`
   * more clusters; returns the first cluster after them.
   */
  refcountArea(start: bigint, newIndex: bigint, newBlock: bigint, extra = 0n, exact = false): bigint {
    const total = refcountMetadata(start + extra, this.clusterSize, this.refcountBits, !exact).blocks;
    if (total > MAX_REFTABLE) throw new AllocError("refcount table too large", true);
    const areaIndex = start / this.perBlock;
    const perTableCluster = this.clusterSize / 8n;
    let tableSize = exact ? total : total + (total + 1n) / 2n;
    tableSize = ((tableSize + perTableCluster - 1n) / perTableCluster) * perTableCluster;
    const tableClusters = tableSize / perTableCluster;
    if (tableSize > MAX_REFTABLE) throw new AllocError("refcount table too large", true);
    let maxIndex = this.reftable.length - 1;
    while (maxIndex > 0 && this.reftable[maxIndex] === 0n) maxIndex--;
    const table: bigint[] = new Array(Number(tableSize)).fill(0n);
    const keep = tableSize > BigInt(maxIndex) ? maxIndex + 1 : Number(tableSize);
    for (let i = 0; i < keep; i++) table[i] = this.reftable[i];
    if (newBlock !== 0n) table[Number(newIndex)] = newBlock;
    let additional = 0n;
    for (let i = areaIndex; i < total; i++) if (table[Number(i)] === 0n) additional++;
    const tableStart = start + additional;
    const end = tableStart + tableClusters;
    let at = start;
    for (let i = areaIndex; i < total; i++) {
      if (table[Number(i)] === 0n) {
        table[Number(i)] = at;
        this.writeBlock(at, i);
        at++;
      }
      const first = i * this.perBlock;
      if (first < end) {
        const from = first < start ? start - first : 0n;
        const to = end - first < this.perBlock ? end - first : this.perBlock;
        for (let j = from; j < to; j++) this.setCount(first + j, 1n);
      }
    }
    const oldCluster = this.reftableCluster;
    const oldClusters = this.reftableClusters;
    this.reftable = table;
    this.reftableCluster = tableStart;
    this.reftableClusters = tableClusters;
    this.writes.push({ cluster: tableStart, bytes: () => this.tableBytes(table) });
    // The old table's clusters are freed (their bytes stay in the file).
    this.update(oldCluster, oldClusters, -1n);
    return end;
  }

  /** Adds `addend` to n clusters from `first` (update_refcount); undoes its work on "again". */
  update(first: bigint, n: bigint, addend: bigint): "ok" | "again" {
    let oldTable = -1n;
    for (let c = first; c < first + n; c++) {
      const t = c >> this.blockBits;
      if (t !== oldTable && this.ensureBlock(c) === "again") {
        if (this.free > first) this.free = first;
        if (c > first) this.update(first, c - first, -addend);
        return "again";
      }
      oldTable = t;
      const v = BigInt(this.count(c)) + addend;
      if (v < 0n || v > this.max) throw new AllocError("refcount overflow");
      if (v === 0n && c < this.free) this.free = c;
      this.setCount(c, v);
    }
    return "ok";
  }

  /** qcow2_alloc_clusters_at: up to n free clusters from `first` on; returns how many it took. */
  allocAt(first: bigint, n: bigint): bigint {
    if (n === 0n) return 0n;
    for (;;) {
      let i = 0n;
      while (i < n && this.refcount(first + i) === 0n) i++;
      if (this.update(first, i, 1n) === "ok") return i;
    }
  }

  /** The furthest byte any write reaches so far (the file length). */
  fileEnd(): bigint {
    let end = 0n;
    for (const w of this.writes) {
      const e = w.cluster * this.clusterSize + BigInt(w.length ?? Number(this.clusterSize));
      if (e > end) end = e;
    }
    return end;
  }

  /** qcow2_alloc_clusters: clusters for `bytes`, retried until no new block got in the way. */
  alloc(bytes: bigint): bigint {
    const n = (bytes + this.clusterSize - 1n) / this.clusterSize;
    for (;;) {
      const at = this.allocNoref(n);
      if (this.update(at, n, 1n) === "ok") return at;
    }
  }
}

/** qcow2_co_create's checks, in its order and words. */
export function validateCreate(o: Qcow2CreateOptions): string | undefined {
  if (o.extendedL2 && o.version < 3) {
    return "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)";
  }
  const cs = o.clusterSize;
  if (cs < 512n || cs > 2097152n || (cs & (cs - 1n)) !== 0n) {
    return "Cluster size must be a power of two between 512 and 2048k";
  }
  if (o.extendedL2 && cs < 16384n) {
    return "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";
  }
  if (o.backingFile !== undefined && o.preallocation !== "off" && !o.extendedL2) {
    return "Backing file and preallocation can only be used at the same time if extended_l2 is on";
  }
  if (o.backingFormat !== undefined && o.backingFile === undefined) {
    return "Backing format cannot be used without backing file";
  }
  if (o.version < 3 && o.lazyRefcounts) {
    return "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)";
  }
  if (o.refcountBits > 64 || o.refcountBits <= 0 || (o.refcountBits & (o.refcountBits - 1)) !== 0) {
    return "Refcount width must be a power of two and may not exceed 64 bits";
  }
  if (o.version < 3 && o.refcountBits !== 16) {
    return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)";
  }
  if (o.compressionType !== "zlib" && o.version < 3) {
    return "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)";
  }
  return undefined;
}

/**
 * The file qemu-img create -f qcow2 writes. Errors carry qemu's message
 * (kind invalid_option / invalid_size) or, for layouts this planner does
 * not replay, kind "unsupported".
 */
/** A create plan; `allocate` is a range qemu allocates as zeroes (falloc/full). */
export type Qcow2CreatePlan = FilePlan & { allocate?: { offset: bigint; length: bigint } };

export function qcow2CreatePlan(o: Qcow2CreateOptions): PlanResult<Qcow2CreatePlan> {
  const size = alignUp(o.size, 512n);
  const bad = validateCreate(o);
  if (bad !== undefined) return fail("invalid_option", bad);
  const cs = o.clusterSize;
  const clusterBits = cs.toString(2).length - 1;
  const l1Size = l1EntriesFor(size, cs, o.extendedL2);
  // qcow2_grow_l1_table: EFBIG, which bdrv_img_create words this way.
  if (l1Size * 8n > MAX_L1_BYTES) {
    return fail(
      "invalid_size",
      "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
    );
  }
  // Preallocation replays qemu's allocator cluster by cluster, so its time
  // and memory grow with the cluster count (a JavaScript Map of count
  // arrays, at most 2^24 keys). Past MAX_PREALLOC_CLUSTERS refuse up front
  // with a typed error instead of failing deep in the arithmetic or taking
  // minutes (found by the create_emitters fuzzer).
  if (o.preallocation !== "off" && (size + cs - 1n) / cs > MAX_PREALLOC_CLUSTERS) {
    return fail(
      "unsupported",
      `Preallocating more than ${MAX_PREALLOC_CLUSTERS} clusters is beyond instar's create planner ` +
        "(try a larger cluster size)",
    );
  }
  const a = new Allocator(cs, o.refcountBits);
  const img = new Tables(a, cs, o.extendedL2, l1Size);
  let allocate: { offset: bigint; length: bigint } | undefined;
  let minEnd = 0n;
  try {
    if (a.alloc(3n * cs) !== 0n) return fail("unsupported", "Unexpected allocation of the first clusters");
    if (l1Size > 0n) img.growL1();
    if (size > 0n && o.preallocation === "metadata") minEnd = preallocateMetadata(img, size);
    if (o.preallocation === "falloc" || o.preallocation === "full") allocate = preallocateData(img, size);
  } catch (e) {
    if (e instanceof AllocError) {
      if (e.tooBig) {
        return fail(
          "invalid_size",
          "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
        );
      }
      return fail("unsupported", `This image layout (${e.message}) is not supported by instar create yet`);
    }
    throw e;
  }
  const l1Offset = img.l1Cluster * cs;

  const enc = new TextEncoder();
  const header = encodeHeader({
    version: o.version,
    clusterBits,
    virtualSize: size,
    l1Size: Number(l1Size),
    l1TableOffset: l1Offset,
    refcountTableOffset: a.reftableCluster * cs,
    refcountTableClusters: Number(a.reftableClusters),
    refcountOrder: Math.log2(o.refcountBits),
    compressionType: o.compressionType,
    extendedL2: o.extendedL2,
    lazyRefcounts: o.lazyRefcounts,
    backingFile: o.backingFile === undefined ? undefined : enc.encode(o.backingFile),
    backingFormat: o.backingFormat,
  });
  if (!header.ok) {
    return fail(
      "unsupported",
      `Could not assign backing file '${o.backingFile}' with format '${o.backingFormat}': No space left on device`,
    );
  }
  a.writes.unshift({ cluster: 0n, bytes: () => header.value });
  const plan = composeWrites(a.writes, cs);
  if (minEnd > plan.fileSize) plan.fileSize = minEnd;
  if (allocate && allocate.offset + allocate.length > plan.fileSize) {
    plan.fileSize = allocate.offset + allocate.length;
  }
  return ok({ ...plan, allocate });
}

/** BDRV_REQUEST_MAX_BYTES: the most one request (and one allocation) covers. */
const REQUEST_MAX_BYTES = ((2n ** 31n - 1n) >> 9n) << 9n;
const INT_MAX = 2n ** 31n - 1n;

/** The L1 table and the L2 tables qemu allocates as it goes. */
class Tables {
  l1Cluster = 0n;
  readonly l1: bigint[];
  /** L2 table cluster per L1 slot, and its entries (guest index -> host cluster). */
  readonly l2 = new Map<bigint, { cluster: bigint; entries: Float64Array }>();
  readonly perL2: bigint;

  constructor(
    readonly a: Allocator,
    readonly cs: bigint,
    readonly extendedL2: boolean,
    readonly l1Size: bigint,
  ) {
    this.l1 = new Array(Number(l1Size)).fill(0n);
    this.perL2 = cs / (extendedL2 ? 16n : 8n);
  }

  /** qcow2_grow_l1_table from nothing: the zeroed table goes to the first free clusters. */
  growL1() {
    this.l1Cluster = this.a.alloc(this.l1Size * 8n);
    const l1 = this.l1;
    this.a.writes.push({
      cluster: this.l1Cluster,
      length: l1.length * 8,
      bytes: () => {
        const b = new Uint8Array(l1.length * 8);
        const dv = new DataView(b.buffer);
        l1.forEach((c, i) => c !== 0n && dv.setBigUint64(i * 8, l1Entry(c * this.cs), false));
        return b;
      },
    });
  }

  /** get_cluster_table: the L2 table for a guest cluster, allocated (l2_allocate) when missing. */
  table(guestCluster: bigint) {
    const slot = guestCluster / this.perL2;
    let t = this.l2.get(slot);
    if (!t) {
      const cluster = this.a.alloc(this.cs);
      // Host cluster per slot (0 = none); cluster numbers stay below 2^53.
      const entries = new Float64Array(Number(this.perL2));
      t = { cluster, entries };
      this.l2.set(slot, t);
      this.l1[Number(slot)] = cluster;
      this.a.writes.push({
        cluster,
        bytes: () => {
          const b = new Uint8Array(Number(this.cs));
          entries.forEach((h, i) =>
            h !== 0 && putL2(b, i, l2Entry(BigInt(h) * this.cs), this.extendedL2, 0n)
          );
          return b;
        },
      });
    }
    return t;
  }

  /** qcow2_alloc_cluster_link_l2 for a preallocated run (COPIED entries, bitmaps left clear). */
  link(guestCluster: bigint, hostCluster: bigint, n: bigint) {
    // A run never crosses an L2 table (callers split at table ends).
    const entries = this.table(guestCluster).entries;
    const first = Number(guestCluster % this.perL2);
    const host = Number(hostCluster);
    for (let i = 0; i < Number(n); i++) entries[first + i] = host + i;
  }
}

/**
 * preallocation=metadata (preallocate_co): qcow2_alloc_host_offset in
 * chunks just under 2 GiB; each finds or makes the L2 table, then takes
 * data clusters (first fit, or right after the previous run); the entries
 * are linked after each chunk. Returns the length the file is then grown
 * to (sparsely).
 */
function preallocateMetadata(img: Tables, size: bigint): bigint {
  const { a, cs } = img;
  const maxChunk = (INT_MAX / cs) * cs;
  const maxReq = REQUEST_MAX_BYTES / cs;
  let offset = 0n;
  let bytes = size;
  let host = -1n;
  let cur = 0n;
  while (bytes > 0n) {
    cur = bytes < maxChunk ? bytes : maxChunk;
    // qcow2_alloc_host_offset(offset, cur)
    let start = offset;
    let remaining = cur;
    let clusterOffset = -1n;
    let curBytes = 0n;
    host = -1n;
    const metas: [bigint, bigint, bigint][] = [];
    for (;;) {
      if (host === -1n && clusterOffset !== -1n) host = clusterOffset;
      start += curBytes;
      remaining -= curBytes;
      if (clusterOffset !== -1n) clusterOffset += curBytes;
      if (remaining === 0n) break;
      curBytes = remaining;
      // handle_copied finds (or makes) the L2 table; nothing is allocated yet.
      img.table(start / cs);
      // handle_alloc
      const into = start % cs;
      let nb = (into + curBytes + cs - 1n) / cs;
      const idx = (start / cs) % img.perL2;
      if (nb > img.perL2 - idx) nb = img.perL2 - idx;
      if (nb > maxReq) nb = maxReq;
      img.table(start / cs);
      let at: bigint;
      if (clusterOffset === -1n) {
        at = a.alloc(nb * cs);
      } else {
        at = clusterOffset / cs;
        nb = a.allocAt(at, nb);
        if (nb === 0n) {
          curBytes = 0n;
          break;
        }
      }
      const avail = nb * cs;
      const nbBytes = curBytes + into < avail ? curBytes + into : avail;
      clusterOffset = at * cs + into;
      if (nbBytes - into < curBytes) curBytes = nbBytes - into;
      metas.push([start / cs, at, (into + curBytes + cs - 1n) / cs]);
    }
    cur -= remaining;
    for (const [g, h, n] of metas) img.link(g, h, n);
    bytes -= cur;
    offset += cur;
  }
  // The file must reach the last allocated byte (a sparse extension).
  // qemu-img 7.2's file ends on the subcluster boundary after it (observed
  // for unaligned sizes: 1000 bytes -> the whole data cluster, or 2 KiB of
  // it with extended L2 entries), so round.
  return alignUp(host + cur, img.extendedL2 ? cs / 32n : cs);
}

/**
 * preallocation=falloc/full (the qcow2_co_truncate grow path): refcount
 * structures for all new clusters past the current end, the data clusters
 * right after them, then the L2 tables as linking needs them. Returns the
 * data range, which qemu allocates in the file (zero-filled).
 */
function preallocateData(img: Tables, size: bigint): { offset: bigint; length: bigint } {
  const { a, cs } = img;
  const fileEnd = a.fileEnd();
  let last = (fileEnd + cs - 1n) / cs - 1n;
  while (last >= 0n && a.refcount(last) === 0n) last--;
  const oldEnd = last >= 0n ? last + 1n : (fileEnd + cs - 1n) / cs;
  const nbData = (size + cs - 1n) / cs;
  const nbL2 = (nbData + img.perL2 - 1n) / img.perL2 + 1n;
  const start = a.refcountArea(oldEnd, 0n, 0n, nbData + nbL2, true);
  if (a.allocAt(start, nbData) !== nbData) throw new AllocError("data clusters not contiguous");
  let host = start;
  let guest = 0n;
  let left = nbData;
  while (left > 0n) {
    let n = img.perL2 - (guest % img.perL2);
    if (n > left) n = left;
    img.link(guest, host, n);
    guest += n;
    host += n;
    left -= n;
  }
  return { offset: start * cs, length: nbData * cs };
}

/**
 * The file the ordered writes leave behind: later writes win, unwritten
 * ranges are holes, the file ends where the furthest write ends.
 */
function composeWrites(writes: DiskWrite[], cs: bigint): FilePlan {
  const content = new Map<bigint, Uint8Array>();
  let fileSize = 0n;
  for (const w of writes) {
    const bytes = w.bytes();
    const end = w.cluster * cs + BigInt(bytes.length);
    if (end > fileSize) fileSize = end;
    for (let k = 0n; k * cs < BigInt(bytes.length); k++) {
      const piece = bytes.subarray(Number(k * cs), Number((k + 1n) * cs));
      const c = w.cluster + k;
      const old = content.get(c);
      if (old && old.length > piece.length) {
        const merged = old.slice();
        merged.set(piece);
        content.set(c, merged);
      } else {
        content.set(c, piece);
      }
    }
  }
  // Runs of consecutive clusters become one patch each.
  const clusters = [...content.keys()].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  const patches: Patch[] = [];
  let i = 0;
  while (i < clusters.length) {
    let j = i;
    while (
      j + 1 < clusters.length && clusters[j + 1] === clusters[j] + 1n &&
      content.get(clusters[j])!.length === Number(cs)
    ) j++;
    const parts = clusters.slice(i, j + 1).map((c) => content.get(c)!);
    const len = parts.reduce((n, p) => n + p.length, 0);
    const bytes = new Uint8Array(len);
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.length;
    }
    patches.push({ kind: "write", offset: clusters[i] * cs, bytes });
    i = j + 1;
  }
  return { patches, fileSize };
}
