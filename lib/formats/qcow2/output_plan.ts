// The qcow2 output planner for `instar convert -O qcow2`. The guest writes
// the data clusters (plain or compressed) from dataStart on and reports
// where it put them; this planner then lays out every piece of metadata:
//
//   cluster 0            header
//   clusters 1..         the LUKS header of an encrypted output (written by
//                        the qcow2_encrypt guest), if any
//   then                 L1 table (qcow2OutputPrologue reserves it)
//   [dataStart, dataEnd) data, written by the guest
//   alignUp(dataEnd) ..  L2 tables, then refcount blocks, then the refcount
//                        table, written as one contiguous patch
//
// The layout differs from qemu-img convert's (so "disk size" differs) but
// the image is consistent: qemu-img check finds no errors or leaks.
// The run lists come from a guest, so they are validated here and a bad
// list becomes an error result; nothing in here throws on input.
import {
  alignUp,
  divRoundUp,
  fail,
  type FilePlan,
  I64_MAX,
  ok,
  type Patch,
  type PlanResult,
} from "../plan.ts";
import {
  compressedL2Entry,
  encodeHeader,
  l1EntriesFor,
  l1Entry,
  L2_BITMAP_ALL_ALLOC,
  L2E_OFFSET_MASK,
  l2Entries,
  l2Entry,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  MIN_CLUSTER_BITS,
  OFLAG_ZERO,
  putL2,
  refcountMax,
  refcountMetadata,
  setRefcount,
} from "./encode.ts";

export interface Qcow2OutputOptions {
  clusterSize: bigint;
  refcountBits: number;
  compat: "0.10" | "1.1";
  extendedL2: boolean;
  lazyRefcounts: boolean;
  compressionType: "zlib" | "zstd";
  /** Optional backing file name (convert -B) and its format, stored in the header. */
  backingFile?: Uint8Array;
  backingFormat?: string;
  /** Encrypted output (convert -o encrypt.format=...): crypt_method 1 (aes) or 2 (luks, whose LUKS
   * header of `headerLength` bytes gets the clusters right after the header cluster). */
  crypt?: { method: 1 | 2; headerLength: bigint };
}

/** Normal data: guest clusters [guestCluster, guestCluster+count) at hostOffset, hostOffset+clusterSize, ... */
export interface DataRun {
  guestCluster: bigint;
  count: bigint;
  hostOffset: bigint;
}

/** Guest clusters [guestCluster, guestCluster+count) that read as zeroes over
 * a backing file (convert -B): zero clusters, no host cluster. */
export interface ZeroRun {
  guestCluster: bigint;
  count: bigint;
}

/** A cluster's subcluster bitmap (extended L2 entries): zero bits 32-63, allocation bits 0-31. */
export interface SubclusterBitmap {
  guestCluster: bigint;
  bitmap: bigint;
}

/** Whether one of the runs (sorted by guestCluster, disjoint) holds guest cluster c. */
function inRuns(sorted: { guestCluster: bigint; count: bigint }[], c: bigint): boolean {
  let lo = 0, hi = sorted.length;
  while (lo < hi) {
    const m = (lo + hi) >> 1;
    if (sorted[m].guestCluster + sorted[m].count <= c) lo = m + 1;
    else hi = m;
  }
  return lo < sorted.length && sorted[lo].guestCluster <= c;
}

/** A compressed cluster: `length` bytes of compressed stream at byte offset hostOffset. */
export interface CompressedCluster {
  guestCluster: bigint;
  hostOffset: bigint;
  length: bigint;
}

interface Geometry {
  clusterBits: number;
  l1Size: bigint;
  l1Clusters: bigint;
  /** The LUKS header's clusters (from cluster 1 on; 0: none). */
  cryptClusters: bigint;
  dataStart: bigint;
  guestClusters: bigint;
}

/** Checks the options the way qcow2_co_create does, with its messages. */
function optionError(o: Qcow2OutputOptions): string | undefined {
  const cs = o.clusterSize;
  let bits = 0;
  while (bits <= MAX_CLUSTER_BITS && 1n << BigInt(bits) !== cs) bits++;
  if (o.extendedL2 && o.compat === "0.10") {
    return "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)";
  }
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    return "Cluster size must be a power of two between 512 and 2048k";
  }
  if (o.extendedL2 && cs < 16384n) {
    return "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";
  }
  if (o.compat === "0.10" && o.lazyRefcounts) {
    return "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)";
  }
  if (![1, 2, 4, 8, 16, 32, 64].includes(o.refcountBits)) {
    return "Refcount width must be a power of two and may not exceed 64 bits";
  }
  if (o.compat === "0.10" && o.refcountBits !== 16) {
    return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)";
  }
  if (o.compat === "0.10" && o.compressionType !== "zlib") {
    return "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)";
  }
  return undefined;
}

