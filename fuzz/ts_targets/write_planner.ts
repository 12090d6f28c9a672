// Fuzz target write_planner: the in-place qcow2 writer's planner
// (lib/formats/qcow2/write_plan.ts, behind commit and safe rebase) on a
// self-consistent image built from the input and writes a hostile or
// careless caller could ask for.
//
// Input:
//   0      cluster_bits = 9 + (b % 8)
//   1      refcount_order = b % 7
//   2      bit 0: v3 (else v2); bit 1: the image has a backing file; bit 2: discard freed clusters;
//          bit 3: an internal snapshot shares every L2 table and data cluster (counts one higher,
//          L1 entries without OFLAG_COPIED)
//   3-4    virtual size in clusters (u16 LE, 1..4096)
//   5-6    source size in clusters (u16 LE; clipped copies get zero tails)
//   7      number of existing runs (<= 32), then 3 bytes each: gap, count, kind
//          (normal, zero_alloc, zero_plain, compressed); the L2 tables and
//          data clusters they need are laid out after the header, reftable,
//          refblock and L1; compressed data packs as qemu-img convert -c does
//          (a cluster's data may share its host clusters with the previous
//          one's and span two: the gap byte's bits 4-5 say which)
//   ..     writes, 3 bytes each: gap, count (u8 + 1), kind (data, zero, discard, and
//          convert -n -B's partial data write of one cluster: bytes [a, b) of it from the
//          count byte's nibbles, after a write-zeroes (zeroFirst, v3) when kind's bit 7 is set)
//
// Invariants on every plan:
//   1. every step passes checkPlan (bounded, inside the file, no overlap);
//   2. rounds and steps are bounded by the writes (a round ends only after
//      a write that freed clusters, one per L2 table at most);
//   3. every data cluster is copied exactly once, to a cluster-aligned host
//      offset inside the final file, never onto the header, a refcount
//      table or block, an L1 or L2 table, or another cluster in use, except
//      in place onto the cluster already mapped there or onto one a zero or
//      discard write freed; zero and discard writes copy nothing;
//   4. no patch of a round overlaps the bytes its copies write;
//   5. with a snapshot, nothing it shares is written (copy-on-write: tables
//      and data get new clusters; copy patches only read them), and no
//      cluster is freed;
//   6. a partial write's copy covers just its ranges (patches fill the rest
//      of a new cluster), and a round's copies of the target's own bytes
//      (selfCopies: a compressed or, over a backing file, unallocated
//      cluster's rest) land in that cluster's new
//      host cluster outside those ranges, inside the file.
import { type FilePlan } from "../../lib/formats/plan.ts";
import type * as WritePlan from "../../lib/formats/qcow2/write_plan.ts";
import { layoutScan, refRuns } from "../engine/qcow2_layout.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";

const mod = await optional<typeof WritePlan>("../../lib/formats/qcow2/write_plan.ts");
const COPIED = 1n << 63n;

