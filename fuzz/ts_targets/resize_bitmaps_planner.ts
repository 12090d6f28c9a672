// The bitmap path of a qcow2 resize (lib/formats/qcow2/resize_bitmaps.ts)
// for the resize_planners target: the bitmap planner's "open" phase (the
// in-use marking) and its "store" phase (the bitmaps stored anew for the
// new size at close), on bitmaps whose data clusters may be cut by a
// shrink (BITMAP_CUT) and with the free-cluster index the resize left.
//
// Input (after resize_planners' selector byte 0):
//   1      cluster_bits = 9 + b % 8        2  refcount order = b % 7
//   3      bit 0-1 bitmaps (1..3), bit 2 a free index is given, bit 3 the first entry of each bitmap is cut,
//          bit 4 entries past the new end may claim set bits (a hostile guest; the planner refuses),
//          bit 5 bitmaps whose flags byte has bit 0 are in use, kept as commit's reopen keeps them (inUseKept)
//          bit 6 each bitmap's last entry (inside the new table) is all ones (value 1, no cluster;
//          bitmap_tail.ts), cut like the first with bit 3
//   4-11   new virtual size (u64 LE, masked to 2^40, scaled down by 16 until the finest table fits 256 clusters)
//   12-13  used clusters (u16 LE, inside the first refcount block)
//   14-15  free index (u16 LE, mod used + 4)
//   16..   per bitmap 8 bytes: granularity bits, flags, entry count, then index gaps and nonzero bits,
//          cut keep (u16), cut byte
// The structures are laid out one after the other from cluster 3 (the
// directory, then each bitmap's table and data clusters), so most inputs
// pass the planner's own checks.
//
// Invariants on every plan:
//   1. every step passes checkPlan; the open phase is the three in-use steps
//      (header, the directory in place, header) and allocates nothing;
//   2. the store copies whole data clusters the scan listed, or, for a cut
//      entry, its first `keep` bytes followed by a write of the rest of the
//      cluster: the cut byte (or zero), then zeroes;
//   3. no copy of an entry at or past the new table's end;
//   4. every cluster the store allocates (anything written but the header,
//      refcount table entries and the refcount blocks the scan named) lies at
//      or past the free index given;
//   5. with bitmaps in use (inUseKept): no patch touches an in-use bitmap's
//      table, and when every bitmap is in use the store plans nothing.
//   6. every all-ones entry is stored as a cluster written whole: ones up to
//      its cut's keep (else to the end of the word holding the bitmap's end),
//      then the cut byte, then zeroes.
import type * as BitmapPlan from "../../lib/formats/qcow2/bitmap_plan.ts";
import type { Qcow2Model } from "../../lib/formats/qcow2/model.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";
import { bitmapModel } from "../engine/qcow2_layout.ts";

const mod = await optional<typeof BitmapPlan>("../../lib/formats/qcow2/bitmap_plan.ts");
export const present = mod !== undefined;

const enc = new TextEncoder();

/** bitmap_planner's model, without an L1 table, the bitmaps extension and autoclear bit always set. */
function model(clusterBits: number, order: number, size: bigint, nb: number): Qcow2Model {
  const m = bitmapModel(3, clusterBits, order, size, nb);
  return {
    ...m,
    hasBitmapsExt: true,
    layout: { ...m.layout, l1TableOffset: 0n, l1Size: 0, autoclearFeatures: 1n },
  };
}

