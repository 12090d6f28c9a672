// Fuzz target snapshot_planner: snapshot -c/-a/-d's planner
// (lib/formats/qcow2/snapshot_plan.ts) on scans of small qcow2 images the
// input describes, consistent by construction or (chaos bit) with refcounts
// and entries a hostile guest could report.
//
// Input:
//   0      cluster_bits = 9 + (b % 3)
//   1      refcount order = b % 7
//   2      bits 0-1 action (-c, -a, -d); bit 2 extended L2; bit 3 chaos
//   3      existing snapshots = b % 3 (at least 1 for -a/-d); bit 7: full mode (filler
//          clusters fill the image to b7 % 8 clusters short of what its one-cluster
//          refcount table covers, so allocations move the table)
//   4      L2 tables = 1 + b % 3
//   5      extra zero L1 entries = b % 3; bit 7 (-a): the snapshots' L1 tables are 1 + (b >> 4) % 4
//          entries longer than the active one (the goto grows it: qcow2_grow_l1_table)
//   6      snapshot to apply/delete; 7 chaos seed, slack
//   8..    one byte per L2 entry: % 4 = empty, data, compressed, zero
//
// Invariants on every plan:
//   1. a failure is typed (qemu's errno or instar's refusal with a message);
//   2. at most MAX_STEPS steps, each passing checkPlan (inside the file, no
//      overlap, at most MAX_PATCHES patches);
//   3. the header writes, if any, are nb_snapshots/snapshots_offset, (a
//      moved refcount table) refcount_table_offset/clusters and (-a growing
//      the active L1 table) l1_size/l1_table_offset only;
//   4. consistent inputs: after applying every step to the image, each
//      cluster's refcount (decoded from the refcount blocks, so never
//      negative nor over the width) equals its references (qemu-img check's
//      count), OFLAG_COPIED of the active tables is set exactly where the
//      refcount is 1, and the snapshot count moved by the action.
import type * as SnapshotPlan from "../../lib/formats/qcow2/snapshot_plan.ts";
import type { Qcow2SnapshotScan, SnapEntry, SnapL2Run } from "../../lib/formats/qcow2/snapshot_scan.ts";
import type { RefRun } from "../../lib/formats/qcow2/refcounts.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, optional } from "../engine/plan_checks.ts";

const mod = await optional<typeof SnapshotPlan>("../../lib/formats/qcow2/snapshot_plan.ts");

const COPIED = 1n << 63n, COMPRESSED = 1n << 62n, MASK = 0x00fffffffffffe00n;

/** A sparse image: cluster index -> bytes. */
class Img {
  readonly c = new Map<bigint, Uint8Array>();
  constructor(readonly cs: bigint) {}
  cl(i: bigint): Uint8Array {
    let b = this.c.get(i);
    if (!b) this.c.set(i, b = new Uint8Array(Number(this.cs)));
    return b;
  }
  write(off: bigint, bytes: Uint8Array) {
    for (let k = 0; k < bytes.length; k++) {
      const at = off + BigInt(k);
      this.cl(at / this.cs)[Number(at % this.cs)] = bytes[k];
    }
  }
  zero(off: bigint, len: bigint) {
    for (let at = off; at < off + len; at++) {
      const b = this.c.get(at / this.cs);
      if (b) b[Number(at % this.cs)] = 0;
    }
  }
  read(off: bigint, n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let k = 0; k < n; k++) {
      const at = off + BigInt(k);
      out[k] = this.c.get(at / this.cs)?.[Number(at % this.cs)] ?? 0;
    }
    return out;
  }
  u64(off: bigint): bigint {
    return new DataView(this.read(off, 8).buffer).getBigUint64(0);
  }
  u32(off: bigint): number {
    return new DataView(this.read(off, 4).buffer).getUint32(0);
  }
  u16(off: bigint): number {
    return new DataView(this.read(off, 2).buffer).getUint16(0);
  }
  set64(off: bigint, v: bigint) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, v);
    this.write(off, b);
  }
}

