// Fuzz target bitmap_planner: `bitmap`'s planner
// (lib/formats/qcow2/bitmap_plan.ts) on what a hostile guest could report
// (bitmap directory entries, table entries, refcounts) and any action list.
//
// Input:
//   0      cluster_bits = 9 + (b % 13)        1  refcount order = b % 7
//   2      bit 0 v3, bits 1-2 bitmaps (0..3), bit 3 -b source, bit 4 a merge result,
//          bit 5 full mode (when the one-cluster refcount table covers at most 2^14 clusters:
//          every table entry names a block, the used clusters end byte 11 % 8 clusters short
//          of its edge, so the plan's allocations move the table),
//          bit 6 tail bits: the first bitmap has bits past its end (TAIL_BITS) and its last nonzero
//          entry a BITMAP_CUT (keep from the entry's cluster byte, boundary byte maybe), taken as
//          qemu loads them (bitmap_tail.ts), as lib/cli/bitmap.ts does (merges included),
//          bit 7 the scan taken as loaded even without tail bits (all-ones entries, below)
//   3-10   virtual size (u64 LE, masked to 2^44, then scaled down by 16 until the finest
//          bitmap's table fits 1024 clusters)
//   11-12  used clusters (u16 LE, <= one refcount block)
//   13     granularity choice (0 = default)   14  name choice
//   15-22  actions: each byte b: act b % 6 (add remove clear enable disable merge), merge source b >> 3
//   23..   per bitmap 16 bytes: name (1 byte choice), flags, granularity bits, table cluster (u16),
//          table size (u16), entry count, then entries from the following bytes (u16 index, u16 cluster,
//          nonzero: bit 0; bits 0 and 1 both set: an all-ones entry, value 1, state ALL_ONES)
//
// Invariants on every plan:
//   1. every step passes checkPlan (inside the file, no overlap, bounded), and there are few steps;
//   2. header writes are the whole header cluster at offset 0 naming the refcount table
//      in force, or (a moved table) its 12-byte offset/clusters fields, naming a table
//      written whole in an earlier step;
//   3. copies move whole clusters, from a data cluster the scan listed or the merge's staging area,
//      to a cluster-aligned place below the staging area; but a tail-bits cut cluster, copied
//      up to the end of the 64-bit word holding the bitmap's end and zero after (one write);
//   4. discards cover only data clusters the scan listed (old bitmap data), whole clusters;
//   5. refcount blocks are written whole; the refcount table in force only by 8-byte
//      entries (hook-ups) naming a block an earlier step wrote whole.
import type * as BitmapPlan from "../../lib/formats/qcow2/bitmap_plan.ts";
import type * as BitmapTail from "../../lib/formats/qcow2/bitmap_tail.ts";
import { bitmapModel } from "../engine/qcow2_layout.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";

const mod = await optional<typeof BitmapPlan>("../../lib/formats/qcow2/bitmap_plan.ts");
const tail = await optional<typeof BitmapTail>("../../lib/formats/qcow2/bitmap_tail.ts");

const NAMES = ["b0", "b1", "", "x".repeat(1024), "b2"];
const GRANS = [0n, 512n, 1000n, 4096n, 65536n, 1n << 31n, 1n << 32n, 256n];
const ACTS = ["add", "remove", "clear", "enable", "disable", "merge"] as const;
const enc = new TextEncoder();

/** Bytes with a 16-bit reader (the engine's has 8, 32 and 64). */
class Bytes16 extends Bytes {
  u16(at: number): number {
    return this.u8(at) | (this.u8(at + 1) << 8);
  }
}

