// The vpc/vhdx output planners against hostile guest reports: every bad
// run list is a refusal (never a throw, never a plan that writes outside
// the image), and a good one gives the BAT entries the layout promises.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { checkBlockRuns } from "./block_output.ts";
import { vpcOutput } from "./vpc/output_plan.ts";
import { vhdxOutput } from "./vhdx/output_plan.ts";
import { type FilePlan, type PlanResult, planViolation } from "./plan.ts";
import type { BlockOutput } from "./types.ts";

const MiB = 1n << 20n;
const vpcEntropy = { unixSeconds: 1_700_000_000n, uuid: new Uint8Array(16).fill(7) };
const vhdxEntropy = {
  sequenceNumber: 5,
  fileWriteGuid: new Uint8Array(16).fill(1),
  dataWriteGuid: new Uint8Array(16).fill(2),
  page83Guid: new Uint8Array(16).fill(3),
};

Deno.test("checkBlockRuns refuses what a hostile guest could report", () => {
  const S = 100n, stride = 10n;
  const good = [{ block: 0n, count: 2n, slot: 100n }, { block: 5n, count: 1n, slot: 125n }];
  assert(checkBlockRuns(good, 8n, S, 135n, stride, 5n).ok);
  const bad: [string, { block: bigint; count: bigint; slot: bigint }[], bigint][] = [
    ["empty run", [{ block: 0n, count: 0n, slot: 100n }], 110n],
    ["block past the end", [{ block: 7n, count: 2n, slot: 100n }], 120n],
    ["negative block", [{ block: -1n, count: 1n, slot: 100n }], 110n],
    ["slot before the data", [{ block: 0n, count: 1n, slot: 90n }], 110n],
    ["misaligned slot", [{ block: 0n, count: 1n, slot: 102n }], 120n],
    ["slot past the data end", [{ block: 0n, count: 2n, slot: 100n }], 110n],
    ["block twice", [{ block: 0n, count: 2n, slot: 100n }, { block: 1n, count: 1n, slot: 120n }], 130n],
    ["slot twice", [{ block: 0n, count: 1n, slot: 100n }, { block: 3n, count: 1n, slot: 100n }], 110n],
    ["data end off a boundary", [], 103n],
    ["data end past every slot", [], 100n + 8n * stride + 4100n],
  ];
  for (const [what, runs, end] of bad) assert(!checkBlockRuns(runs, 8n, S, end, stride, 5n).ok, what);
});

Deno.test("vpc dynamic output: BAT points at the slots, footer after the data", () => {
  const o = vpcOutput({ size: 10n * MiB }, vpcEntropy);
  assert(o.ok);
  const b = o.value;
  assertEquals([b.placement, b.blockSize, b.slotPrefix], ["slots", 2n * MiB, 512n]);
  const stride = 2n * MiB + 512n;
  const plan = b.finish(b.dataStart + 2n * stride, [{ block: 1n, count: 1n, slot: b.dataStart }, {
    block: 4n,
    count: 1n,
    slot: b.dataStart + stride,
  }]);
  assert(plan.ok);
  assertEquals(planViolation(plan.value), undefined);
  assertEquals(plan.value.fileSize, b.dataStart + 2n * stride + 512n);
  const bat = plan.value.patches.find((p) => p.offset === 1536n)!;
  assert(bat.kind === "write");
  const v = new DataView(bat.bytes.buffer, bat.bytes.byteOffset);
  assertEquals(v.getUint32(0), 0xffffffff);
  assertEquals(BigInt(v.getUint32(4)), b.dataStart / 512n);
  assertEquals(BigInt(v.getUint32(16)), (b.dataStart + stride) / 512n);
  assert(!b.finish(b.dataStart + stride, [{ block: 9n, count: 1n, slot: b.dataStart }]).ok);
  assert(b.cap >= b.dataStart + 5n * stride);
});

Deno.test("vpc fixed and vhdx fixed outputs take no runs", () => {
  const v = vpcOutput({ size: 10n * MiB, subformat: "fixed" }, vpcEntropy);
  assert(v.ok && v.value.placement === "inplace");
  assert(!v.value.finish(v.value.cap, [{ block: 0n, count: 1n, slot: 0n }]).ok);
  assert(!v.value.finish(v.value.cap + 1n, []).ok);
  const x = vhdxOutput({ size: 10n * MiB, subformat: "fixed" }, vhdxEntropy);
  assert(x.ok && x.value.placement === "inplace");
  const p = x.value.finish(x.value.cap, []);
  assert(p.ok);
  assertEquals(planViolation(p.value), undefined);
});

Deno.test("vhdx dynamic output: FULLY_PRESENT at the slots, ZERO or NOT_PRESENT elsewhere", () => {
  for (const zero of [true, false]) {
    const o = vhdxOutput({ size: 20n * MiB, blockSize: MiB, blockStateZero: zero }, vhdxEntropy);
    assert(o.ok);
    const b = o.value;
    const plan = b.finish(b.dataStart + MiB, [{ block: 3n, count: 1n, slot: b.dataStart }]);
    assert(plan.ok);
    assertEquals(planViolation(plan.value), undefined);
    // The BAT follows the 1 MiB log at 1 MiB: 20 entries, no sector-bitmap entry yet.
    const bat = plan.value.patches.find((p) => p.offset === 2n * MiB)!;
    assert(bat.kind === "write" && bat.bytes.length === 20 * 8);
    const v = new DataView(bat.bytes.buffer, bat.bytes.byteOffset);
    assertEquals(v.getBigUint64(3 * 8, true), b.dataStart | 6n);
    assertEquals(v.getBigUint64(0, true), zero ? 2n : 0n);
    assert(!b.finish(b.dataStart + MiB, [{ block: 20n, count: 1n, slot: b.dataStart }]).ok);
  }
});

Deno.test("random guest reports: a refusal or a plan that keeps the plan invariants", () => {
  let seed = 42;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const vpc = vpcOutput({ size: 40n * MiB }, vpcEntropy);
  const vhdx = vhdxOutput({ size: 40n * MiB, blockSize: 2n * MiB }, vhdxEntropy);
  assert(vpc.ok && vhdx.ok);
  let plans = 0;
  for (let i = 0; i < 2000; i++) {
    const b: BlockOutput = i % 2 ? vpc.value : vhdx.value;
    const stride = b.blockSize + b.slotPrefix;
    const runs = Array.from({ length: rnd(4) }, () => ({
      block: BigInt(rnd(24) - 2),
      count: BigInt(rnd(4)),
      slot: b.dataStart + BigInt(rnd(22)) * stride + BigInt(rnd(3) === 0 ? rnd(4096) : 0),
    }));
    const end = b.dataStart + BigInt(rnd(22)) * stride + BigInt(rnd(3) === 0 ? 512 * rnd(16) : 0);
    const plan: PlanResult<FilePlan> = b.finish(end, runs);
    if (!plan.ok) continue;
    plans++;
    assertEquals(planViolation(plan.value), undefined);
    assert(plan.value.fileSize >= end);
  }
  assert(plans > 100, `only ${plans} of the random reports were accepted`);
});
