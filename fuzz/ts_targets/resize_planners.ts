// Fuzz target resize_planners: the resize planners on structured inputs
// (seed 003's layout, mapped onto lib/formats/*/resize_plan.ts).
//
// Input: a 32-byte header, then a pool of records.
//   0      planner selector (mod the planners present: qcow2 grow, qcow2 shrink, vmdk, vhd,
//          vhdx, the bitmaps of a qcow2 resize: resize_bitmaps_planner.ts has its layout)
//   1      flags: bit 1 extended_l2, bit 7 "raw" (skip the repairs below)
//   2      refcount_bits selector 0..7 -> refcount_order 0..6, 7 = invalid (7)
//   3      cluster_bits selector: 9 + b % 13 (b >= 0xf0: b & 0x1f, maybe invalid)
//   4-5    L1 size (u16 LE)           6-7  refcount table clusters (u16 LE)
//   8-15   current virtual size (u64 LE)
//   16-23  new virtual size (u64 LE; qcow2 shrink: the target is made smaller)
//   24-31  current file size (u64 LE), independent on purpose
//   pool   u16 L1 offset cluster, u16 refcount table cluster, then records
//          tag % 5: 0 L1 entry (u16 index, u64 value), 1 refcount table
//          entry (u16 index, u32 cluster), 2 refcount run (u16 gap, u16
//          count, u16 refcount), 3 freed clusters (u32 start, u16 count),
//          4 zeroed L2 range (u32 offset, u16 count).
// Without the raw flag the decoder keeps the scan structurally plausible
// (aligned offsets, ascending runs, refcounts in range, runs inside
// refcount blocks) so the planner gets past scanViolation most of the time.
//
// Invariants on every successful plan, for every step (each a FilePlan):
//   - at most MAX_PATCHES patches; every patch end <= the step's file size
//     <= INT64_MAX (no overflow); no two patches overlap (planViolation and
//     an independent check);
//   - the plan writes the new size into the header (offset 24, big-endian);
//   - a refusal is a typed PlanError (any throw is a finding).
import type * as QcowResize from "../../lib/formats/qcow2/resize_plan.ts";
import type * as ResizeInput from "../../lib/formats/vpc/resize_input.ts";
import type * as VpcResize from "../../lib/formats/vpc/resize_plan.ts";
import type * as VhdxResize from "../../lib/formats/vhdx/resize_plan.ts";
import type * as VmdkResize from "../../lib/formats/vmdk/resize_plan.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";
import { present as bitmapsPresent, runResizeBitmaps } from "./resize_bitmaps_planner.ts";

const qcow = await optional<typeof QcowResize>("../../lib/formats/qcow2/resize_plan.ts");
const input = await optional<typeof ResizeInput>("../../lib/formats/vpc/resize_input.ts");
const vpc = await optional<typeof VpcResize>("../../lib/formats/vpc/resize_plan.ts");
const vhdx = await optional<typeof VhdxResize>("../../lib/formats/vhdx/resize_plan.ts");
const vmdk = await optional<typeof VmdkResize>("../../lib/formats/vmdk/resize_plan.ts");

type Planner = (d: Uint8Array, cov: Cov) => void;
const planners: Planner[] = [];
if (qcow) {
  planners.push((d, cov) => runQcow2(d, cov, false));
  planners.push((d, cov) => runQcow2(d, cov, true));
}
if (input && vpc && vhdx && vmdk) {
  // Seed 003's own layout (lib/formats/vpc/resize_input.ts): byte 0 picks
  // vmdk (3), vhd (4) or vhdx (5); the decoder asks for plans beyond
  // qemu-img's refusal so the planners' arithmetic is reached.
  for (const sel of [3, 4, 5]) planners.push((d, cov) => runOther(d, cov, sel));
}
// The bitmaps of a qcow2 resize: marked in use, stored anew (resize_bitmaps_planner.ts).
if (bitmapsPresent) planners.push(runResizeBitmaps);

const U64 = 1n << 64n;