function run(d: Uint8Array, cov: Cov): void {
  if (!mod) return;
  const b = new Bytes16(d);
  const clusterBits = 9 + (b.u8(0) % 13);
  const order = b.u8(1) % 7;
  const flags = b.u8(2);
  const cs = 1n << BigInt(clusterBits);
  let size = b.u64(3) & ((1n << 44n) - 1n);
  // A bitmap table of the finest granularity over more than 1024 clusters
  // makes qemu's allocator hook up a block per -EAGAIN restart of a large
  // allocation (seconds per input with small clusters): the size is scaled
  // down until it fits, so small clusters still meet big (not huge) tables.
  const finestClusters = (n: bigint) => ((n / 512n + 63n) / 64n * 8n + cs - 1n) / cs;
  while (finestClusters(size) > 1024n) size >>= 4n;
  const perBlock = (cs * 8n) >> BigInt(order);
  const entries0 = cs / 8n;
  const full = (flags & 32) !== 0 && entries0 * perBlock <= 1n << 14n;
  const used = full
    ? entries0 * perBlock - BigInt(b.u16(11) % 8)
    : 8n + BigInt(b.u16(11)) % (perBlock > 64n ? perBlock - 16n : 48n);
  // Refcount blocks: block 0 at cluster 2; in full mode blocks 1.. at the
  // last used clusters (out of the bitmaps' reach).
  const blockAt = new Map<bigint, bigint>([[0n, 2n]]);
  if (full) { for (let t = 1n; t < entries0; t++) blockAt.set(t, used - entries0 + t); }
  const reach = full ? used - entries0 : used;
  const nb = (flags >> 1) & 3;
  const bitmaps: BitmapPlan.BitmapScanDir[] = [];
  const dataClusters = new Set<bigint>();
  let at = 23;
  for (let i = 0; i < nb && at + 16 <= d.length; i++, at += 16) {
    const entries: BitmapPlan.BitmapScanEntry[] = [];
    const n = b.u8(at + 9) % 8;
    let idx = 0n;
    for (let k = 0; k < n && at + 16 + k * 5 + 5 <= d.length; k++) {
      idx += 1n + BigInt(b.u16(at + 16 + k * 5) % 4);
      const c = 4n + BigInt(b.u16(at + 18 + k * 5)) % (reach - 4n);
      if ((b.u8(at + 20 + k * 5) & 3) === 3) {
        entries.push({ index: idx - 1n, value: 1n, nonzero: true });
        continue;
      }
      entries.push({ index: idx - 1n, value: c * cs, nonzero: (b.u8(at + 20 + k * 5) & 1) !== 0 });
      dataClusters.add(c);
    }
    const ones = entries.some((e) => e.value === 1n);
    bitmaps.push({
      name: enc.encode(`${NAMES[b.u8(at) % NAMES.length].slice(0, 8)}${i}`),
      flags: b.u8(at + 1) & 3,
      granularityBits: 9 + (b.u8(at + 2) % 23),
      tableOffset: (4n + BigInt(b.u16(at + 3)) % (reach - 4n)) * cs,
      tableSize: 1n + BigInt(b.u16(at + 5)) % 64n,
      state: ones ? 1 : 0,
      entries,
    });
  }
  // Tail bits (flags bit 6): the first bitmap's last nonzero entry is cut at the bitmap's end.
  const cutClusters = new Map<bigint, bigint>();
  const tailMode = (flags & 64) !== 0 && tail !== undefined && bitmaps.length > 0;
  if (tailMode) {
    const b0 = bitmaps[0];
    // As the scan's decoder allows (bitmap_scan.ts): a data entry, never an all-ones one.
    const last = [...b0.entries].reverse().find((e) => e.nonzero && e.value !== 1n);
    if (last) {
      const keep = BigInt(b.u8(13) * 37) % cs, partial = (b.u8(14) & 1) !== 0 || keep === 0n;
      last.cut = { keep, byte: partial ? b.u8(14) >> 1 : undefined };
    }
    bitmaps[0] = { ...b0, state: b0.state | 2 };
  }
  let scan: BitmapPlan.Qcow2BitmapScan = {
    model: bitmapModel((flags & 1) !== 0 ? 3 : 2, clusterBits, order, size, bitmaps.length),
    fileSize: used * cs - BigInt(b.u8(13)) % cs,
    reftableOffset: cs,
    reftableClusters: 1n,
    reftable: new Map([...blockAt].map(([t, c]) => [Number(t), c * cs])),
    runs: [{ start: 0n, count: used, refcount: 1n }],
    dirOffset: bitmaps.length ? 3n * cs : 0n,
    dirSize: bitmaps.length ? BigInt(bitmaps.length) * 32n : 0n,
    bitmaps,
  };
  const actions: BitmapPlan.BitmapAction[] = [];
  for (let k = 15; k < 23; k++) {
    const v = b.u8(k);
    if (v === 0 && k > 15) break;
    const act = ACTS[v % 6];
    actions.push(
      act === "merge"
        ? { act, src: enc.encode(`${NAMES[(v >> 3) % NAMES.length].slice(0, 8)}${(v >> 5) % 3}`) }
        : { act },
    );
  }
  if (tailMode || (tail !== undefined && (flags & 128) !== 0)) {
    // As lib/cli/bitmap.ts loads them: tail bits and all-ones entries (flags bit 7 without tail bits).
    scan = tail!.tailBitsAsLoaded(scan);
    for (const e of scan.bitmaps[0]?.entries ?? []) {
      if (!e.cut) continue;
      invariant(
        e.cut.byte === undefined && e.cut.keep % 8n === 0n && e.cut.keep > 0n && e.cut.keep < cs,
        "bitmap: a tail cut not of whole words",
      );
      cutClusters.set(e.value / cs, e.cut.keep);
    }
    cov.hit(`bitmap:tail:${cutClusters.size}`);
  }
  const req: BitmapPlan.BitmapRequest = {
    name: enc.encode(`${NAMES[b.u8(14) % NAMES.length]}${b.u8(14) >> 6}`),
    granularity: GRANS[b.u8(13) % GRANS.length],
    actions,
    nodeName: "#block000",
    source: (flags & 8) !== 0 ? { bitmaps: bitmaps.slice(0, 1), virtualSize: size } : undefined,
  };
  cov.hit(
    `bitmap:v${scan.model.version}:nb:${bitmaps.length}:acts:${
      sizeClass(BigInt(actions.length))
    }:full:${full}`,
  );
  let r = mod.planQcow2Bitmap(scan, req);
  if (!checkResult(r, "bitmap", cov)) return;
  let staging: bigint | undefined;
  if (r.value.mergeJob) {
    const job = r.value.mergeJob;
    cov.hit(`bitmap:merge:${job.external}`);
    invariant(job.staging % cs === 0n && job.staging >= scan.fileSize, "bitmap: staging inside the file");
    staging = job.staging;
    if ((flags & 16) === 0) return;
    const entries = mod.tableSizeFor(size & ~511n, job.granularityBits, cs);
    const data = new Map<bigint, bigint>();
    for (let k = 0n; k < entries && k < 16n; k += 2n) data.set(k, job.staging + k * cs);
    const fileEnd = data.size ? job.staging + (entries < 16n ? entries : 16n) * cs : scan.fileSize;
    r = mod.planQcow2Bitmap(scan, { ...req, merged: { data, fileEnd } });
    if (!checkResult(r, "bitmap-merged", cov)) return;
    invariant(r.value.mergeJob === undefined, "bitmap: merge asked for twice");
  }
  const steps = r.value.steps;
  invariant(steps.length <= 40, `bitmap: ${steps.length} steps`);
  const blockOffsets = new Set([...blockAt.values()].map((c) => c * cs));
  // Whole clusters (and whole tables) written by completed steps: offset -> length.
  const written = new Map<bigint, bigint>();
  let table = { offset: cs, clusters: 1n };
  for (const s of steps) {
    checkPlan(s, "bitmap", cov);
    const now = new Map<bigint, bigint>();
    for (const p of s.patches) {
      const len = p.kind === "write" ? BigInt(p.bytes.length) : p.length;
      if (p.kind !== "zero" && p.offset % cs === 0n && len % cs === 0n) now.set(p.offset, len);
      if (p.offset === 0n) {
        invariant(
          p.kind === "write" && len === cs,
          () => `bitmap: partial header write ${p.kind} ${len} ${cs}`,
        );
        const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset);
        invariant(
          dv.getBigUint64(48) === table.offset && BigInt(dv.getUint32(56)) === table.clusters,
          "bitmap: the header names another refcount table",
        );
        cov.hit("bitmap:header");
        continue;
      }
      if (p.offset === 48n) {
        invariant(p.kind === "write" && len === 12n, "bitmap: partial refcount table fields");
        const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset);
        const moved = { offset: dv.getBigUint64(0), clusters: BigInt(dv.getUint32(8)) };
        invariant(
          written.get(moved.offset) === moved.clusters * cs && moved.clusters > table.clusters,
          "bitmap: header names a refcount table no earlier step wrote whole",
        );
        table = moved;
        cov.hit("bitmap:table-moved");
        continue;
      }
      invariant(p.offset >= cs, `bitmap: write into the header at ${p.offset}`);
      const end = p.offset + len;
      if (p.offset < table.offset + table.clusters * cs && end > table.offset) {
        invariant(
          p.kind === "write" && len === 8n && (p.offset - table.offset) % 8n === 0n,
          "bitmap: write into the refcount table other than an entry",
        );
        const v = new DataView(p.bytes.buffer, p.bytes.byteOffset).getBigUint64(0);
        invariant(written.get(v) === cs, `bitmap: hook-up of ${v}, not a block written before`);
        cov.hit("bitmap:hookup");
        continue;
      }
      for (const o of blockOffsets) {
        if (p.offset < o + cs && end > o) {
          invariant(p.kind === "write" && p.offset === o && len === cs, "bitmap: partial refcount block");
          cov.hit("bitmap:refblock");
        }
      }
      if (blockOffsets.has(p.offset)) continue;
      if (p.offset >= scan.fileSize && p.kind === "write" && len >= cs) {
        cov.hit("bitmap:past-end");
      } else if (p.kind === "copy" && p.length !== cs && cutClusters.get(p.from / cs) === p.length) {
        invariant(p.offset % cs === 0n && p.from % cs === 0n, "bitmap: a tail cut copy out of place");
        const rest = s.patches.find((q) => q.kind === "write" && q.offset === p.offset + p.length);
        invariant(
          rest !== undefined && rest.kind === "write" && BigInt(rest.bytes.length) === cs - p.length &&
            rest.bytes.every((x) => x === 0),
          "bitmap: a tail cut copy without its zero rest",
        );
        cov.hit("bitmap:tail-copy");
      } else if (p.kind === "copy") {
        invariant(p.length === cs && p.offset % cs === 0n, "bitmap: copy of a partial cluster");
        const fromData = dataClusters.has(p.from / cs) && p.from % cs === 0n;
        const fromStaging = staging !== undefined && p.from >= staging;
        invariant(fromData || fromStaging, `bitmap: copy from ${p.from}`);
        invariant(staging === undefined || p.offset + cs <= staging, "bitmap: copy into the staging area");
        cov.hit(`bitmap:copy:${fromStaging}`);
      } else if (p.kind === "zero") {
        invariant(p.offset % cs === 0n && len % cs === 0n, "bitmap: partial discard");
        for (let c = p.offset / cs; c < (p.offset + len) / cs; c++) {
          invariant(dataClusters.has(c), `bitmap: discard of cluster ${c}, not old bitmap data`);
        }
        cov.hit("bitmap:discard");
      } else if (p.kind === "write" && len === cs && p.bytes[0] === 0xff) {
        // An all-ones entry stored: ones up to a whole 64-bit word, zeroes after.
        const n = p.bytes.indexOf(0) < 0 ? p.bytes.length : p.bytes.indexOf(0);
        invariant(
          p.offset % cs === 0n && n % 8 === 0 && p.bytes.subarray(0, n).every((x) => x === 0xff) &&
            p.bytes.subarray(n).every((x) => x === 0),
          "bitmap: an all-ones cluster not of whole words",
        );
        invariant(staging === undefined || p.offset + cs <= staging, "bitmap: ones into the staging area");
        cov.hit(`bitmap:ones:${n === p.bytes.length}`);
      } else {
        cov.hit("bitmap:write");
      }
    }
    for (const [o, l] of now) written.set(o, l);
  }
  if (r.value.error) cov.hit(`bitmap:error:${r.value.error.slice(0, 24)}`);
}

export const target: TsTarget = {
  description: mod ? "bitmap planner (qemu-img bitmap)" : "none present yet",
  run(data, cov) {
    if (data.length < 23) return;
    run(data, cov);
  },
};
