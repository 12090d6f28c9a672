// The qcow2 create planner: the exact bytes qemu-img 7.2 writes for
// `create -f qcow2`. qemu builds the image in steps (qcow2_co_create): a
// bare header with a one-cluster refcount table at cluster 1 and an empty
// refcount block at cluster 2, then allocations through its cluster
// allocator (the header, table and block themselves, then the L1 table when
// the image is grown to its size), then the full header. Where the image
// lands therefore depends on that allocator's first-fit search and on when
// it adds refcount blocks, so this planner replays the allocator on a model
// of the refcounts (the Allocator class) instead of computing a layout.
import { alignUp, fail, type FilePlan, MAX_PATCHES, ok, type Patch, type PlanResult } from "../plan.ts";
import { encodeHeader, l1EntriesFor, l1Entry, l2Entry, MAX_L1_BYTES, putL2 } from "./encode.ts";
import { RefcountError, RefcountModel } from "./refcounts.ts";
import type { Qcow2Encrypt } from "./create_encrypt.ts";
import { luksKeyBytes, luksPayloadOffset } from "../luks/create_options.ts";

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
  encrypt?: Qcow2Encrypt;
}

/** A layout this planner does not replay. */
class AllocError extends Error {}

/** A write qemu makes to the image file, in order: later ones win. */
interface DiskWrite {
  cluster: bigint;
  /** Bytes written (when not one cluster), known before the contents are. */
  length?: number;
  /** Bytes to store from the start of `cluster` (may span clusters). */
  bytes: () => Uint8Array;
}

/** Clusters one preallocating create plan may lay out (see qcow2CreatePlan):
 * 512 GiB at the default 64 KiB cluster size. */
const MAX_PREALLOC_CLUSTERS = 1n << 23n;

/**
 * qemu's refcount bookkeeping for a fresh image (the shared model in
 * refcounts.ts, started where qcow2_co_create starts: a one-cluster table
 * at cluster 1 whose first entry names the empty block at cluster 2) and
 * the writes that reach the file. Tables and blocks are written whole when
 * made and then changed in place, so each write's bytes are taken at the
 * end: a table's as it stood when it was replaced, a block's final counts.
 */
class Allocator {
  readonly m: RefcountModel;
  readonly writes: DiskWrite[] = [];

  constructor(readonly clusterSize: bigint, refcountBits: number) {
    const cs = clusterSize;
    this.m = new RefcountModel({
      clusterBits: cs.toString(2).length - 1,
      refcountOrder: Math.log2(refcountBits),
      tableOffset: cs,
      tableClusters: 1n,
      table: new Map([[0n, 2n * cs]]),
      runs: [],
      created: [0n],
    });
    const m = this.m;
    const initial = m.table;
    this.writes.push({ cluster: 1n, bytes: () => m.tableBytes(initial, 1n) });
    this.writes.push({ cluster: 2n, bytes: () => m.blockBytes(0n) });
    m.listener = {
      blockCreated: (t) => this.writes.push({ cluster: m.table.get(t)! / cs, bytes: () => m.blockBytes(t) }),
      tableMoved: () => {
        const [entries, clusters] = [m.table, m.tableClusters];
        this.writes.push({ cluster: m.tableOffset / cs, bytes: () => m.tableBytes(entries, clusters) });
      },
    };
  }

  get reftableCluster(): bigint {
    return this.m.tableOffset / this.clusterSize;
  }

  get reftableClusters(): bigint {
    return this.m.tableClusters;
  }

  /** qcow2_refcount_area(start, extra, exact) with no new block; the first cluster after it. */
  refcountArea(start: bigint, extra: bigint, exact: boolean): bigint {
    return this.m.refcountArea(start, extra, exact);
  }

  /** qcow2_alloc_clusters_at: up to n free clusters from `first` on; returns how many it took. */
  allocAt(first: bigint, n: bigint): bigint {
    return this.m.allocAt(first, n);
  }