function runOther(d: Uint8Array, cov: Cov, selector: number) {
  const bytes = d.slice();
  bytes[0] = selector;
  const dec = input!.decodeResizeInput(bytes);
  if (!dec || dec.format === "other") return;
  cov.hit(`${dec.format}:${dec.request.shrink ? "shrink" : "grow"}:${sizeClass(dec.request.newSize)}`);
  const r = dec.format === "vpc"
    ? vpc!.planVpcResize(dec.summary, dec.request)
    : dec.format === "vhdx"
    ? vhdx!.planVhdxResize(dec.summary, dec.request)
    : vmdk!.planVmdkResize(dec.summary, dec.request);
  // Seed 002 bug B: a VHDX sequence number within 2 of 2^64 is refused up
  // front (the two header rewrites add 1 and 2), never wrapped.
  if (dec.format === "vhdx" && dec.summary.sequenceNumber >= U64 - 2n) {
    invariant(!r.ok, () => `VHDX sequence number ${dec.summary.sequenceNumber} was accepted`);
  }
  if (!checkResult(r, `${dec.format}-resize`, cov)) return;
  checkPlan(r.value, `${dec.format} resize`, cov);
}

function decodeScan(d: Uint8Array, cov: Cov): QcowResize.Qcow2ResizeScan {
  const b = new Bytes(d);
  const raw = (b.u8(1) & 0x80) !== 0;
  const extendedL2 = (b.u8(1) & 2) !== 0;
  const rsel = b.u8(2) & 7;
  const refcountOrder = rsel === 7 ? 7 : rsel;
  const csel = b.u8(3);
  const clusterBits = csel >= 0xf0 ? csel & 0x1f : 9 + (csel % 13);
  const cb = BigInt(clusterBits);
  const l1Size = b.u32(4) & 0xffff;
  const reftableClusters = (b.u32(6) & 0xffff) % (raw ? 0x10000 : 8) + (raw ? 0 : 1);
  const virtualSize = b.u64(8), fileSize = b.u64(24);
  const l1Offset = BigInt(b.u32(32) & 0xffff) << cb;
  const reftableOffset = BigInt(b.u32(34) & 0xffff) << cb;
  const l1 = new Map<number, bigint>(), reftable = new Map<number, bigint>();
  const runs: QcowResize.RefRun[] = [],
    frees: QcowResize.ByteRange[] = [],
    zeros: QcowResize.ByteRange[] = [];
  const rbBits = BigInt(clusterBits + 3 - Math.min(refcountOrder, 6));
  const maxRc = refcountOrder >= 6 ? (1n << 64n) - 1n : (1n << (1n << BigInt(refcountOrder))) - 1n;
  const tableEntries = reftableClusters * 2 ** Math.max(clusterBits - 3, 0);
  let at = 36, next = 0n;
  while (at < d.length && runs.length + l1.size + reftable.size + frees.length + zeros.length < 512) {
    const tag = b.u8(at++) % 5;
    if (tag === 0) {
      const i = b.u32(at) & 0xffff, v = b.u64(at + 2);
      at += 10;
      l1.set(raw ? i : l1Size ? i % l1Size : 0, raw ? v : (v & ~((1n << cb) - 1n)) & 0x80fffffffffffe00n);
      if (!raw && !l1Size) l1.clear();
    } else if (tag === 1) {
      const i = b.u32(at) & 0xffff, c = BigInt(b.u32(at + 2));
      at += 6;
      const idx = raw ? i : i % Math.max(1, Math.min(tableEntries, 0x10000));
      const v = raw ? c << 9n : (c & 0xffffn) << cb;
      if (raw || v !== 0n) reftable.set(idx, v);
    } else if (tag === 2) {
      const gap = BigInt(b.u32(at) & 0xffff),
        count = BigInt(b.u32(at + 2) & 0xffff),
        rc = BigInt(b.u32(at + 4) & 0xffff);
      at += 6;
      const start = next + gap;
      const run = raw
        ? { start, count, refcount: rc }
        : { start, count: count || 1n, refcount: rc % maxRc + 1n };
      if (!raw) {
        // Keep the run inside refcount blocks that exist.
        for (let t = run.start >> rbBits; t <= (run.start + run.count - 1n) >> rbBits; t++) {
          if (t >= BigInt(Math.min(tableEntries, 0x10000))) break;
          if (!reftable.has(Number(t))) reftable.set(Number(t), (t + 1n) << cb);
        }
      }
      runs.push(run);
      next = run.start + run.count;
    } else if (tag === 3) {
      frees.push({ start: BigInt(b.u32(at)), count: BigInt(b.u32(at + 4) & 0xffff) || (raw ? 0n : 1n) });
      at += 6;
    } else {
      zeros.push({ start: BigInt(b.u32(at)) << (raw ? 0n : 3n), count: BigInt(b.u32(at + 4) & 0xffff) });
      at += 6;
    }
  }
  cov.hit(`scan:order:${refcountOrder}`);
  cov.hit(`scan:cb:${clusterBits}`);
  cov.hit(`scan:extl2:${extendedL2}`);
  cov.hit(`scan:raw:${raw}`);
  cov.hit(`scan:runs:${sizeClass(BigInt(runs.length))}`);
  return {
    clusterBits,
    refcountOrder,
    extendedL2,
    virtualSize,
    fileSize,
    l1Offset,
    l1Size,
    l1,
    reftableOffset,
    reftableClusters,
    reftable,
    runs,
    frees,
    zeros,
  };
}

