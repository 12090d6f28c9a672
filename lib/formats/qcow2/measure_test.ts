// The qcow2/raw measure calculators as pure functions: QEMU's own iotests
// vectors (tests/qemu-iotests/178.out.qcow2), seed 001's invariants over a
// sweep, and seed 000: allocation past the virtual size is never counted.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { optSetNumber, parseOptions } from "../options.ts";
import { type AllocationExtent, qcow2Measure, requiredData } from "./measure.ts";
import { rawMeasure } from "../raw/measure.ts";
import { QCOW2_CREATE_OPTS } from "./options.ts";

function measure(opts: string, size?: bigint, input?: Parameters<typeof qcow2Measure>[1]) {
  const p = parseOptions(opts, QCOW2_CREATE_OPTS);
  assert(p.ok);
  if (size !== undefined) optSetNumber(p.value, "size", size);
  return qcow2Measure(p.value, input);
}

Deno.test("qemu iotest 178 vectors", () => {
  const g = 1n << 30n;
  for (const [size, required, full] of [[g, 393216n, 1074135040n], [2n * g, 589824n, 2148073472n]]) {
    const m = measure("", size);
    assert(m.ok);
    assertEquals([m.value.required, m.value.fullyAllocated], [required, full]);
  }
  const p = measure("", 2n << 50n);
  assert(p.ok);
  assertEquals(p.value.fullyAllocated, 2252143463694336n);
});

Deno.test("measure invariants hold across a sweep (seed 001)", () => {
  for (const cs of ["512", "4k", "64k", "2M"]) {
    for (const bits of ["1", "16", "64"]) {
      for (const extra of ["", ",preallocation=full", ",preallocation=metadata", ",extended_l2=on"]) {
        for (const size of [0n, 1n, 511n, 1n << 20n, (1n << 30n) + 3n, 1n << 44n]) {
          const m = measure(`cluster_size=${cs},refcount_bits=${bits}${extra}`, size);
          if (!m.ok) continue; // refusals are not failures
          assert(m.value.required <= m.value.fullyAllocated);
          assert(m.value.fullyAllocated >= size);
          if (extra.includes("full")) assertEquals(m.value.required, m.value.fullyAllocated);
        }
      }
    }
  }
  for (const size of [0n, 1n, 512n, 1000n, 1n << 40n]) {
    const p = parseOptions("", []);
    assert(p.ok);
    optSetNumber(p.value, "size", size);
    const m = rawMeasure(p.value);
    assert(m.ok && m.value.fullyAllocated >= size && m.value.required === m.value.fullyAllocated);
  }
});

Deno.test("data rounds out to clusters and zero runs are skipped", () => {
  const cs = 65536n;
  const ext = (start: bigint, length: bigint, kind: "data" | "zero" | "hole"): AllocationExtent => ({
    start,
    length,
    data: kind === "data",
    zero: kind === "zero",
    allocated: kind !== "hole",
  });
  const v = 10n * cs;
  // 4 KiB of data at 70000 touches cluster 1 only; a run over clusters 3..5 counts 3.
  const extents = [
    ext(0n, 70000n, "hole"),
    ext(70000n, 4096n, "data"),
    ext(74096n, 3n * cs - 74096n, "zero"),
    ext(3n * cs, 2n * cs + 1n, "data"),
    ext(5n * cs + 1n, v - 5n * cs - 1n, "hole"),
  ];
  assertEquals(requiredData({ virtualSize: v, extents, supportsBitmaps: false }, cs), 4n * cs);
  // Split runs count the same as merged ones.
  const split = [ext(0n, 100n, "data"), ext(100n, 100n, "data"), ext(200n, v - 200n, "hole")];
  assertEquals(requiredData({ virtualSize: v, extents: split, supportsBitmaps: false }, cs), cs);
});

Deno.test("allocation past the virtual size is not counted (seed 000)", () => {
  const cs = 65536n;
  const v = 1n << 20n;
  // An extent list that (wrongly) runs past the virtual size: the fold
  // stops at the virtual size, so required data never exceeds it.
  const extents: AllocationExtent[] = [
    { start: 0n, length: v, data: true, zero: false, allocated: true },
    { start: v, length: 4n * cs, data: true, zero: false, allocated: true },
  ];
  const r = requiredData({ virtualSize: v, extents, supportsBitmaps: true }, cs);
  assert(r <= v);
  assertEquals(r, v);
});
