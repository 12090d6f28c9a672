// Fuzz target empty_planner: qcow2_make_empty's discard of an overlay
// with an internal snapshot (lib/formats/qcow2/make_empty_discard.ts, behind
// `commit` without -d) on a self-consistent image built from the input: an
// active L1 and a snapshot's L1 whose tables are shared, the active's own,
// the snapshot's only, or absent, with normal, zero (with and without a
// cluster), and compressed entries. The steps are applied to the image in
// memory, one after another.
//
// Input:
//   0      cluster_bits = 9 + (b % 8)
//   1      refcount_order = 1 + (b % 6) (a shared cluster needs a count of 2)
//   2-3    virtual size in clusters (u16 LE, 1..2048)
//   4..    per L2 table: mode (none, shared, active's own, snapshot's only),
//          then per table up to 8 runs of entries, 2 bytes each: gap, count/kind
//
// Invariants:
//   1. every step passes checkPlan (bounded, inside the file, no overlap);
//   2. after every step no cluster is referenced more often than its
//      refcount says (a crash leaves at most leaks);
//   3. every zero patch (a punch) lands on a cluster whose refcount is 0
//      when it is applied;
//   4. at the end: every active L1 entry of the disk is COPIED and names a
//      table whose entries over the disk are 0, and every refcount equals
//      the references (nothing leaked, the snapshot's structures intact).
import type * as Mod from "../../lib/formats/qcow2/make_empty_discard.ts";
import type { ExistingRun } from "../../lib/formats/qcow2/write_plan.ts";
import { layoutScan, refRuns } from "../engine/qcow2_layout.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";

const mod = await optional<typeof Mod>("../../lib/formats/qcow2/make_empty_discard.ts");
const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;
const MASK = 0x00fffffffffffe00n;