function runQcow2(d: Uint8Array, cov: Cov, shrink: boolean) {
  const scan = decodeScan(d, cov);
  const bad = qcow!.scanViolation(scan);
  cov.hit(`qcow2:scan:${bad ? bad.replace(/\d+/g, "N") : "valid"}`);
  let newSize = new Bytes(d).u64(16);
  if (shrink && scan.virtualSize > 0n) newSize = (newSize % scan.virtualSize) & ~511n;
  cov.hit(`qcow2:${shrink ? "shrink" : "grow"}:${sizeClass(newSize)}`);
  // Byte 1's bits 2..3 (unused by the scan) pick the preallocation mode of a grow.
  const preallocation = shrink ? "off" : (["off", "metadata", "falloc", "full"] as const)[(d[1] >> 2) & 3];
  cov.hit(`qcow2:prealloc:${preallocation}`);
  // A preallocating plan holds every cluster it adds in memory (up to the
  // planner's 2^24 cap): keep most such grows small so executions stay fast.
  if (preallocation !== "off" && (d[1] & 0x40) === 0) {
    newSize = ((scan.virtualSize + 511n) & ~511n) + ((newSize % (64n << 20n)) & ~511n);
  }
  const r = qcow!.planQcow2Resize(scan, { newSize, preallocation });
  if (!checkResult(r, `qcow2-${shrink ? "shrink" : "grow"}`, cov)) return;
  invariant(bad === undefined, () => `plan accepted a scan scanViolation refuses: ${bad}`);
  let sizeWritten = false;
  r.value.steps.forEach((step, i) => {
    checkPlan(step, `qcow2 resize step ${i}`, cov);
    for (const p of step.patches) {
      if (p.kind === "write" && p.offset <= 24n && p.offset + BigInt(p.bytes.length) >= 32n) {
        const o = Number(24n - p.offset);
        const v = new DataView(p.bytes.buffer, p.bytes.byteOffset).getBigUint64(o, false);
        if (v === newSize) sizeWritten = true;
      }
    }
  });
  cov.hit(`qcow2:steps:${r.value.steps.length}`);
  invariant(sizeWritten || r.value.steps.length === 0, "no step writes the new size into the header");
}

export const target: TsTarget = {
  description: `resize planners (${
    planners.length ? "qcow2 grow/shrink, vmdk, vhd, vhdx, qcow2 bitmaps" : "none present yet"
  })`,
  run(data, cov) {
    if (!planners.length || data.length < 32) return;
    planners[data[0] % planners.length](data, cov);
  },
};
