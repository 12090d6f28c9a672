// Plans qemu-img check -r all's rebuild of the qcow2 refcount structures
// (qemu 7.2 rebuild_refcount_structure, block/qcow2-refcount.c), from the
// reference counts the check guest computed (REPAIR_REFRUN runs) and the
// clusters the old refcount table and blocks added to them (REPAIR_OLDMETA).
// Pure. As qemu: each refcount block holding a non-zero count gets a
// cluster allocated first-fit in the in-memory counts (never inside a block
// already written), then the refcount table is allocated first-fit from
// cluster 0, and the blocks its clusters fall in are written again; a
// table that had to grow is allocated anew (the old allocation left
// leaked) until it stops growing. qemu then recounts the references: the
// old table and blocks and the abandoned table allocations are leaks its
// FIX_LEAKS pass repairs ("Repairing cluster N refcount=R reference=F"),
// lowering their counts and discarding the clusters left at zero.
//
// The file ends as qemu leaves it; the steps are ordered for crashes
// instead of replaying qemu's rewrites: (1) every new refcount block with
// its final counts and (2) the new table, all in clusters nothing
// references, so the old structures still describe the image; (3) the
// header's refcount_table_offset and refcount_table_clusters, the switch;
// (4) the discards of the old structures, after nothing points at them.
// A crash before (3) leaves the old image plus unreferenced clusters; after
// it, at most leaks.
import { fail, type FilePlan, MAX_PATCHES, ok, type Patch, type PlanResult } from "../plan.ts";

/** Largest image (in clusters) whose counts the planner holds in memory. */
export const MAX_REBUILD_CLUSTERS = 1 << 24;
/** Most runs accepted from the guest. */
export const MAX_REBUILD_RUNS = 1 << 20;

export interface RebuildInput {
  clusterBits: number;
  refcountBits: number;
  fileSize: bigint;
  /** qemu's nb_clusters: the length of the reference array. */
  nbClusters: bigint;
  /** Non-zero reference counts, ascending, not overlapping. */
  runs: { start: bigint; count: bigint; refcount: bigint }[];
  /** Clusters the old refcount structures add one reference to, each. */
  oldMeta: { start: bigint; count: bigint; refcount?: bigint }[];
}

export interface RebuildPlan {
  steps: FilePlan[];
  /** The FIX_LEAKS pass after the rebuild: each cluster whose new count is above its references. */
  leaks: { cluster: bigint; from: bigint; to: bigint }[];
  /** The file size after the rebuild. */
  fileSize: bigint;
  /** The new refcount table: its offset and length in clusters. */
  reftableOffset: bigint;
  reftableClusters: number;
}