function run(d: Uint8Array, cov: Cov): void {
  if (!mod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (b.u8(0) % 8);
  const cb = BigInt(clusterBits);
  const refcountOrder = 1 + (b.u8(1) % 6);
  const cs = 1n << cb, perL2 = cs / 8n;
  const vc = BigInt(1 + ((b.u8(2) | (b.u8(3) << 8)) % 2048));
  const tables = (vc + perL2 - 1n) / perL2;
  if (tables * 8n > cs) return;
  const perBlock = (cs * 8n) >> BigInt(refcountOrder);
  const rbits = 1 << refcountOrder;
  // Header 0, reftable 1, refblock 2, active L1 3, snapshot L1 4.
  let next = 5n;
  const file = new Map<bigint, Uint8Array>(); // cluster -> bytes (absent: zeroes)
  const refs = new Map<bigint, bigint>(); // initial references
  const ref = (c: bigint) => refs.set(c, (refs.get(c) ?? 0n) + 1n);
  for (const c of [0n, 1n, 2n, 3n, 4n]) ref(c);
  const setU64 = (off: bigint, v: bigint) => {
    const c = off >> cb;
    let bytes = file.get(c);
    if (!bytes) file.set(c, bytes = new Uint8Array(Number(cs)));
    new DataView(bytes.buffer).setBigUint64(Number(off - (c << cb)), v);
  };
  const getU64 = (off: bigint): bigint => {
    const bytes = file.get(off >> cb);
    return bytes ? new DataView(bytes.buffer).getBigUint64(Number(off - ((off >> cb) << cb))) : 0n;
  };
  // Snapshot structures stay referenced throughout.
  const snapRefs = new Map<bigint, bigint>();
  const snapRef = (c: bigint) => snapRefs.set(c, (snapRefs.get(c) ?? 0n) + 1n);
  snapRef(4n);
  const existing: ExistingRun[] = [];
  const compressed = new Map<bigint, { first: bigint; count: bigint }>();
  const l1 = new Map<number, bigint>();
  const csizeShift = 62n - (cb - 8n);
  let at = 4;
  for (let t = 0n; t < tables && at < d.length; t++) {
    const mode = b.u8(at++) % 4; // 0 none, 1 shared, 2 active's own, 3 snapshot's only
    cov.hit(`empty:mode:${mode}`);
    if (mode === 0) continue;
    const table = next++;
    ref(table);
    const from = t * perL2, to = from + perL2 < vc ? from + perL2 : vc;
    const shared = mode === 1, active = mode !== 3, snap = mode !== 2;
    if (active) l1.set(Number(t), (table << cb) | (shared ? 0n : COPIED));
    if (snap) {
      setU64(4n * cs + t * 8n, table << cb);
      snapRef(table);
    }
    if (shared) ref(table);
    let g = from;
    for (let r = 0; r < 8 && at + 2 <= d.length; r++, at += 2) {
      g += BigInt(b.u8(at) % 8);
      const count = BigInt(1 + (b.u8(at + 1) % 16));
      const kind = (["normal", "zero_alloc", "zero_plain", "compressed"] as const)[(b.u8(at + 1) >> 4) % 4];
      if (g + count > to) break;
      let host: bigint | undefined;
      if (kind === "normal" || kind === "zero_alloc") host = next << cb;
      for (let k = 0n; k < count; k++) {
        let e = 0n;
        if (kind === "normal" || kind === "zero_alloc") {
          const h = next++;
          e = (h << cb) | (kind === "zero_alloc" ? 1n : 0n) | (shared ? 0n : COPIED);
          ref(h);
          if (shared) ref(h);
          if (snap) snapRef(h);
        } else if (kind === "zero_plain") e = 1n;
        else {
          const h = next++;
          e = COMPRESSED | (h << cb); // one sector: its data in one host cluster
          ref(h);
          if (shared) ref(h);
          if (snap) snapRef(h);
          if (active) compressed.set(g + k, { first: h, count: 1n });
        }
        setU64((table << cb) + (g + k - from) * 8n, e);
      }
      if (active) existing.push({ cluster: g, count, kind, host });
      g += count;
    }
  }
  if (next > perBlock) return;
  // Refcount structures: one block at 2, described by the table at 1.
  const setRc = (c: bigint, v: bigint) => {
    const bit = c * BigInt(rbits);
    const byte = 2n * cs + bit / 8n;
    const bytes = file.get(byte >> cb) ?? new Uint8Array(Number(cs));
    file.set(byte >> cb, bytes);
    const i = Number(byte - ((byte >> cb) << cb));
    if (rbits < 8) {
      const sh = Number(bit % 8n);
      bytes[i] = (bytes[i] & ~(((1 << rbits) - 1) << sh)) | (Number(v) << sh);
    } else if (rbits === 8) bytes[i] = Number(v);
    else if (rbits === 16) new DataView(bytes.buffer).setUint16(i, Number(v));
    else if (rbits === 32) new DataView(bytes.buffer).setUint32(i, Number(v));
    else new DataView(bytes.buffer).setBigUint64(i, v);
  };
  setU64(cs, 2n * cs);
  for (const [c, n] of refs) setRc(c, n);
  for (const [i, v] of l1) setU64(3n * cs + BigInt(i) * 8n, v);
  // Header fields the checks read: refcount table offset and clusters.
  setU64(48n, cs);
  setU64(56n, 1n << 32n);
  const scan = layoutScan({
    clusterBits,
    refcountOrder,
    virtualSize: vc * cs,
    clusters: next,
    l1Size: Number(tables),
    l1,
    runs: refRuns(next, (h) => refs.get(h)!),
    hasBacking: true,
    compressed,
  });

  cov.hit(`empty:cb:${clusterBits}:rc:${refcountOrder}:tables:${sizeClass(tables)}`);
  const r = mod.planDiscardEmpty({ scan, existing });
  if (!checkResult(r, "empty", cov)) return;

  // The image as the steps leave it.
  const refcount = (c: bigint): bigint => {
    const rtOff = getU64(48n), rtClusters = getU64(56n) >> 32n;
    const perRb = (cs * 8n) / BigInt(rbits);
    const ti = c / perRb;
    if (ti >= (rtClusters * cs) / 8n) return 0n;
    const rb = getU64(rtOff + ti * 8n) & MASK;
    if (!rb) return 0n;
    const bit = (c % perRb) * BigInt(rbits);
    const byte = rb + bit / 8n;
    const bytes = file.get(byte >> cb);
    if (!bytes) return 0n;
    const i = Number(byte - ((byte >> cb) << cb));
    const dv = new DataView(bytes.buffer);
    if (rbits < 8) return BigInt((bytes[i] >> Number(bit % 8n)) & ((1 << rbits) - 1));
    if (rbits === 8) return BigInt(bytes[i]);
    if (rbits === 16) return BigInt(dv.getUint16(i));
    if (rbits === 32) return BigInt(dv.getUint32(i));
    return dv.getBigUint64(i);
  };
  const references = (): Map<bigint, bigint> => {
    const m = new Map(snapRefs);
    const add = (c: bigint) => m.set(c, (m.get(c) ?? 0n) + 1n);
    add(0n);
    add(3n);
    const rtOff = getU64(48n), rtClusters = getU64(56n) >> 32n;
    for (let k = 0n; k < rtClusters; k++) add((rtOff >> cb) + k);
    for (let i = 0n; i < (rtClusters * cs) / 8n; i++) {
      const rb = getU64(rtOff + i * 8n) & MASK;
      if (rb) add(rb >> cb);
    }
    for (let t = 0n; t < tables; t++) {
      const tb = getU64(3n * cs + t * 8n) & MASK;
      if (!tb) continue;
      add(tb >> cb);
      for (let k = 0n; k < perL2; k++) {
        const e = getU64(tb + k * 8n);
        if (e & COMPRESSED) add((e & ((1n << csizeShift) - 1n)) >> cb);
        else if (e & MASK) add((e & MASK) >> cb);
      }
    }
    return m;
  };
  const top = () => {
    let n = next + 8n;
    for (const s of r.value) if ((s.fileSize >> cb) + 2n > n) n = (s.fileSize >> cb) + 2n;
    return n;
  };
  const limit = top();
  invariant(r.value.length <= Number(tables) * 8 + 8, `empty: ${r.value.length} steps for ${tables} tables`);
  for (const [si, step] of r.value.entries()) {
    checkPlan(step, "empty", cov);
    for (const p of step.patches) {
      if (p.kind === "zero") {
        for (let c = p.offset >> cb; c << cb < p.offset + p.length; c++) {
          invariant(
            refcount(c) === 0n,
            `empty: step ${si} punches cluster ${c} with refcount ${refcount(c)}`,
          );
        }
        cov.hit("empty:punch");
        continue;
      }
      invariant(p.kind === "write", `empty: a ${p.kind} patch`);
      for (let i = 0; i < p.bytes.length; i++) {
        const off = p.offset + BigInt(i);
        const c = off >> cb;
        let bytes = file.get(c);
        if (!bytes) file.set(c, bytes = new Uint8Array(Number(cs)));
        bytes[Number(off - (c << cb))] = p.bytes[i];
      }
    }
    const m = references();
    for (let c = 0n; c < limit; c++) {
      const n = m.get(c) ?? 0n;
      invariant(
        refcount(c) >= n,
        `empty: after step ${si} cluster ${c} has ${n} references, refcount ${refcount(c)}`,
      );
    }
  }
  const m = references();
  for (let c = 0n; c < limit; c++) {
    invariant(
      refcount(c) === (m.get(c) ?? 0n),
      `empty: cluster ${c} refcount ${refcount(c)}, references ${m.get(c) ?? 0n}`,
    );
  }
  for (let t = 0n; t < tables; t++) {
    const e = getU64(3n * cs + t * 8n);
    invariant((e & COPIED) !== 0n && (e & MASK) !== 0n, `empty: L1 entry ${t} is ${e}`);
    const from = t * perL2, to = from + perL2 < vc ? from + perL2 : vc;
    for (let k = 0n; k < to - from; k++) {
      invariant(getU64((e & MASK) + k * 8n) === 0n, `empty: table ${t} entry ${k} not cleared`);
    }
  }
  cov.hit("empty:checked");
}

export const target: TsTarget = {
  description: mod ? "qcow2_make_empty discard planner (overlays with snapshots)" : "none present yet",
  run(data, cov) {
    if (data.length < 6) return;
    run(data, cov);
  },
};