export function runResizeBitmaps(d: Uint8Array, cov: Cov): void {
  if (!mod || d.length < 24) return;
  const b = new Bytes(d);
  const u16 = (at: number) => b.u8(at) | (b.u8(at + 1) << 8);
  const clusterBits = 9 + (b.u8(1) % 8);
  const order = b.u8(2) % 7;
  const flags = b.u8(3);
  const cs = 1n << BigInt(clusterBits);
  let len = (b.u64(4) & ((1n << 40n) - 1n)) & ~511n;
  const finest = (n: bigint) => mod.tableSizeFor(n, 9, cs);
  while (finest(len) > 256n) len = (len >> 4n) & ~511n;
  if (len === 0n) len = 512n;
  const perBlock = (cs * 8n) >> BigInt(order);
  const nb = 1 + (flags & 3) % 3;
  // Layout: header 0, refcount table 1, block 2, directory 3, then the bitmaps.
  let next = 4n;
  const bitmaps: BitmapPlan.BitmapScanDir[] = [];
  const dataClusters = new Map<bigint, BitmapPlan.BitmapScanEntry>();
  const ones: { e: BitmapPlan.BitmapScanEntry; gbits: number }[] = [];
  let at = 16;
  for (let i = 0; i < nb; i++, at += 8) {
    const gbits = 9 + (b.u8(at) % 23);
    // The table as stored for the old size: at least the new one's entries, maybe more (a shrink).
    const fits = mod.tableSizeFor(len, gbits, cs);
    const size = fits + BigInt(b.u8(at + 2) >> 4);
    const tableOffset = next * cs;
    next += (size * 8n + cs - 1n) / cs;
    const entries: BitmapPlan.BitmapScanEntry[] = [];
    let idx = 0n;
    // An in-use bitmap is not read by the guest: no entries.
    const inUse = (flags & 32) !== 0 && (b.u8(at + 1) & 1) !== 0;
    const count = b.u8(at + 2) & 7;
    for (let k = 0; k < count && idx < size && !inUse; k++) {
      if ((flags & 64) !== 0 && k === count - 1 && idx < fits) {
        const e: BitmapPlan.BitmapScanEntry = { index: idx, value: mod.ALL_ONES, nonzero: true };
        if ((flags & 8) !== 0) {
          const keep = BigInt(u16(at + 5)) % cs, byte = b.u8(at + 7);
          e.cut = { keep, byte: (byte & 1) !== 0 ? byte >> 1 : undefined };
        }
        entries.push(e);
        ones.push({ e, gbits });
        cov.hit(`resize-bitmaps:all-ones:${e.cut !== undefined}`);
        break;
      }
      const e: BitmapPlan.BitmapScanEntry = {
        index: idx,
        value: next * cs,
        // Past the new end the guest finds no set bit inside the bitmap (unless hostile: bit 4).
        nonzero: (((b.u8(at + 3) >> k) & 1) !== 0 || k === 0) && (idx < fits || (flags & 16) !== 0),
      };
      if (k === 0 && (flags & 8) !== 0) {
        const keep = BigInt(u16(at + 5)) % cs, byte = b.u8(at + 7);
        if (e.nonzero) e.cut = { keep, byte: keep === 0n || (byte & 1) !== 0 ? byte >> 1 : undefined };
        if (e.cut) cov.hit(`resize-bitmaps:cut:${e.cut.byte !== undefined}`);
      }
      entries.push(e);
      dataClusters.set(next, e);
      next++;
      idx += 1n + BigInt((b.u8(at + 4) >> (k % 4 * 2)) & 3);
    }
    bitmaps.push({
      name: enc.encode(`b${i}`),
      flags: (b.u8(at + 1) & 2) | (inUse ? 1 : 0),
      granularityBits: gbits,
      tableOffset,
      tableSize: size,
      state: 0,
      entries,
    });
  }
  if (next >= perBlock) return;
  const used = next + BigInt(u16(12)) % (perBlock - next);
  const freeIndex = (flags & 4) !== 0 ? BigInt(u16(14)) % (used + 4n) : undefined;
  const dirSize = bitmaps.reduce((n, x) => n + BigInt((24 + x.name.length + 7) & ~7), 0n);
  const scan: BitmapPlan.Qcow2BitmapScan = {
    model: model(clusterBits, order, len, nb),
    fileSize: used * cs,
    reftableOffset: cs,
    reftableClusters: 1n,
    reftable: new Map([[0, 2n * cs]]),
    runs: [{ start: 0n, count: used, refcount: 1n }],
    dirOffset: 3n * cs,
    dirSize,
    bitmaps,
  };
  cov.hit(`resize-bitmaps:nb:${nb}:free:${freeIndex !== undefined}:size:${sizeClass(len)}`);
  const req = (phase: "open" | "store"): BitmapPlan.BitmapRequest => ({
    name: new Uint8Array(0),
    granularity: 0n,
    actions: [],
    nodeName: "#block000",
    phase,
    freeIndex: phase === "store" ? freeIndex : undefined,
    inUseKept: (flags & 32) !== 0 || undefined,
  });
  const kept = bitmaps.filter((x) => (x.flags & 1) !== 0);
  if (kept.length > 0) cov.hit(`resize-bitmaps:in-use:${kept.length === nb ? "all" : "some"}`);
  const open = mod.planQcow2Bitmap(scan, req("open"));
  if (!checkResult(open, "resize-bitmaps-open", cov)) return;
  invariant(open.value.steps.length === 3, `resize-bitmaps: ${open.value.steps.length} open steps`);
  for (const s of open.value.steps) {
    checkPlan(s, "resize-bitmaps open", cov);
    invariant(s.fileSize === scan.fileSize, "resize-bitmaps: the open phase changes the file's size");
  }
  const r = mod.planQcow2Bitmap(scan, req("store"));
  if (!checkResult(r, "resize-bitmaps-store", cov)) return;
  const steps = r.value.steps;
  invariant(steps.length <= 40, `resize-bitmaps: ${steps.length} steps`);
  if (kept.length === nb) invariant(steps.length === 0, "resize-bitmaps: a store with every bitmap in use");
  const floor = (freeIndex ?? 0n) * cs;
  // Refcount blocks the plan hooks up are new clusters too: only block 0 is the scan's.
  for (const s of steps) {
    checkPlan(s, "resize-bitmaps store", cov);
    const writes = new Map<bigint, Uint8Array>();
    for (const p of s.patches) if (p.kind === "write") writes.set(p.offset, p.bytes);
    for (const p of s.patches) {
      if (p.kind === "zero") continue;
      const end = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
      for (const x of kept) {
        const tEnd = x.tableOffset + ((x.tableSize * 8n + cs - 1n) / cs) * cs;
        invariant(
          end <= x.tableOffset || p.offset >= tEnd,
          "resize-bitmaps: an in-use bitmap's table touched",
        );
      }
      const fixed = p.offset === 0n || p.offset === 48n || (p.offset >= cs && end <= 3n * cs);
      if (!fixed) {
        invariant(
          p.offset >= floor,
          () => `resize-bitmaps: ${p.kind} at ${p.offset} below the free index ${floor}`,
        );
      }
      if (p.kind !== "copy") continue;
      invariant(p.offset % cs === 0n, `resize-bitmaps: copy to ${p.offset}`);
      const e = p.from % cs === 0n ? dataClusters.get(p.from / cs) : undefined;
      invariant(e !== undefined && e.nonzero, `resize-bitmaps: copy from ${p.from}, not listed data`);
      const owner = bitmaps.find((x) => x.entries.includes(e));
      invariant(
        owner !== undefined && e.index < mod.tableSizeFor(len, owner.granularityBits, cs),
        "resize-bitmaps: a copy of data past the new table",
      );
      if (e.cut) {
        invariant(p.length === e.cut.keep, `resize-bitmaps: cut copy of ${p.length} bytes`);
        const rest = writes.get(p.offset + e.cut.keep);
        invariant(
          rest !== undefined && BigInt(rest.length) === cs - e.cut.keep,
          "resize-bitmaps: no cut tail",
        );
        invariant(rest[0] === (e.cut.byte ?? 0), "resize-bitmaps: the boundary byte differs");
        invariant(rest.subarray(1).every((x) => x === 0), "resize-bitmaps: the cut tail is not zero");
        cov.hit("resize-bitmaps:cut-copy");
      } else {
        invariant(p.length === cs, `resize-bitmaps: partial copy ${p.length}`);
        cov.hit("resize-bitmaps:copy");
      }
    }
  }
  // 6. each all-ones entry: a whole cluster written, ones, the cut byte, zeroes.
  const whole = steps.flatMap((s) => s.patches).filter((p) =>
    p.kind === "write" && BigInt(p.bytes.length) === cs
  );
  for (const { e, gbits } of ones) {
    const bits = ((len - 1n) >> BigInt(gbits)) + 1n, per = cs * 8n;
    const here = bits - e.index * per < per ? bits - e.index * per : per;
    const want = new Uint8Array(Number(cs));
    const keep = e.cut ? e.cut.keep : ((here + 63n) / 64n) * 8n;
    want.fill(0xff, 0, Number(keep));
    if (e.cut?.byte !== undefined) want[Number(keep)] = e.cut.byte;
    invariant(
      whole.some((p) => p.kind === "write" && p.bytes.every((x, j) => x === want[j])),
      `resize-bitmaps: all-ones entry ${e.index} not stored as ${keep} bytes of ones`,
    );
    cov.hit("resize-bitmaps:all-ones-stored");
  }
  cov.hit(`resize-bitmaps:steps:${steps.length}`);
}

// Every file in fuzz/ts_targets is a target the engine lists (fuzz/engine/targets.ts):
// this one also runs alone, on the same input layout (byte 0 unused), besides
// being one of resize_planners' selections.
export const target: TsTarget = {
  description: present ? "the bitmap path of a qcow2 resize (open and store phases)" : "none present yet",
  run(data, cov) {
    if (!present || data.length < 32) return;
    runResizeBitmaps(data, cov);
  },
};