function run(d: Uint8Array, cov: Cov): void {
  if (!mod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (b.u8(0) % 8);
  const refcountOrder = b.u8(1) % 7;
  const version = (b.u8(2) & 1) ? 3 : 2;
  const hasBacking = (b.u8(2) & 2) !== 0;
  const discardFreed = (b.u8(2) & 4) !== 0;
  const refcountMaxOf = (1n << (1n << BigInt(b.u8(1) % 7))) - 1n;
  const shared = (b.u8(2) & 8) !== 0 && refcountMaxOf >= 2n;
  /** Clusters the snapshot shares (its L2 tables and data). */
  const snap = new Set<bigint>();
  // v2 zero writes: zeroes as data over a backing file, discards without one.
  const isData = (k: string) => k === "data" || (k === "zero" && version === 2 && hasBacking);
  const cs = 1n << BigInt(clusterBits);
  const perL2 = cs / 8n;
  const vClusters = BigInt(1 + ((b.u8(3) | (b.u8(4) << 8)) % 4096));
  const sourceSize = BigInt(b.u8(5) | (b.u8(6) << 8)) * cs;
  const l1Size = (vClusters + perL2 - 1n) / perL2;
  if (l1Size * 8n > cs) return;
  const perBlock = (cs * 8n) >> BigInt(refcountOrder);
  // Header 0, reftable 1, refblock 2, L1 3; then L2 tables and data.
  let next = 4n;
  const used: bigint[] = [0n, 1n, 2n, 3n];
  const l1 = new Map<number, bigint>();
  const existing: WritePlan.ExistingRun[] = [];
  // Compressed guest cluster -> host clusters it spans; references of each host cluster.
  const compressed = new Map<bigint, { first: bigint; count: bigint }>();
  const refs = new Map<bigint, bigint>();
  let packed: bigint | undefined; // the host cluster the last compressed data ended in
  const nExisting = b.u8(7) % 33;
  let at = 8, c = 0n;
  for (let i = 0; i < nExisting && at + 3 <= d.length; i++, at += 3) {
    c += BigInt(b.u8(at) % 16);
    const count = BigInt(1 + (b.u8(at + 1) % 8));
    const kind = (["normal", "zero_alloc", "zero_plain", "compressed"] as const)[b.u8(at + 2) % 4];
    if (c + count > vClusters) break;
    for (let k = c; k < c + count; k++) {
      const idx = Number(k / perL2);
      if (!l1.has(idx)) {
        l1.set(idx, (next << BigInt(clusterBits)) | (shared ? 0n : COPIED));
        if (shared) snap.add(next);
        used.push(next++);
      }
    }
    let host: bigint | undefined;
    if (kind === "compressed") {
      for (let k = c; k < c + count; k++) {
        // Shared with the previous data's last host cluster (while its count fits) and/or spilling into the next.
        const max = shared ? refcountMaxOf / 2n : refcountMaxOf;
        // (A spill is the next cluster in the file: share only the last one allocated.)
        const share = packed === next - 1n && (refs.get(packed) ?? 0n) < max && (b.u8(at) & 16) !== 0;
        const first = share ? packed! : next;
        if (!share) used.push(next++);
        let n = 1n;
        if ((b.u8(at) & 32) !== 0) {
          used.push(next++);
          n = 2n;
        }
        compressed.set(k, { first, count: n });
        for (let h = first; h < first + n; h++) refs.set(h, (refs.get(h) ?? 0n) + 1n);
        packed = first + n - 1n;
      }
    } else if (kind !== "zero_plain") {
      // Host clusters after every L2 table the run needs.
      host = next << BigInt(clusterBits);
      for (let k = 0n; k < count; k++) {
        if (shared) snap.add(next);
        used.push(next++);
      }
    }
    if (shared && kind === "compressed") {
      for (let k = c; k < c + count; k++) {
        const r = compressed.get(k)!;
        for (let h = r.first; h < r.first + r.count; h++) snap.add(h);
      }
    }
    existing.push({ cluster: c, count, kind, host });
    c += count;
  }
  if (next > perBlock) return;
  const ops: WritePlan.WriteOp[] = [];
  c = 0n;
  for (; at + 3 <= d.length && ops.length < 64; at += 3) {
    c += BigInt(b.u8(at) % 32);
    let count = BigInt(1 + b.u8(at + 1));
    const k = b.u8(at + 2) % 4;
    if (k === 3) {
      // A partial write: bytes [a, b) of the cluster in sixteenths, up to the source's end.
      const lo = BigInt(b.u8(at + 1) & 15), hi = lo + 1n + BigInt(b.u8(at + 1) >> 4) % (16n - lo);
      count = 1n;
      if (c + 1n > vClusters) break;
      let from = c * cs + (lo * cs) / 16n, to = c * cs + (hi * cs) / 16n;
      if (to > sourceSize) to = sourceSize;
      from -= from % 512n;
      if (to > from && (from > c * cs || to < (c + 1n) * cs)) {
        const zeroFirst = version === 3 && (b.u8(at + 2) & 128) !== 0;
        ops.push({
          cluster: c,
          count,
          kind: "data",
          only: [[from, to]],
          ...(zeroFirst ? { zeroFirst } : {}),
        });
        cov.hit(`write:partial${zeroFirst ? ":zerofirst" : ""}`);
      } else ops.push({ cluster: c, count, kind: "data" });
      c += 1n;
      continue;
    }
    const kind = (["data", "zero", "discard"] as const)[k];
    if (c + count > vClusters) break;
    ops.push({ cluster: c, count, kind });
    c += count;
  }
  // The snapshot holds one more reference to everything it shares (a
  // compressed host cluster: one per guest cluster, as its own L1 maps it).
  const runs = refRuns(next, (h) => (refs.get(h) ?? 1n) + (shared && snap.has(h) ? refs.get(h) ?? 1n : 0n));
  const scan = layoutScan({
    clusterBits,
    refcountOrder,
    virtualSize: vClusters * cs,
    clusters: next,
    l1Size: Number(l1Size),
    l1,
    runs,
    hasBacking,
    compressed,
  });

  cov.hit(`write:cb:${clusterBits}:rc:${refcountOrder}:v${version}:ops:${sizeClass(BigInt(ops.length))}`);
  const r = mod.planQcow2Writes({ scan, version, existing, ops, sourceSize, discardFreed });
  if (!checkResult(r, "write", cov)) return;
  const plan = r.value;
  // 2. bounded.
  // A round also ends inside one data write wherever it overwrites a
  // compressed run (the freed clusters must be withdrawn on disk before a
  // later allocation may reuse them), so each such run may add one.
  const compressedRunsHit = (o: WritePlan.WriteOp) =>
    BigInt(
      existing.filter((e) =>
        e.kind === "compressed" && e.cluster < o.cluster + o.count &&
        o.cluster < e.cluster + e.count
      ).length,
    );
  const tablesTouched = ops.reduce((n, o) => n + o.count / perL2 + 2n + compressedRunsHit(o), 0n);
  invariant(BigInt(plan.rounds.length) <= tablesTouched + 1n, `write: ${plan.rounds.length} rounds`);
  const inPlace = new Map<bigint, bigint>(); // guest cluster -> host
  for (const e of existing) {
    if (e.host === undefined) continue;
    for (let k = 0n; k < e.count; k++) inPlace.set(e.cluster + k, e.host + k * cs);
  }
  const usedSet = new Set(used);
  // Clusters a zero (v3) or discard write frees may be reused by later writes.
  const freed = new Set<bigint>();
  for (const o of ops) {
    if (isData(o.kind) && !o.zeroFirst) continue;
    for (let k = o.cluster; k < o.cluster + o.count; k++) {
      const h = inPlace.get(k);
      if (h !== undefined) freed.add(h / cs);
    }
  }
  // Compressed data's host clusters are free once every guest cluster
  // pointing there is written (a data write reallocates, zero and discard unmap).
  const left = new Map(refs);
  for (const o of ops) {
    for (let k = o.cluster; k < o.cluster + o.count; k++) {
      const r = compressed.get(k);
      if (!r) continue;
      cov.hit(`write:compressed:${o.kind}`);
      for (let h = r.first; h < r.first + r.count; h++) left.set(h, left.get(h)! - 1n);
    }
  }
  for (const [h, n] of left) if (n === 0n) freed.add(h);
  // 5. the snapshot keeps everything it shares: nothing is freed.
  if (shared) freed.clear();
  const onlyOf = new Map<bigint, [bigint, bigint][]>();
  for (const o of ops) if (o.only) onlyOf.set(o.cluster, o.only);
  const copied = new Map<bigint, bigint>();
  const metaWritten = new Map<bigint, number>(); // cluster -> round of a whole-cluster table write
  const copyRound = new Map<bigint, number>(); // host cluster -> round of the copy
  const guestOf = new Map<bigint, bigint>(); // host cluster -> guest cluster copied there
  for (const [ri, round] of plan.rounds.entries()) {
    const spans: [bigint, bigint][] = [];
    for (const cp of round.copies) {
      invariant(cp.count > 0n && cp.host % cs === 0n, `write: copy to ${cp.host}`);
      const end = cp.host + cp.count * cs;
      invariant(end <= plan.fileSize, `write: copy [${cp.host}, ${end}) past the file end ${plan.fileSize}`);
      for (let k = 0n; k < cp.count; k++) {
        const g = cp.cluster + k, h = cp.host + k * cs;
        invariant(!copied.has(g), `write: guest cluster ${g} copied twice`);
        copied.set(g, h);
        copyRound.set(h / cs, ri);
        guestOf.set(h / cs, g);
        if (usedSet.has(h / cs)) {
          invariant(
            (!shared && inPlace.get(g) === h) || freed.has(h / cs),
            `write: guest cluster ${g} copied onto used cluster ${h / cs}`,
          );
          cov.hit("write:in-place");
        }
      }
      // 6. a partial write's copy: its ranges only.
      let whole = cp.host;
      for (let k = 0n; k < cp.count; k++) {
        const only = onlyOf.get(cp.cluster + k);
        if (!only) continue;
        const h = cp.host + k * cs;
        if (h > whole) spans.push([whole, h]);
        for (const [f, t] of only) spans.push([h + f - (cp.cluster + k) * cs, h + t - (cp.cluster + k) * cs]);
        whole = h + cs;
      }
      const stop = cp.cluster * cs < sourceSize
        ? cp.host + ((cp.cluster + cp.count) * cs < sourceSize ? cp.count * cs : sourceSize - cp.cluster * cs)
        : cp.host;
      if (stop > whole) spans.push([whole, stop]);
    }
    for (const sc of round.selfCopies ?? []) {
      const g = sc.from / cs;
      const only = onlyOf.get(g);
      // A compressed cluster's rest, or (over a backing file) an unallocated one's.
      invariant(
        only !== undefined && (compressed.has(g) || (hasBacking && !inPlace.has(g))),
        `write: self copy from guest cluster ${g}`,
      );
      invariant(
        sc.to > sc.from && sc.to <= (g + 1n) * cs && sc.to <= sourceSize,
        `write: self copy [${sc.from}, ${sc.to})`,
      );
      invariant(copied.get(g) === sc.at - (sc.from - g * cs), `write: self copy of ${g} to ${sc.at}`);
      for (const [f, t] of only!) {
        invariant(sc.to <= f || sc.from >= t, `write: self copy over the written range`);
      }
      cov.hit("write:selfcopy");
    }
    for (const s of round.steps as FilePlan[]) {
      checkPlan(s, "write", cov);
      for (const p of s.patches) {
        const len = p.kind === "write" ? BigInt(p.bytes.length) : p.length;
        if (shared && p.kind !== "copy") {
          for (let x = p.offset / cs; x * cs < p.offset + len; x++) {
            invariant(
              !snap.has(x),
              `write: ${p.kind} patch at ${p.offset} into cluster ${x} a snapshot shares`,
            );
          }
          cov.hit("write:snapshot");
        }
        for (const [a, e] of spans) {
          invariant(
            p.offset >= e || p.offset + len <= a,
            `write: patch at ${p.offset} over copied data [${a}, ${e})`,
          );
        }
        // Whole clusters written (tables, blocks) that are not a data
        // cluster's zero fill past the source's end (writes are coalesced).
        if (p.kind === "write" && len >= cs) {
          for (let x = p.offset / cs; x < (p.offset + len) / cs; x++) {
            const g = guestOf.get(x);
            // (A partial write's rest, zeroed, may coalesce with a table after it.)
            const fill = g !== undefined && copyRound.get(x) === ri &&
              (g * cs >= sourceSize || onlyOf.has(g));
            if (!fill) metaWritten.set(x, ri);
          }
        }
      }
    }
    cov.hit(`write:round:copies:${sizeClass(BigInt(round.copies.length))}:steps:${round.steps.length}`);
  }
  // 3. data clusters copied once; zero and discard writes never.
  for (const o of ops) {
    for (let k = o.cluster; k < o.cluster + o.count; k++) {
      const dataOp = isData(o.kind);
      invariant(copied.has(k) === dataOp, `write: guest cluster ${k} (${o.kind}) copied: ${copied.has(k)}`);
    }
  }
  // A cluster holding both data and a table in one plan must have been
  // freed in between (a zero or discard write's cluster, the old reftable).
  for (const h of copied.values()) {
    const m = metaWritten.get(h / cs);
    if (m === undefined) continue;
    invariant(
      m !== copyRound.get(h / cs) && (freed.has(h / cs) || h / cs === 1n),
      `write: cluster ${h / cs} holds data and a table`,
    );
  }
}

export const target: TsTarget = {
  description: mod ? "in-place qcow2 write planner (commit, safe rebase)" : "none present yet",
  run(data, cov) {
    if (data.length < 8) return;
    run(data, cov);
  },
};
