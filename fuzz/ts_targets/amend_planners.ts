// Fuzz target amend_planners: amend's qcow2 downgrade planner
// (lib/formats/qcow2/downgrade_plan.ts) and refcount-width planner
// (refcount_order_plan.ts, inputs with byte 0 bit 7 set; see runRefcountOrder)
// on what a hostile guest could report
// for a downgrade scan: zero-flagged L2 entries anywhere, refcount runs,
// refcount-table entries, snapshot sizes, header feature bits.
//
// Input:
//   0      cluster_bits = 9 + (b % 8)
//   1      refcount width = 2^(b % 7)
//   2      flags: bit 0 backing file, bit 1 dirty, bit 2 extended L2, bit 3 zstd,
//          bit 4 data file, bit 5 lazy refcounts
//   3-10   file size (u64 LE, cut to 2^40)
//   11     snapshots (b % 4), each with the image's size unless bit 7 of the next byte
//   12..   records of 17 bytes: kind (u8: 0 zero entry, 1 refcount run, 2 reftable entry),
//          then two u64 LE values
//
// Invariants on every plan:
//   1. every step passes checkPlan (bounded, inside the file, no overlap);
//   2. the header write is the last step, at offset 0, and says version 2;
//   3. 8-byte entry writes lie only at reported zero-entry offsets and never
//      keep the zero flag; zero patches cover only cluster-aligned ranges;
//   4. no step shrinks the file, and every step has the same file size;
//   5. refcount block writes lie at reported refcount-table offsets or at
//      blocks a table write names; table writes (a moved table, a new
//      block's entry) lie inside the reported table or one a 12-byte write
//      of the header's table fields moved it to, and name aligned blocks.
import type * as DowngradePlan from "../../lib/formats/qcow2/downgrade_plan.ts";
import type * as RefcountOrderPlan from "../../lib/formats/qcow2/refcount_order_plan.ts";
import type { Qcow2Model } from "../../lib/formats/qcow2/model.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, optional } from "../engine/plan_checks.ts";

const mod = await optional<typeof DowngradePlan>("../../lib/formats/qcow2/downgrade_plan.ts");
const rmod = await optional<typeof RefcountOrderPlan>("../../lib/formats/qcow2/refcount_order_plan.ts");

/**
 * The refcount-width planner (input byte 0 bit 7 set): byte 0 & 7 = cluster_bits - 9
 * (9..16, walks stay small), byte 1 = old order (b % 7), byte 2 = new order (b % 7),
 * 3-10 file size, then 17-byte records: kind 0/1 a refcount run (start: the last run's
 * end + u8 % 64, or with its bit 7 from the table's last 8 blocks; count u8, refcount
 * u64), kind 2 a refcount-table entry (index u8: % 8, bit 6 one of the last 8, bit 7
 * % 64; block cluster u32).
 * Invariants: every step passes checkPlan; all steps share one file size, not below
 * the input's; the new table and blocks are cluster aligned inside the file and
 * never overlap the old table (except entries of blocks placed in the old structures,
 * and a moved old table's header fields before the switch); each new refcount block write is one cluster; for
 * widths of 8 bits and more every entry it holds fits the width (the encoder's).
 */