function geometry(o: Qcow2OutputOptions, virtualSize: bigint): PlanResult<Geometry> {
  const bad = optionError(o);
  if (bad !== undefined) return fail("invalid_option", bad);
  if (virtualSize < 0n || virtualSize > I64_MAX) {
    return fail("invalid_size", `Invalid image size ${virtualSize}`);
  }
  if (virtualSize % 512n !== 0n) return fail("invalid_size", "Image size must be a multiple of 512 bytes");
  const cs = o.clusterSize;
  const l1Size = l1EntriesFor(virtualSize, cs, o.extendedL2);
  // qcow2_grow_l1_table refuses more than 32 MiB of L1 with EFBIG.
  if (l1Size * 8n > MAX_L1_BYTES) {
    return fail("invalid_size", "Could not resize image: Failed to grow the L1 table: File too large");
  }
  const l1Clusters = divRoundUp(l1Size * 8n, cs);
  const cryptClusters = o.crypt?.method === 2 ? divRoundUp(o.crypt.headerLength, cs) : 0n;
  return ok({
    clusterBits: cs.toString(2).length - 1,
    l1Size,
    l1Clusters,
    cryptClusters,
    dataStart: (1n + cryptClusters + l1Clusters) * cs,
    guestClusters: divRoundUp(virtualSize, cs),
  });
}

/**
 * Cluster-aligned offset where the guest starts writing data (after the
 * header and the L1 table, which the planner places first).
 */
export function qcow2OutputPrologue(
  o: Qcow2OutputOptions,
  virtualSize: bigint,
): PlanResult<{ dataStart: bigint }> {
  const g = geometry(o, virtualSize);
  return g.ok ? ok({ dataStart: g.value.dataStart }) : g;
}

const cmp = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

function bad(message: string): PlanResult<FilePlan> {
  return fail("invalid_size", message);
}

/**
 * The metadata patches for a converted image whose data the guest wrote at
 * [dataStart, dataEnd): header at 0, L1, L2 tables, refcount blocks and the
 * refcount table from alignUp(dataEnd), and the file size. `runs` and
 * `compressed` are validated (inside [dataStart, dataEnd), no host
 * overlap, guest clusters in range and mapped at most once).
 */