  /** qcow2_alloc_clusters: clusters for `bytes` (first fit). */
  alloc(bytes: bigint): bigint {
    return this.m.alloc((bytes + this.clusterSize - 1n) / this.clusterSize);
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
/**
 * A create plan: steps applied in order, each within MAX_PATCHES and all for
 * the same file size (preallocated metadata scatters one L2 table per 64
 * clusters at 512-byte clusters: 10^5 separate writes, more than one plan
 * holds); `allocate` is a range qemu allocates as zeroes (falloc/full).
 */
export interface Qcow2CreatePlan {
  steps: FilePlan[];
  fileSize: bigint;
  allocate?: { offset: bigint; length: bigint };
  /** LUKS: where the crypto header goes (its clusters are written as zeroes here). */
  cryptHeader?: { offset: bigint; length: bigint };
}

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
  // Preallocation replays qemu's allocator over every cluster, so its time
  // and memory grow with the cluster count (the refcount blocks, one
  // Float64Array per L2 table and the composed writes are all in memory).
  // Past MAX_PREALLOC_CLUSTERS refuse up front with a typed error instead of
  // failing deep in the arithmetic or taking minutes (found by the
  // create_emitters fuzzer).
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
  let cryptHeader: { offset: bigint; length: bigint } | undefined;
  try {
    if (a.alloc(3n * cs) !== 0n) return fail("unsupported", "Unexpected allocation of the first clusters");
    if (l1Size > 0n) img.growL1();
    if (size > 0n && o.preallocation === "metadata") minEnd = preallocateMetadata(img, size);
    if (o.preallocation === "falloc" || o.preallocation === "full") allocate = preallocateData(img, size);
    if (o.encrypt?.format === "luks") {
      // qcow2_set_up_encryption -> qcow2_crypto_hdr_init_func: clusters for
      // the LUKS header (first fit), zeroed whole; the extension keeps the
      // header's own length.
      const length = luksPayloadOffset(luksKeyBytes(o.encrypt.luks));
      const first = a.alloc(length);
      const clusters = (length + cs - 1n) / cs;
      const bytes = Number(clusters * cs);
      a.writes.push({ cluster: first, length: bytes, bytes: () => new Uint8Array(bytes) });
      cryptHeader = { offset: first * cs, length };
    }
  } catch (e) {
    if (e instanceof RefcountError && e.kind === "too_big") {
      return fail(
        "invalid_size",
        "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
      );
    }
    if (e instanceof AllocError || e instanceof RefcountError) {
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
    cryptMethod: o.encrypt === undefined ? 0 : o.encrypt.format === "aes" ? 1 : 2,
    cryptHeader,
  });
  if (!header.ok) {
    return fail(
      "unsupported",
      `Could not assign backing file '${o.backingFile}' with format '${o.backingFormat}': No space left on device`,
    );
  }
  a.writes.unshift({ cluster: 0n, bytes: () => header.value });
  const plan = composeWrites(a.writes, cs);
  let fileSize = plan.fileSize;
  if (minEnd > fileSize) fileSize = minEnd;
  if (allocate && allocate.offset + allocate.length > fileSize) fileSize = allocate.offset + allocate.length;
  const steps: FilePlan[] = [];
  for (let i = 0; i === 0 || i < plan.patches.length; i += MAX_PATCHES) {
    steps.push({ patches: plan.patches.slice(i, i + MAX_PATCHES), fileSize });
  }
  return ok({ steps, fileSize, allocate, cryptHeader });
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
  const last = a.m.lastUsed((fileEnd + cs - 1n) / cs);
  const oldEnd = last >= 0n ? last + 1n : (fileEnd + cs - 1n) / cs;
  const nbData = (size + cs - 1n) / cs;
  const nbL2 = (nbData + img.perL2 - 1n) / img.perL2 + 1n;
  const start = a.refcountArea(oldEnd, nbData + nbL2, true);
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