function runRefcountOrder(d: Uint8Array, cov: Cov): void {
  if (!rmod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (d[0] & 3);
  const cs = 1n << BigInt(clusterBits);
  const oldOrder = b.u8(1) % 7, newOrder = b.u8(2) % 7;
  if (oldOrder === newOrder) return;
  const fileSize = b.u64(3) & ((1n << 32n) - 1n);
  const oldPer = 1n << BigInt(clusterBits + 3 - oldOrder);
  const oldMax = oldOrder === 6 ? (1n << 64n) - 1n : (1n << (1n << BigInt(oldOrder))) - 1n;
  const tableEntries = cs / 8n;
  const reftable = new Map<number, bigint>();
  const runs: RefcountOrderPlan.RefcountOrderScan["runs"] = [];
  let next = 0n;
  for (let at = 11; at + 17 <= d.length && runs.length < 256; at += 17) {
    const kind = d[at] % 3;
    if (kind < 2) {
      // bit 7: jump to the last 8 blocks the one-cluster table can name, so
      // allocations reach past it (a new block, a moved table)
      if (d[at + 1] & 0x80 && next < (tableEntries - 8n) * oldPer) next = (tableEntries - 8n) * oldPer;
      const start = next + BigInt(d[at + 1] % 64), count = 1n + BigInt(d[at + 3] % 32);
      const v = b.u64(at + 4) % oldMax + 1n;
      runs.push({ start, count, refcount: v });
      next = start + count;
    } else {
      // bit 7: any of the first 64 entries; bit 6: one of the last 8
      const index = d[at + 1] & 0x80
        ? d[at + 1] % 64
        : (d[at + 1] & 0x40 ? Number(tableEntries) - 8 : 0) + d[at + 1] % 8;
      reftable.set(index, BigInt(b.u32(at + 2) % 4096) << BigInt(clusterBits));
    }
  }
  // The guest reports counts only inside blocks the table names.
  const kept = runs.filter((r) =>
    reftable.has(Number(r.start / oldPer)) && reftable.has(Number((r.start + r.count - 1n) / oldPer))
  );
  cov.hit(
    `refcount:cb:${clusterBits}:from:${oldOrder}:to:${newOrder}:runs:${sizeClass(BigInt(kept.length))}`,
  );
  const r = rmod.planRefcountOrder({
    clusterBits,
    refcountOrder: oldOrder,
    fileSize,
    reftableOffset: cs,
    reftableClusters: 1,
    reftable,
    runs: kept,
  }, newOrder);
  cov.hit(`refcount:${r.kind}`);
  if (r.kind !== "write") return;
  const steps = [...r.before, ...r.after];
  const size = steps[0].fileSize;
  invariant(size >= fileSize, "refcount: the file shrinks");
  invariant(r.reftableOffset % cs === 0n && r.reftableOffset > cs, "refcount: new table misplaced");
  invariant(r.reftableClusters > 0, "refcount: empty new table");
  const newBits = 1 << newOrder;
  const before = new Set(r.before);
  let moved = false;
  for (const s of steps) {
    checkPlan(s, "refcount", cov);
    invariant(s.fileSize === size, "refcount: steps disagree on the file size");
    for (const p of s.patches) {
      invariant(p.kind === "write", `refcount: unexpected ${p.kind} patch`);
      if (p.offset === 48n && p.bytes.length === 12) {
        // an old table moved by qcow2_refcount_area (before the header switch)
        invariant(before.has(s), "refcount: a moved table after the switch");
        const to = new DataView(p.bytes.buffer, p.bytes.byteOffset).getBigUint64(0);
        invariant(to % cs === 0n && to >= 2n * cs, `refcount: old table moved to ${to}`);
        cov.hit("refcount:moved");
        moved = true;
        continue;
      }
      if (moved && p.offset % cs === 0n && BigInt(p.bytes.length) % cs === 0n) {
        // once the old table moved, its clusters are free for new structures
        cov.hit("refcount:after-move");
        continue;
      }
      if (p.offset >= cs && p.offset < 2n * cs) {
        // only entries of blocks placed in the old structures, hooked up
        invariant(before.has(s) && p.bytes.length % 8 === 0, "refcount: write into the old table");
        const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset, p.bytes.length);
        for (let k = 0; k < p.bytes.length; k += 8) {
          const i = Number((p.offset - cs) / 8n) + k / 8;
          invariant(!reftable.has(i), `refcount: old table entry ${i} rewritten`);
          invariant(dv.getBigUint64(k) % cs === 0n, "refcount: unaligned block hooked up");
        }
        cov.hit("refcount:hookup");
        continue;
      }
      invariant(p.offset % cs === 0n, `refcount: unaligned write at ${p.offset}`);
      invariant(p.offset >= 2n * cs || p.offset < cs, "refcount: write into the old table");
    }
  }
  for (const p of r.after.flatMap((s) => s.patches)) {
    if (p.kind !== "write" || newBits < 8) continue;
    invariant(BigInt(p.bytes.length) === cs, "refcount: a refcount block is not one cluster");
    cov.hit(`refcount:after:${newBits}`);
  }
}