export function qcow2OutputFinish(
  o: Qcow2OutputOptions,
  virtualSize: bigint,
  dataEnd: bigint,
  runs: DataRun[],
  compressed: CompressedCluster[],
  zeros: ZeroRun[] = [],
  /** Extended L2 entries (convert -B): clusters of `runs` or `zeros` whose subcluster bitmap
   * (zero bits 32-63, allocation bits 0-31) is not all allocated / all zero. */
  subclusters: SubclusterBitmap[] = [],
): PlanResult<FilePlan> {
  const gr = geometry(o, virtualSize);
  if (!gr.ok) return gr;
  const g = gr.value;
  const cs = o.clusterSize;
  if (dataEnd < g.dataStart || dataEnd > L2E_OFFSET_MASK) {
    return bad(`Data end ${dataEnd} lies outside [${g.dataStart}, ${L2E_OFFSET_MASK}]`);
  }

  // Validate each run and compressed cluster on its own, then check that
  // no two claim the same guest cluster or the same host bytes.
  const guest: [bigint, bigint][] = []; // [first, end) guest clusters
  const host: [bigint, bigint][] = []; // [first, end) host bytes
  for (const r of runs) {
    if (r.count <= 0n) return bad(`Data run at guest cluster ${r.guestCluster} has no clusters`);
    if (r.guestCluster < 0n || r.guestCluster + r.count > g.guestClusters) {
      return bad(`Data run at guest cluster ${r.guestCluster} passes the image end`);
    }
    if (r.hostOffset % cs !== 0n) {
      return bad(`Data run at host offset ${r.hostOffset} is not cluster aligned`);
    }
    const end = r.hostOffset + r.count * cs;
    if (r.hostOffset < g.dataStart || end > dataEnd) {
      return bad(`Data run at host offset ${r.hostOffset} lies outside the written data`);
    }
    guest.push([r.guestCluster, r.guestCluster + r.count]);
    host.push([r.hostOffset, end]);
  }
  const compressedEntries: bigint[] = [];
  for (const c of compressed) {
    if (c.guestCluster < 0n || c.guestCluster >= g.guestClusters) {
      return bad(`Compressed cluster ${c.guestCluster} passes the image end`);
    }
    if (c.length <= 0n || c.length > cs) {
      return bad(`Compressed cluster ${c.guestCluster} has length ${c.length}`);
    }
    if (c.hostOffset < g.dataStart || c.hostOffset + c.length > dataEnd) {
      return bad(`Compressed cluster ${c.guestCluster} lies outside the written data`);
    }
    const entry = compressedL2Entry(c.hostOffset, c.length, g.clusterBits);
    if (entry === undefined) return bad(`Compressed cluster ${c.guestCluster} cannot be described`);
    compressedEntries.push(entry);
    guest.push([c.guestCluster, c.guestCluster + 1n]);
    host.push([c.hostOffset, c.hostOffset + c.length]);
  }
  if (zeros.length > 0 && o.backingFile === undefined) return bad("Zero clusters without a backing file");
  // qemu's write-zeroes on a compat=0.10 image with a backing file falls
  // back to writing zeroes as data: instar does not replay that.
  if (zeros.length > 0 && o.compat === "0.10") {
    return fail(
      "unsupported",
      "Zero clusters over a backing file in a compat=0.10 target are not supported by instar convert",
    );
  }
  for (const z of zeros) {
    if (z.count <= 0n || z.guestCluster < 0n || z.guestCluster + z.count > g.guestClusters) {
      return bad(`Zero run at guest cluster ${z.guestCluster} passes the image end`);
    }
    guest.push([z.guestCluster, z.guestCluster + z.count]);
  }
  const bitmaps = new Map<bigint, bigint>();
  const byCluster = (a: { guestCluster: bigint }, b: { guestCluster: bigint }) =>
    cmp(a.guestCluster, b.guestCluster);
  const sortedRuns = subclusters.length ? [...runs].sort(byCluster) : [];
  const sortedZeros = subclusters.length ? [...zeros].sort(byCluster) : [];
  for (const b of subclusters) {
    if (!o.extendedL2) return bad("Subcluster bitmaps without extended L2 entries");
    const alloc = b.bitmap & L2_BITMAP_ALL_ALLOC, zero = b.bitmap >> 32n;
    if (b.bitmap < 0n || zero > L2_BITMAP_ALL_ALLOC || (alloc & zero) !== 0n || b.bitmap === 0n) {
      return bad(`Subcluster bitmap of guest cluster ${b.guestCluster} is malformed`);
    }
    const inData = inRuns(sortedRuns, b.guestCluster), inZero = inRuns(sortedZeros, b.guestCluster);
    if (bitmaps.has(b.guestCluster) || (inData ? alloc === 0n : !inZero || alloc !== 0n)) {
      return bad(`Subcluster bitmap of guest cluster ${b.guestCluster} does not match its cluster`);
    }
    bitmaps.set(b.guestCluster, b.bitmap);
  }
  for (const [list, what] of [[guest, "Guest cluster"], [host, "Host offset"]] as const) {
    list.sort((a, b) => cmp(a[0], b[0]));
    for (let i = 1; i < list.length; i++) {
      if (list[i][0] < list[i - 1][1]) return bad(`${what} ${list[i][0]} is mapped twice`);
    }
  }

  // Compressed streams may share host clusters; each one touching a cluster
  // adds one reference, which must fit the refcount width.
  const shared = new Map<bigint, bigint>();
  for (const c of compressed) {
    for (let k = c.hostOffset / cs; k <= (c.hostOffset + c.length - 1n) / cs; k++) {
      shared.set(k, (shared.get(k) ?? 0n) + 1n);
    }
  }
  const rmax = refcountMax(o.refcountBits);
  for (const [k, n] of shared) {
    if (n > rmax) {
      return bad(
        `Host cluster ${k} is shared by ${n} compressed clusters, more than refcount_bits=${o.refcountBits} counts`,
      );
    }
  }

  // L2 tables: one per L1 slot that maps anything, in L1 order.
  const perL2 = l2Entries(cs, o.extendedL2);
  const l1Used = new Set<bigint>();
  for (const [first, end] of guest) {
    for (let i = first / perL2; i <= (end - 1n) / perL2; i++) l1Used.add(i);
  }
  const l1Slots = [...l1Used].sort(cmp);
  const nL2 = BigInt(l1Slots.length);
  const metaStart = alignUp(dataEnd, cs);
  const metaCluster = metaStart / cs;
  const refcounted = metaCluster + nL2;
  const { blocks, tableClusters } = refcountMetadata(refcounted, cs, o.refcountBits);
  if (tableClusters * cs > MAX_REFTABLE_BYTES) return bad("The refcount table would be too large");
  const refblockStart = metaStart + nL2 * cs;
  const reftableStart = refblockStart + blocks * cs;
  const fileSize = reftableStart + tableClusters * cs;
  if (fileSize > L2E_OFFSET_MASK) return bad(`Image file would be ${fileSize} bytes, too large`);
  // The metadata patch lives in memory; refuse what cannot be allocated.
  const metaBytes = fileSize - metaStart;
  if (metaBytes > 1n << 31n || g.l1Clusters * cs > 1n << 31n) return bad("The image metadata is too large");

  const meta = new Uint8Array(Number(metaBytes));
  const l1 = new Uint8Array(Number(g.l1Clusters * cs));
  const l1View = new DataView(l1.buffer);
  const l2Index = new Map<bigint, number>();
  l1Slots.forEach((slot, k) => {
    l2Index.set(slot, k);
    l1View.setBigUint64(Number(slot) * 8, l1Entry(metaStart + BigInt(k) * cs), false);
  });
  const l2Table = (guestCluster: bigint) => {
    const k = l2Index.get(guestCluster / perL2)!;
    return { table: meta.subarray(k * Number(cs), (k + 1) * Number(cs)), slot: Number(guestCluster % perL2) };
  };
  for (const r of runs) {
    for (let i = 0n; i < r.count; i++) {
      const { table, slot } = l2Table(r.guestCluster + i);
      const bm = bitmaps.get(r.guestCluster + i) ?? L2_BITMAP_ALL_ALLOC;
      putL2(table, slot, l2Entry(r.hostOffset + i * cs), o.extendedL2, bm);
    }
  }
  compressed.forEach((c, i) => {
    const { table, slot } = l2Table(c.guestCluster);
    putL2(table, slot, compressedEntries[i], o.extendedL2, 0n);
  });
  // Zero clusters: QCOW_OFLAG_ZERO, or every subcluster's zero bit.
  for (const z of zeros) {
    for (let i = 0n; i < z.count; i++) {
      const { table, slot } = l2Table(z.guestCluster + i);
      putL2(
        table,
        slot,
        o.extendedL2 ? 0n : OFLAG_ZERO,
        o.extendedL2,
        o.extendedL2 ? bitmaps.get(z.guestCluster + i) ?? L2_BITMAP_ALL_ALLOC << 32n : 0n,
      );
    }
  }

  // Refcounts: one for the header, L1, data, L2, refcount blocks and
  // table clusters; compressed clusters count their streams.
  const refblocks = meta.subarray(Number(refblockStart - metaStart), Number(reftableStart - metaStart));
  // Indices fit a number: the refcount blocks are under 2 GiB.
  const one = (first: bigint, count: bigint) => {
    const end = Number(first + count);
    for (let k = Number(first); k < end; k++) setRefcount(refblocks, k, 1n, o.refcountBits);
  };
  one(0n, 1n + g.cryptClusters + g.l1Clusters);
  for (const r of runs) one(r.hostOffset / cs, r.count);
  for (const [k, n] of shared) setRefcount(refblocks, Number(k), n, o.refcountBits);
  one(metaCluster, nL2 + blocks + tableClusters);
  const reftable = new DataView(meta.buffer, Number(reftableStart - metaStart));
  for (let b = 0n; b < blocks; b++) {
    reftable.setBigUint64(Number(b) * 8, refblockStart + b * cs, false);
  }

  const header = encodeHeader({
    version: o.compat === "0.10" ? 2 : 3,
    clusterBits: g.clusterBits,
    virtualSize,
    l1Size: Number(g.l1Size),
    l1TableOffset: g.l1Size > 0n ? (1n + g.cryptClusters) * cs : 0n,
    refcountTableOffset: reftableStart,
    refcountTableClusters: Number(tableClusters),
    refcountOrder: Math.log2(o.refcountBits),
    compressionType: o.compressionType,
    extendedL2: o.extendedL2,
    lazyRefcounts: o.lazyRefcounts,
    backingFile: o.backingFile,
    backingFormat: o.backingFormat,
    cryptMethod: o.crypt?.method ?? 0,
    cryptHeader: g.cryptClusters > 0n ? { offset: cs, length: o.crypt!.headerLength } : undefined,
  });
  if (!header.ok) return header;

  const patches: Patch[] = [{ kind: "write", offset: 0n, bytes: header.value }];
  // qcow2_grow_l1_table writes the table's own sectors: the cluster's tail stays a hole, as in qemu's file.
  const l1Bytes = Number(((g.l1Size * 8n + 511n) / 512n) * 512n);
  if (l1.length > 0) {
    patches.push({ kind: "write", offset: (1n + g.cryptClusters) * cs, bytes: l1.subarray(0, l1Bytes) });
  }
  if (metaStart > dataEnd) patches.push({ kind: "zero", offset: dataEnd, length: metaStart - dataEnd });
  patches.push({ kind: "write", offset: metaStart, bytes: meta });
  return ok({ patches, fileSize });
}