function getRef(block: Uint8Array, bits: number, i: number): bigint {
  if (bits < 8) return BigInt((block[(i * bits) >> 3] >> ((i * bits) & 7)) & ((1 << bits) - 1));
  let v = 0n;
  for (let k = 0; k < bits / 8; k++) v = (v << 8n) | BigInt(block[i * (bits / 8) + k]);
  return v;
}

function setRef(block: Uint8Array, bits: number, i: number, v: bigint) {
  if (bits < 8) {
    const at = (i * bits) >> 3, sh = (i * bits) & 7, m = ((1 << bits) - 1) << sh;
    block[at] = (block[at] & ~m) | ((Number(v) << sh) & m);
    return;
  }
  for (let k = bits / 8 - 1; k >= 0; k--, v >>= 8n) block[i * (bits / 8) + k] = Number(v & 0xffn);
}

function run(d: Uint8Array, cov: Cov): void {
  if (!mod) return;
  const b = new Bytes(d);
  const cb = 9 + (b.u8(0) % 3), cbn = BigInt(cb), cs = 1n << cbn;
  const order = b.u8(1) % 7, bits = 1 << order, max = (1n << BigInt(bits)) - 1n;
  const action = ["c", "a", "d"][b.u8(2) % 3] as "c" | "a" | "d";
  const extl2 = (b.u8(2) & 4) !== 0, chaos = (b.u8(2) & 8) !== 0;
  let nsnap = b.u8(3) % 3;
  if (action !== "c" && nsnap === 0) nsnap = 1;
  const nL2 = 1 + (b.u8(4) % 3);
  const l1Size = nL2 + (b.u8(5) % 3);
  const growL1 = action === "a" && (b.u8(5) & 0x80) !== 0;
  const snapL1Size = l1Size + (growL1 ? 1 + ((b.u8(5) >> 4) % 4) : 0);
  const eb = extl2 ? 16n : 8n, perL2 = Number(cs / eb);
  const per = Math.min(perL2, 24);
  const kinds: number[][] = [];
  for (let t = 0, at = 8; t < nL2; t++) {
    const row: number[] = [];
    for (let j = 0; j < per; j++) row.push(at < d.length ? d[at++] % 4 : 0);
    kinds.push(row);
  }
  const nData = kinds.flat().filter((k) => k === 1).length;
  const nComp = kinds.flat().filter((k) => k === 2).length;
  const slots = Number(cs / 512n);
  const nCompClusters = Math.ceil(nComp / slots);
  // References per cluster: compressed clusters hold up to `slots` entries.
  const share = 1n + BigInt(nsnap);
  if (share * BigInt(Math.min(nComp, slots) || 1) > max) return; // not a consistent image at this width
  const perBlock = Number((cs * 8n) / BigInt(bits));
  // Full mode (byte 3 bit 7): filler clusters (refcount 1, referenced by
  // nothing the check walks; counted as expected) fill what the one-cluster
  // refcount table covers up to the tables, data and snapshot table, which
  // end `slack` clusters short of its edge, so the plan's allocations need a
  // block past the table: a moved table.
  const coverage = Number(cs / 8n) * perBlock;
  const low = 2 + 1 + nsnap, high = nL2 + nData + nCompClusters + (nsnap > 0 ? 1 : 0);
  const slack = b.u8(7) % 8;
  const gap = (b.u8(3) & 0x80) !== 0 && coverage <= 1 << 14 && coverage - slack - high > 2 * low + 8;
  const gapStart = gap ? coverage - slack - high : 0;
  // Table indices of the blocks: every block up to the image's last cluster.
  const blockIndices = (n: number): number[] => {
    const end = gap ? gapStart + high : low + n + high;
    const out: number[] = [];
    for (let i = 0; i * perBlock < end; i++) out.push(i);
    return out;
  };
  let nBlocks = 1;
  while (blockIndices(nBlocks).length > nBlocks) nBlocks++;
  if (nBlocks > Number(cs / 8n) || (gap && gapStart < low + nBlocks)) return;
  cov.hit(`snap:${action}:bits:${bits}:cb:${cb}:ext:${extl2}:snaps:${nsnap}:chaos:${chaos}:gap:${gap}`);

  const img = new Img(cs);
  const refs = new Map<bigint, bigint>();
  const ref = (c: bigint, n = 1n) => refs.set(c, (refs.get(c) ?? 0n) + n);
  let next = 0n;
  const take = () => next++;
  ref(take()); // header
  const reftable = take();
  ref(reftable);
  const blocks = new Map<number, bigint>();
  for (const i of blockIndices(nBlocks)) {
    blocks.set(i, take());
    ref(blocks.get(i)!);
  }
  const l1 = take();
  ref(l1);
  const snapL1s: bigint[] = [];
  for (let i = 0; i < nsnap; i++) {
    snapL1s.push(take());
    ref(snapL1s[i]);
  }
  const filler: bigint[] = [];
  while (gap && next < BigInt(gapStart)) {
    filler.push(next);
    ref(take());
  }
  const tables: bigint[] = [];
  for (let t = 0; t < nL2; t++) {
    tables.push(take());
    ref(tables[t], share);
  }
  const l2runs: SnapL2Run[] = [];
  const csizeShift = 62n - (cbn - 8n);
  let comp = 0, compCluster = 0n;
  for (let t = 0; t < nL2; t++) {
    for (let j = 0; j < per; j++) {
      const at = tables[t] * cs + BigInt(j) * eb;
      const k = kinds[t][j];
      let value = 0n, bitmap = 0n, kind = 0, refFirst = 0n;
      if (k === 1) {
        const c = take();
        ref(c, share);
        value = (c << cbn) | (share === 1n ? COPIED : 0n);
        if (extl2) bitmap = 0xffffffffn;
        kind = 1;
        refFirst = c;
      } else if (k === 2) {
        if (comp % slots === 0) compCluster = take();
        const off = compCluster * cs + BigInt(comp % slots) * 512n;
        comp++;
        ref(compCluster, share);
        value = COMPRESSED | off;
        kind = 2;
        refFirst = compCluster;
        void csizeShift; // one sector: the size field stays 0
      } else if (k === 3) {
        if (extl2) bitmap = 0xffffffffn << 32n;
        else value = 1n;
      }
      if (value === 0n && bitmap === 0n) continue;
      img.set64(at, value);
      if (extl2) img.set64(at + 8n, bitmap);
      l2runs.push({ entry: at, value, bitmap, refFirst, count: 1, kind, refClusters: 1 });
    }
  }
  const activeL1 = new Map<number, bigint>();
  for (let t = 0; t < nL2; t++) activeL1.set(t, (tables[t] << cbn) | (share === 1n ? COPIED : 0n));
  for (const [i, v] of activeL1) img.set64(l1 * cs + BigInt(i) * 8n, v);
  const entries: SnapEntry[] = [];
  const enc = new TextEncoder();
  for (let i = 0; i < nsnap; i++) {
    for (const [k, v] of activeL1) img.set64(snapL1s[i] * cs + BigInt(k) * 8n, v & ~COPIED);
    entries.push({
      id: enc.encode(String(i + 1)),
      name: enc.encode(`s${i}`),
      unknownExtra: new Uint8Array(i === 1 ? 8 : 0),
      l1Offset: snapL1s[i] * cs,
      l1Size: snapL1Size,
      dateSec: 1,
      dateNsec: 2,
      vmClockNsec: 0n,
      vmStateSize: 0n,
      diskSize: BigInt(l1Size) * BigInt(perL2) * cs,
      icount: 0n,
    });
  }
  let tableAt = 0n, tableSize = 0n;
  if (nsnap > 0) {
    const c = take();
    ref(c);
    tableAt = c * cs;
    const t = mod.encodeSnapshotTable(entries, tableAt);
    for (const p of t.patches) if (p.kind === "write") img.write(p.offset, p.bytes);
    tableSize = t.size;
  }
  // Refcounts: as counted (chaos: one perturbed), encoded in the blocks.
  const counts = new Map(refs);
  if (chaos) {
    const c = BigInt(b.u8(7)) % next;
    const v = (counts.get(c) ?? 0n) + (b.u8(7) & 1 ? 1n : -1n);
    if (v >= 0n && v <= max) counts.set(c, v);
  }
  const runs: RefRun[] = [];
  for (let c = 0n; c < next; c++) {
    const v = counts.get(c) ?? 0n;
    if (v === 0n) continue;
    if (v > max) return;
    const last = runs[runs.length - 1];
    if (last && last.refcount === v && last.start + last.count === c) last.count++;
    else runs.push({ start: c, count: 1n, refcount: v });
    const blk = blocks.get(Number(c) / perBlock | 0);
    if (blk === undefined) throw new Error(`snap: the fuzz layout left cluster ${c} without a block`);
    setRef(img.cl(blk), bits, Number(c) % perBlock, v);
  }
  const reftableMap = new Map<number, bigint>();
  blocks.forEach((blk, i) => {
    reftableMap.set(i, blk * cs);
    img.set64(reftable * cs + BigInt(i) * 8n, blk * cs);
  });
  img.set64(40n, l1 * cs);
  const hdr = new Uint8Array(4);
  new DataView(hdr.buffer).setUint32(0, l1Size);
  img.write(36n, hdr);
  img.set64(48n, reftable * cs);
  new DataView(hdr.buffer).setUint32(0, 1);
  img.write(56n, hdr);
  new DataView(hdr.buffer).setUint32(0, nsnap);
  img.write(60n, hdr);
  img.set64(64n, tableAt);

  const pick = b.u8(6) % Math.max(1, nsnap);
  const scan: Qcow2SnapshotScan = {
    version: 3,
    clusterBits: cb,
    refcountOrder: order,
    extendedL2: extl2,
    virtualSize: BigInt(l1Size) * BigInt(perL2) * cs,
    fileSize: next * cs,
    l1Offset: l1 * cs,
    l1Size,
    reftableOffset: reftable * cs,
    reftableClusters: 1,
    reftable: reftableMap,
    runs,
    snapshotsOffset: tableAt,
    tableSize,
    snapshots: entries,
    activeL1,
    picked: action === "c" ? undefined : {
      index: pick,
      l1: new Map([...activeL1].map(([k, v]) => [k, v & ~COPIED])),
    },
    l2: l2runs,
  };
  const r = action === "c"
    ? mod.planSnapshotCreate(scan, { name: enc.encode("new"), dateSec: 3, dateNsec: 4 })
    : action === "a"
    ? mod.planSnapshotGoto(scan, pick)
    : mod.planSnapshotDelete(scan, pick);
  if (!r.ok) {
    const f = r.failure;
    invariant(f.message.length > 0, "snap: failure without a message");
    invariant(
      f.kind === "refuse" || ["EINVAL", "EFBIG", "ENOENT"].includes(f.errno),
      "snap: untyped failure",
    );
    invariant(chaos || f.kind === "qemu", `snap: consistent image refused: ${f.message}`);
    cov.hit(`snap:fail:${f.kind}:${f.message.replace(/\d+/g, "N").slice(0, 60)}`);
    return;
  }
  invariant(r.steps.length <= mod.MAX_STEPS, `snap: ${r.steps.length} steps`);
  cov.hit(`snap:ok:${action}:steps:${sizeClass(BigInt(r.steps.length))}`);
  for (const s of r.steps) {
    checkPlan(s, "snap", cov);
    for (const p of s.patches) {
      if (p.offset < cs) {
        // nb_snapshots/snapshots_offset, or (a moved refcount table) its offset and size
        invariant(
          p.kind === "write" && p.bytes.length === 12 &&
            (p.offset === 60n || p.offset === 48n || (growL1 && p.offset === 36n)),
          () =>
            `snap: header write ${p.kind} at ${p.offset} ${p.kind === "write" ? p.bytes.length : p.length}`,
        );
      }
      if (p.kind === "write") img.write(p.offset, p.bytes);
      else if (p.kind === "zero") img.zero(p.offset, p.length);
      else invariant(false, "snap: copy patch");
    }
  }
  if (chaos) return;

  // qemu-img check over the image the steps leave.
  const want = new Map<bigint, bigint>();
  const add = (c: bigint, n = 1n) => want.set(c, (want.get(c) ?? 0n) + n);
  const span = (off: bigint, bytes: bigint) => {
    for (let c = off >> cbn; bytes > 0n && c <= (off + bytes - 1n) >> cbn; c++) add(c);
  };
  add(0n);
  for (const c of filler) add(c);
  const rt = img.u64(48n), rtClusters = BigInt(img.u32(56n));
  if (rt !== reftable * cs) cov.hit(`snap:moved-table:${action}`);
  if (growL1) {
    invariant(img.u32(36n) === snapL1Size, `snap: -a left an L1 table of ${img.u32(36n)} entries`);
    cov.hit("snap:grown-l1");
  }
  span(rt, rtClusters * cs);
  const finalBlocks = new Map<number, bigint>();
  for (let i = 0; i < Number(rtClusters * cs / 8n); i++) {
    const v = img.u64(rt + BigInt(i) * 8n);
    if (v) {
      finalBlocks.set(i, v);
      add(v >> cbn);
    }
  }
  const nb = img.u32(60n), so = img.u64(64n);
  invariant(
    nb === nsnap + (action === "c" ? 1 : action === "d" ? -1 : 0),
    `snap: ${nb} snapshots after -${action}`,
  );
  const l1s: [bigint, number][] = [[img.u64(40n), img.u32(36n)]];
  let at = so, tsize = 0n;
  for (let i = 0; i < nb; i++) {
    at = (at + 7n) & ~7n;
    l1s.push([img.u64(at), img.u32(at + 8n)]);
    const len = 40n + BigInt(img.u32(at + 36n) + img.u16(at + 12n) + img.u16(at + 14n));
    at += len;
    tsize = at - so;
  }
  span(so, tsize);
  for (const [off, n] of l1s) span(off, BigInt(n) * 8n);
  const decoded = new Map<number, Uint8Array>();
  const refcount = (c: bigint) => {
    const i = Number(c / BigInt(perBlock)), blk = finalBlocks.get(i);
    if (blk === undefined) return 0n;
    let bytes = decoded.get(i);
    if (!bytes) decoded.set(i, bytes = img.read(blk, Number(cs)));
    return getRef(bytes, bits, Number(c % BigInt(perBlock)));
  };
  const copiedChecks: [bigint, bigint][] = [];
  for (const [li, [off, n]] of l1s.entries()) {
    for (let i = 0; i < n; i++) {
      const e = img.u64(off + BigInt(i) * 8n);
      if (!e) continue;
      const t = e & MASK;
      add(t >> cbn);
      if (li === 0) copiedChecks.push([e, t >> cbn]);
      for (let j = 0; j < perL2; j++) {
        const v = img.u64(t + BigInt(j) * eb);
        if (v & COMPRESSED) {
          add((v & ((1n << csizeShift) - 1n)) >> cbn);
          if (li === 0) invariant((v & COPIED) === 0n, "snap: compressed entry with COPIED");
        } else if (v & MASK) {
          add((v & MASK) >> cbn);
          if (li === 0) copiedChecks.push([v, (v & MASK) >> cbn]);
        }
      }
    }
  }
  let top = 0n;
  for (const c of want.keys()) if (c >= top) top = c + 1n;
  // Past the last cluster the steps reach, every refcount must be 0 too.
  const fileEnd = (r.steps[r.steps.length - 1]?.fileSize ?? next * cs) >> cbn;
  if (fileEnd + 2n > top) top = fileEnd + 2n;
  for (let c = 0n; c < top; c++) {
    const got = refcount(c), exp = want.get(c) ?? 0n;
    invariant(got === exp, `snap: -${action}: cluster ${c} refcount ${got}, references ${exp}`);
  }
  for (const [e, c] of copiedChecks) {
    invariant(
      ((e & COPIED) !== 0n) === (refcount(c) === 1n),
      `snap: -${action}: OFLAG_COPIED of cluster ${c}`,
    );
  }
  cov.hit(`snap:checked:${action}`);
}

export const target: TsTarget = {
  description: mod ? "snapshot -c/-a/-d planner" : "none present yet",
  run(data, cov) {
    if (data.length < 8) return;
    run(data, cov);
  },
};