function model(
  clusterBits: number,
  bits: number,
  flags: number,
  size: bigint,
  nbSnapshots: number,
): Qcow2Model {
  const incompat = ((flags & 2) ? 1n : 0n) | ((flags & 16) ? 4n : 0n) | ((flags & 8) ? 8n : 0n) |
    ((flags & 4) ? 16n : 0n);
  return {
    version: 3,
    virtualSize: size,
    clusterBits,
    clusterSize: 1n << BigInt(clusterBits),
    refcountBits: bits,
    compressionType: (flags & 8) ? "zstd" : "zlib",
    dirty: (flags & 2) !== 0,
    corrupt: false,
    incompatibleFeatures: incompat,
    extendedL2: (flags & 4) !== 0,
    lazyRefcounts: (flags & 32) !== 0,
    hasDataFileBit: (flags & 16) !== 0,
    dataFileRaw: false,
    backingFile: (flags & 1) ? new TextEncoder().encode("base.qcow2") : undefined,
    backingFormat: (flags & 1) ? "qcow2" : undefined,
    nbSnapshots,
    nbBitmaps: 0,
    hasBitmapsExt: false,
    layout: {
      l1TableOffset: 3n << BigInt(clusterBits),
      l1Size: 1,
      refcountTableOffset: 1n << BigInt(clusterBits),
      refcountTableClusters: 1,
      snapshotsOffset: nbSnapshots ? 4n << BigInt(clusterBits) : 0n,
      compatibleFeatures: (flags & 32) ? 1n : 0n,
      autoclearFeatures: 0n,
      cryptMethod: 0,
      unknownExtension: false,
    },
  };
}