function bigEndian(v: bigint, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = bytes - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

export function planQcow2Rebuild(x: RebuildInput): PlanResult<RebuildPlan> {
  const { clusterBits, refcountBits: bits } = x;
  if (clusterBits < 9 || clusterBits > 21) return fail("invalid_option", "cluster size out of range");
  if (![1, 2, 4, 8, 16, 32, 64].includes(bits)) return fail("invalid_option", "refcount width out of range");
  if (x.fileSize < 0n || x.fileSize > (1n << 62n)) return fail("invalid_size", "file size out of range");
  if (x.nbClusters < 1n || x.nbClusters > BigInt(MAX_REBUILD_CLUSTERS)) {
    return fail("unsupported", "image too large to rebuild its refcount structures");
  }
  if (x.runs.length > MAX_REBUILD_RUNS || x.oldMeta.length > MAX_REBUILD_RUNS) {
    return fail("invalid_option", "too many reference runs");
  }
  const cs = 1 << clusterBits;
  const perBlock = (cs * 8) / bits;
  const max = bits >= 32 ? 0xffffffff : 2 ** bits - 1;
  let nb = Number(x.nbClusters);
  // counts, capacity in whole refcount blocks (qemu's array is whole clusters)
  let R = new Uint32Array(Math.ceil((nb + 1) / perBlock) * perBlock);
  let prevEnd = 0n;
  for (const r of x.runs) {
    if (r.start < prevEnd || r.count < 1n || r.start + r.count > x.nbClusters || r.refcount < 1n) {
      return fail("invalid_option", "reference runs out of order or range");
    }
    if (r.refcount > BigInt(max)) return fail("invalid_option", "reference count out of range");
    R.fill(Number(r.refcount), Number(r.start), Number(r.start + r.count));
    prevEnd = r.start + r.count;
  }
  // the header is always counted: nothing is ever allocated over it
  if (!R[0]) return fail("invalid_option", "the header cluster is not counted");
  // the references after the rebuild, less the old structures
  // refcount 0: a block the old table still names but the references left
  // out (reserved bits); qemu's overlap check refuses to write over it
  const old = new Map<number, number>(), guarded = new Set<number>();
  for (const m of x.oldMeta) {
    if (m.count < 1n || m.start < 0n || m.start + m.count > x.nbClusters) {
      return fail("invalid_option", "old refcount structure out of range");
    }
    for (let c = Number(m.start); c < Number(m.start + m.count); c++) {
      if (m.refcount === 0n) guarded.add(c);
      else old.set(c, (old.get(c) ?? 0) + 1);
    }
  }
  for (const [c, n] of old) {
    if (R[c] < n) return fail("invalid_option", `cluster ${c} counted below its structures`);
  }

  const grow = (n: number) => {
    if (n > MAX_REBUILD_CLUSTERS) throw new RangeError("refcount structures grow too large");
    if (n + 1 > R.length) {
      const bigger = new Uint32Array(Math.ceil((n + 1) / perBlock) * perBlock * 2);
      bigger.set(R);
      R = bigger;
    }
    nb = n;
  };
  // alloc_clusters_imrt
  const alloc = (count: number, ffc: { v: number }): number => {
    let cluster = ffc.v, free = 0, firstGap = true;
    for (; cluster < nb && free < count; cluster++) {
      if (!R[cluster]) {
        free++;
        if (firstGap) {
          ffc.v = cluster;
          firstGap = false;
        }
      } else if (free) {
        free = 0;
      }
    }
    if (free < count) grow(cluster + count - free);
    cluster -= free;
    for (let i = 0; i < count; i++) R[cluster + i] = 1;
    return cluster;
  };
  let table: number[] = []; // refblock index -> cluster (0: none)
  // rebuild_refcounts_write_refblocks: returns whether the table grew
  const writeBlocks = (first: number, end: number): boolean => {
    const ffc = { v: 0 };
    let grown = false;
    for (let cl = first; cl < end; cl++) {
      if (cl >= nb || !R[cl]) continue;
      const idx = Math.floor(cl / perBlock), start = idx * perBlock;
      if (!(table.length > idx && table[idx])) {
        if (ffc.v < start) ffc.v = start;
        const at = alloc(1, ffc);
        if (at >= end) end = at + 1;
        if (table.length <= idx) {
          const entries = Math.ceil(((idx + 1) * 8) / cs) * cs / 8;
          table = table.concat(new Array(entries - table.length).fill(0));
          grown = true;
        }
        table[idx] = at;
      }
      cl = start + perBlock - 1;
    }
    return grown;
  };

  let rtStart = 0, rtClusters = 0;
  const abandoned: [number, number][] = [];
  try {
    writeBlocks(0, nb);
    let grown = true;
    while (grown) {
      if (rtClusters) abandoned.push([rtStart, rtClusters]);
      rtClusters = Math.ceil((table.length * 8) / cs);
      rtStart = alloc(rtClusters, { v: 0 });
      grown = writeBlocks(rtStart, rtStart + rtClusters);
    }
  } catch (e) {
    if (e instanceof RangeError) return fail("unsupported", e.message);
    throw e;
  }

  const hits = (s: number, n: number) =>
    Array.from({ length: n }, (_, k) => s + k).some((c) => guarded.has(c));
  if (table.some((at) => at && hits(at, 1)) || hits(rtStart, rtClusters)) {
    return fail(
      "unsupported",
      "qemu's rebuild would write over a refcount block the old table names, and fail",
    );
  }
  // qemu's recount and FIX_LEAKS pass: the old structures and abandoned tables drop out
  const drop = new Map(old);
  for (const [s, n] of abandoned) for (let c = s; c < s + n; c++) drop.set(c, (drop.get(c) ?? 0) + 1);
  const leaks: RebuildPlan["leaks"] = [];
  for (const c of [...drop.keys()].sort((a, b) => a - b)) {
    const from = R[c], to = from - drop.get(c)!;
    leaks.push({ cluster: BigInt(c), from: BigInt(from), to: BigInt(to) });
    R[c] = to;
  }

  // the final blocks and table
  const cs64 = BigInt(cs);
  const blockWrites: Patch[] = [];
  let end = x.fileSize;
  for (const [idx, at] of table.entries()) {
    if (!at) continue;
    const b = new Uint8Array(cs);
    for (let k = 0; k < perBlock; k++) {
      const v = R[idx * perBlock + k] ?? 0;
      if (!v) continue;
      if (bits >= 8) b.set(bigEndian(BigInt(v), bits / 8), (k * bits) / 8);
      else b[Math.floor((k * bits) / 8)] |= v << ((k * bits) % 8);
    }
    blockWrites.push({ kind: "write", offset: BigInt(at) * cs64, bytes: b });
    const e = BigInt(at + 1) * cs64;
    if (e > end) end = e;
  }
  const rt = new Uint8Array(rtClusters * cs);
  for (const [idx, at] of table.entries()) if (at) rt.set(bigEndian(BigInt(at) * cs64, 8), idx * 8);
  const rtOffset = BigInt(rtStart) * cs64;
  if (rtOffset + BigInt(rt.length) > end) end = rtOffset + BigInt(rt.length);
  blockWrites.sort((a, b) => (a.offset < b.offset ? -1 : 1));
  const steps: FilePlan[] = [];
  for (let i = 0; i < blockWrites.length; i += MAX_PATCHES) {
    steps.push({ patches: blockWrites.slice(i, i + MAX_PATCHES), fileSize: end });
  }
  steps.push({ patches: [{ kind: "write", offset: rtOffset, bytes: rt }], fileSize: end });
  const hdr = new Uint8Array(12);
  hdr.set(bigEndian(rtOffset, 8), 0);
  hdr.set(bigEndian(BigInt(rtClusters), 4), 8);
  steps.push({ patches: [{ kind: "write", offset: 48n, bytes: hdr }], fileSize: end });
  // discards of the clusters left at zero, runs joined, inside the file
  const freed = leaks.filter((l) => l.to === 0n).map((l) => l.cluster);
  const discards: Patch[] = [];
  for (let i = 0; i < freed.length;) {
    let j = i + 1;
    while (j < freed.length && freed[j] === freed[j - 1] + 1n) j++;
    const s = freed[i] * cs64, e0 = (freed[j - 1] + 1n) * cs64, e = e0 < end ? e0 : end;
    if (s < e) discards.push({ kind: "zero", offset: s, length: e - s });
    i = j;
  }
  for (let i = 0; i < discards.length; i += MAX_PATCHES) {
    steps.push({ patches: discards.slice(i, i + MAX_PATCHES), fileSize: end });
  }
  return ok({ steps, leaks, fileSize: end, reftableOffset: rtOffset, reftableClusters: rtClusters });
}