function run(d: Uint8Array, cov: Cov): void {
  if (!mod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (b.u8(0) % 8);
  const bits = 1 << (b.u8(1) % 7);
  const flags = b.u8(2);
  const fileSize = b.u64(3) & ((1n << 40n) - 1n);
  const nSnap = b.u8(11) % 4;
  const m = model(clusterBits, bits, flags, 64n << 20n, nSnap);
  const zeros: DowngradePlan.ZeroEntry[] = [];
  const runs: DowngradePlan.DowngradeScan["runs"] = [];
  const reftable = new Map<number, bigint>();
  let at = 12;
  const snapshots: DowngradePlan.SnapSizes[] = [];
  for (let i = 0; i < nSnap; i++) {
    const odd = at < d.length && (d[at] & 0x80) !== 0;
    snapshots.push({ diskSize: odd ? 1n << 20n : undefined, vmStateSize: 0n, l1Size: BigInt(d[at] ?? 0) });
    at++;
  }
  let next = 0n;
  for (; at + 17 <= d.length && zeros.length + runs.length < 4096; at += 17) {
    const a = b.u64(at + 1), v = b.u64(at + 9);
    switch (d[at] % 3) {
      case 0:
        zeros.push({ at: a & ((1n << 41n) - 1n), value: v });
        break;
      case 1: {
        // runs must ascend and not overlap, as decodeScan's caller sees them
        const count = 1n + (a & 0xffn), refcount = 1n + (v & ((1n << BigInt(Math.min(bits, 16))) - 2n));
        runs.push({ start: next, count, refcount });
        next += count + ((a >> 8n) & 0xfn);
        break;
      }
      default:
        reftable.set(Number(a & 0x3ffn), (v & 0xffffffffn) << BigInt(clusterBits));
    }
  }
  if (!reftable.has(0)) reftable.set(0, 2n << BigInt(clusterBits));
  cov.hit(
    `downgrade:cb:${clusterBits}:bits:${bits}:zeros:${sizeClass(BigInt(zeros.length))}:f:${flags & 63}`,
  );
  const r = mod.planQcow2Downgrade(m, {
    clusterBits,
    refcountOrder: Math.log2(bits),
    reftableOffset: 1n << BigInt(clusterBits),
    reftableClusters: 1,
    reftable,
    fileSize,
    runs,
    zeros,
    snapshots,
    hasBacking: (flags & 1) !== 0,
  });
  cov.hit(`downgrade:${r.kind}`);
  if (r.kind !== "write") return;
  const cs = 1n << BigInt(clusterBits);
  const entryAt = new Set(zeros.map((z) => z.at));
  const blocks = new Set(
    [...reftable.values()].map((v) => v & 0xfffffffffffffe00n),
  );
  // Refcount tables: the reported one and any a step moves to (a 12-byte
  // write of the header's table fields); blocks: the reported ones and any
  // a table write names.
  const tables: [bigint, bigint][] = [[cs, 2n * cs]];
  for (const p of r.steps.slice(0, -1).flatMap((s) => s.patches)) {
    if (p.kind === "write" && p.offset === 48n && p.bytes.length === 12) {
      const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset, 12);
      const to = dv.getBigUint64(0), n = BigInt(dv.getUint32(8));
      invariant(to % cs === 0n && to >= cs && n > 0n, `downgrade: refcount table moved to ${to}`);
      tables.push([to, to + n * cs]);
    }
  }
  const inTable = (off: bigint, len: bigint) => tables.some(([a, e]) => off >= a && off + len <= e);
  for (const p of r.steps.slice(0, -1).flatMap((s) => s.patches)) {
    if (p.kind !== "write" || !inTable(p.offset, BigInt(p.bytes.length)) || p.bytes.length % 8 !== 0) {
      continue;
    }
    const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset, p.bytes.length);
    for (let k = 0; k < p.bytes.length; k += 8) if (dv.getBigUint64(k)) blocks.add(dv.getBigUint64(k));
  }
  const size = r.steps[0]?.fileSize;
  invariant(size === undefined || size >= fileSize, "downgrade: the file shrinks");
  for (const [i, s] of r.steps.entries()) {
    checkPlan(s, "downgrade", cov);
    invariant(s.fileSize === size, "downgrade: steps disagree on the file size");
    const last = i === r.steps.length - 1;
    for (const p of s.patches) {
      if (last) {
        invariant(p.kind === "write" && p.offset === 0n, "downgrade: last step is not the header");
        const v = new DataView(p.bytes.buffer, p.bytes.byteOffset).getUint32(4);
        invariant(v === 2, `downgrade: header version ${v}`);
        cov.hit("downgrade:header");
        continue;
      }
      if (p.kind === "zero") {
        invariant(p.offset % cs === 0n && p.length % cs === 0n, "downgrade: unaligned zeroing");
        cov.hit("downgrade:zero");
      } else if (p.kind === "write" && blocks.has(p.offset) && BigInt(p.bytes.length) === cs) {
        cov.hit("downgrade:refblock");
      } else if (p.kind === "write" && p.offset === 48n && p.bytes.length === 12) {
        cov.hit("downgrade:moved");
      } else if (
        p.kind === "write" && inTable(p.offset, BigInt(p.bytes.length)) && p.bytes.length % 8 === 0 &&
        !entryAt.has(p.offset)
      ) {
        const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset, p.bytes.length);
        for (let k = 0; k < p.bytes.length; k += 8) {
          invariant(dv.getBigUint64(k) % cs === 0n, "downgrade: unaligned refcount block in a table");
        }
        cov.hit(p.bytes.length === 8 ? "downgrade:hookup" : "downgrade:table");
      } else if (p.kind === "write") {
        const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset, p.bytes.length);
        invariant(p.bytes.length % 8 === 0, "downgrade: entry write not whole entries");
        for (let k = 0; k < p.bytes.length; k += 8) {
          invariant(
            entryAt.has(p.offset + BigInt(k)),
            `downgrade: write at ${p.offset + BigInt(k)} not an entry`,
          );
          invariant((dv.getBigUint64(k) & 1n) === 0n, "downgrade: entry keeps the zero flag");
        }
        cov.hit("downgrade:entries");
      } else {
        invariant(false, `downgrade: unexpected ${p.kind} patch`);
      }
    }
  }
  invariant(r.steps.length > 0, "downgrade: no header step");
}

export const target: TsTarget = {
  description: mod ? "amend's qcow2 downgrade and refcount-width planners" : "none present yet",
  run(data, cov) {
    if (data.length < 12) return;
    if (data[0] & 0x80) runRefcountOrder(data, cov);
    else run(data, cov);
  },
};
