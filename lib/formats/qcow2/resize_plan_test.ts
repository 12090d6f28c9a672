// Unit tests of the qcow2 resize planner on hand-built scans (what the
// resize_scan guest would report for a small image). The comparison with
// qemu-img on real images is in tests/resize_test.ts.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type FilePlan, planViolation, type WritePatch } from "../plan.ts";
import { planQcow2Resize, type Qcow2ResizeScan, type RefRun, sizeToL1 } from "./resize_plan.ts";

/** A fresh qemu-img create layout: header, reftable, one refblock, L1 (clusters 0..3). */
function freshScan(clusterBits: number, refcountOrder: number, virtualSize: bigint): Qcow2ResizeScan {
  const cs = 1n << BigInt(clusterBits);
  return {
    clusterBits,
    refcountOrder,
    extendedL2: false,
    virtualSize,
    fileSize: 4n * cs,
    l1Offset: 3n * cs,
    l1Size: Number(sizeToL1(virtualSize, clusterBits, false)),
    l1: new Map(),
    reftableOffset: cs,
    reftableClusters: 1,
    reftable: new Map([[0, 2n * cs]]),
    runs: [{ start: 0n, count: 4n, refcount: 1n }],
    frees: [],
    zeros: [],
  };
}

/** Reads entry i of a refcount block the way the qcow2 spec defines it, independently of encode.ts. */
function refcountAt(block: Uint8Array, bits: number, i: number): bigint {
  if (bits < 8) {
    const perByte = 8 / bits;
    return BigInt((block[Math.floor(i / perByte)] >> ((i % perByte) * bits)) & ((1 << bits) - 1));
  }
  let v = 0n;
  for (let k = 0; k < bits / 8; k++) v = (v << 8n) | BigInt(block[i * (bits / 8) + k]);
  return v;
}

function writesAt(steps: FilePlan[], offset: bigint): WritePatch[] {
  return steps.flatMap((s) => s.patches).filter((p): p is WritePatch =>
    p.kind === "write" && p.offset === offset
  );
}

/** Applies the steps to an all-zero file of `size` bytes (small test images only). */
function applied(steps: FilePlan[], size: bigint): Uint8Array {
  let img = new Uint8Array(Number(size));
  for (const s of steps) {
    const next = new Uint8Array(Number(s.fileSize > BigInt(img.length) ? s.fileSize : BigInt(img.length)));
    next.set(img);
    img = next;
    for (const p of s.patches) if (p.kind === "write") img.set(p.bytes, Number(p.offset));
    img = img.slice(0, Number(s.fileSize));
  }
  return img;
}

/** Refcount of `cluster` in an applied image (reftable at `reftable`). */
function refcountIn(img: Uint8Array, reftable: bigint, cb: number, bits: number, cluster: number): bigint {
  const perBlock = ((1 << cb) * 8) / bits;
  const dv = new DataView(img.buffer);
  const t = Math.floor(cluster / perBlock);
  const block = Number(dv.getBigUint64(Number(reftable) + t * 8));
  if (!block) return 0n;
  return refcountAt(img.subarray(block, block + (1 << cb)), bits, cluster % perBlock);
}

Deno.test("grow moves the L1 table to the first free cluster and frees the old one", () => {
  const scan = freshScan(16, 4, 1n << 40n);
  const r = planQcow2Resize(scan, { newSize: 2n << 40n });
  assert(r.ok);
  const steps = r.value.steps;
  for (const s of steps) assertEquals(planViolation(s), undefined);
  const cs = 65536n;
  // New L1 (4096 entries) written at cluster 4, exactly new_l1_size * 8 bytes.
  const l1 = writesAt(steps, 4n * cs);
  assertEquals(l1.length, 1);
  assertEquals(l1[0].bytes.length, 4096 * 8);
  // Header: l1_size and l1_table_offset switched, size written, nothing else.
  const hdr = writesAt(steps, 36n)[0];
  const hv = new DataView(hdr.bytes.buffer);
  assertEquals(hv.getUint32(0), 4096);
  assertEquals(hv.getBigUint64(4), 4n * cs);
  assertEquals(new DataView(writesAt(steps, 24n)[0].bytes.buffer).getBigUint64(0), 2n << 40n);
  // In the end clusters 0,1,2,4 are in use and 3 (the old L1) is free.
  const img = applied(steps, scan.fileSize);
  new DataView(img.buffer).setBigUint64(Number(cs), 2n * cs); // the reftable entry the image already had
  assertEquals([0, 1, 2, 3, 4].map((i) => refcountIn(img, cs, 16, 16, i)), [1n, 1n, 1n, 0n, 1n]);
  assertEquals(steps[steps.length - 1].fileSize, 4n * cs + 4096n * 8n);
});

Deno.test("grow within the L1 table only writes the size", () => {
  const scan = freshScan(16, 4, (1n << 30n) + 65536n); // three L1 entries
  const r = planQcow2Resize(scan, { newSize: 3n << 29n });
  assert(r.ok);
  const patches = r.value.steps.flatMap((s) => s.patches);
  assertEquals(patches.length, 1);
  assertEquals(patches[0].offset, 24n);
});

Deno.test("grow with small clusters allocates a self-describing refcount block", () => {
  // 512-byte clusters, 64-bit refcounts: one block describes 64 clusters.
  const scan = freshScan(9, 6, 1n << 20n);
  scan.runs = [{ start: 0n, count: 64n, refcount: 1n }]; // the block is full
  scan.fileSize = 64n * 512n;
  const r = planQcow2Resize(scan, { newSize: 64n << 20n });
  assert(r.ok);
  const steps = r.value.steps;
  for (const s of steps) assertEquals(planViolation(s), undefined);
  // qemu's order: the L1 search (32 clusters) finds 64..95, the refblock for
  // them goes to 96 and describes itself, the search restarts and the L1
  // lands on 64..95.
  const img = applied(steps, scan.fileSize);
  const dv = new DataView(img.buffer);
  assertEquals(dv.getBigUint64(512 + 8), 96n * 512n); // reftable entry 1 hooked up
  assertEquals(dv.getBigUint64(40), 64n * 512n); // header l1_table_offset
  for (let c = 64; c < 97; c++) assertEquals(refcountIn(img, 512n, 9, 64, c), 1n);
  assertEquals(refcountIn(img, 512n, 9, 64, 3), 0n); // old L1 freed
  assertEquals(refcountIn(img, 512n, 9, 64, 97), 0n);
});

Deno.test("preallocation=metadata maps the new range: L2 table, data clusters, L1 entry", () => {
  const cs = 65536n;
  const scan = freshScan(16, 4, 512n << 20n); // one L1 entry, unused
  const r = planQcow2Resize(scan, { newSize: (512n << 20n) + 3n * cs + 512n, preallocation: "metadata" });
  assert(r.ok);
  const steps = r.value.steps;
  for (const s of steps) assertEquals(planViolation(s), undefined);
  const img = applied(steps, scan.fileSize);
  new DataView(img.buffer).setBigUint64(Number(cs), 2n * cs);
  const dv = new DataView(img.buffer);
  // L1 grew to 2 entries (new table at cluster 4, old one at 3 freed and
  // reused by the L2 table), the L2 table maps 4 data clusters from 5 on.
  assertEquals(dv.getBigUint64(40), 4n * cs);
  const l1e = dv.getBigUint64(Number(4n * cs) + 8);
  assertEquals(l1e, (3n * cs) | (1n << 63n));
  for (let i = 0; i < 4; i++) {
    assertEquals(dv.getBigUint64(Number(3n * cs) + i * 8), ((5n + BigInt(i)) * cs) | (1n << 63n));
  }
  for (let c = 0; c < 9; c++) assertEquals(refcountIn(img, cs, 16, 16, c), 1n);
  // The last cluster is written whole (copy-on-write of its tail).
  assertEquals(steps[steps.length - 1].fileSize, 9n * cs);
});

Deno.test("a grow that outgrows the refcount table moves it (qcow2_refcount_area)", () => {
  // 512-byte clusters, 64-bit refcounts: the one-cluster table has 64
  // entries for 64 clusters each, so 4096 clusters fill it.
  const scan = freshScan(9, 6, 1n << 20n);
  // Blocks at clusters 4..67, every cluster the table can count in use.
  scan.reftable = new Map(Array.from({ length: 64 }, (_, i) => [i, BigInt(4 + i) * 512n]));
  scan.runs = [{ start: 0n, count: 4096n, refcount: 1n }];
  scan.fileSize = 4096n * 512n;
  const r = planQcow2Resize(scan, { newSize: 1n << 30n });
  assert(r.ok, r.ok ? "" : r.error.message);
  const steps = r.value.steps;
  for (const s of steps) assertEquals(planViolation(s), undefined);
  const img = applied(steps, scan.fileSize);
  const dv = new DataView(img.buffer);
  for (let i = 0; i < 64; i++) dv.setBigUint64(512 + i * 8, BigInt(4 + i) * 512n); // the table as it was

  // The header names a new, larger table past everything used so far.
  const tableOffset = dv.getBigUint64(48), tableClusters = dv.getUint32(56);
  assert(tableOffset >= 4096n * 512n && tableClusters > 1, `${tableOffset} ${tableClusters}`);
  // It keeps every old entry; the old table's cluster is free, the new one counted.
  for (let i = 0; i < 64; i++) {
    assertEquals(dv.getBigUint64(Number(tableOffset) + i * 8), BigInt(4 + i) * 512n);
  }
  assertEquals(refcountIn(img, tableOffset, 9, 64, 1), 0n);
  for (let c = 0n; c < BigInt(tableClusters); c++) {
    assertEquals(refcountIn(img, tableOffset, 9, 64, Number((tableOffset >> 9n) + c)), 1n);
  }
  // The new L1 table is counted through the new table.
  const l1 = dv.getBigUint64(40);
  assertEquals(refcountIn(img, tableOffset, 9, 64, Number(l1 >> 9n)), 1n);
});

Deno.test("preallocation=falloc: refcount area, then the data run linked in order", () => {
  const cs = 65536n;
  const scan = freshScan(16, 4, 64n << 20n); // one L1 entry, unused
  const r = planQcow2Resize(scan, { newSize: 128n << 20n, preallocation: "falloc" });
  assert(r.ok, r.ok ? "" : r.error.message);
  const steps = r.value.steps;
  for (const s of steps) assertEquals(planViolation(s), undefined);
  // One zero patch: the data run, which the applier allocates.
  const zeros = steps.flatMap((s) => s.patches).filter((p) => p.kind === "zero");
  assertEquals(zeros.length, 1);
  assertEquals(zeros[0].length, 1024n * cs);
  const img = applied(steps, scan.fileSize);
  const dv = new DataView(img.buffer);
  const tableOffset = dv.getBigUint64(48);
  // The table moved (qcow2_refcount_area always writes a new one) to just
  // before the data, which ends the file; the L2 table took the old
  // table's cluster, freed by then (first fit).
  assertEquals(tableOffset + cs, zeros[0].offset);
  assertEquals(BigInt(img.length), zeros[0].offset + zeros[0].length);
  const l2 = dv.getBigUint64(Number(scan.l1Offset)) & 0x00fffffffffffe00n;
  assertEquals(l2, cs);
  // The new 64 MiB are guest clusters 1024.., entries 1024.. of that table.
  for (let i = 0; i < 1024; i++) {
    assertEquals(
      dv.getBigUint64(Number(l2) + (1024 + i) * 8),
      (zeros[0].offset + BigInt(i) * cs) | (1n << 63n),
    );
  }
  for (let c = 0; c < 1029; c++) assertEquals(refcountIn(img, tableOffset, 16, 16, c), 1n);
});

Deno.test("preallocation over unreferenced bytes longer than the result fails as qemu words it", () => {
  const scan = freshScan(16, 4, 64n << 20n);
  scan.fileSize = 1n << 30n; // 1 GiB of bytes no refcount counts
  const r = planQcow2Resize(scan, { newSize: (64n << 20n) + 65536n, preallocation: "full" });
  assert(!r.ok);
  assertEquals(
    r.error.message,
    "Failed to resize underlying file: Cannot use preallocation for shrinking files",
  );
});

Deno.test("an L1 table past qemu's limit fails as qemu words it", () => {
  const r = planQcow2Resize(freshScan(16, 4, 1n << 30n), { newSize: 4n << 50n });
  assert(!r.ok);
  assertEquals(r.error.message, "Failed to grow the L1 table: File too large");
});

Deno.test("sizes qemu refuses are refused", () => {
  const scan = freshScan(16, 4, 1n << 30n);
  for (
    const [size, msg] of [[1000000001n, "The new size must be a multiple of 512"], [
      0n,
      "New image size must be positive",
    ]] as const
  ) {
    const r = planQcow2Resize(scan, { newSize: size });
    assert(!r.ok);
    assertEquals(r.error.message, msg);
  }
});

/**
 * Seed 002 bug C: shrinking an image with 1-, 2- or 4-bit refcounts. Data
 * clusters 4..11 in use, a shrink frees 8..11 (and their L2 table's entries
 * are cleared). The rebuilt refcount block must pack entries LSB-first, and
 * no write may touch the header's refcount_order (bytes 96..99).
 */
for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
  Deno.test(`shrink with refcount_bits=${bits} rewrites refcounts in qemu's packing`, () => {
    const order = Math.log2(bits);
    const cb = 12; // 4 KiB clusters: an L2 table maps 2 MiB
    const cs = 1n << BigInt(cb);
    const scan = freshScan(cb, order, 4n << 20n);
    scan.l1 = new Map([[0, (4n * cs) | (1n << 63n)]]); // L2 table at cluster 4
    scan.runs = [{ start: 0n, count: 13n, refcount: 1n }];
    scan.fileSize = 13n * cs;
    // Guest clusters 0..7 map to host 5..12; shrink to 16 KiB frees guest 4..7 = host 9..12.
    scan.frees = [{ start: 9n, count: 4n }];
    scan.zeros = [{ start: 4n * cs + 4n * 8n, count: 4n * 8n }];
    const r = planQcow2Resize(scan, { newSize: 16384n });
    assert(r.ok);
    const steps = r.value.steps;
    for (const s of steps) assertEquals(planViolation(s), undefined);
    for (const p of steps.flatMap((s) => s.patches)) {
      const end = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
      assert(end <= 96n || p.offset >= 100n, `a write touches refcount_order: ${p.offset}`);
    }
    const img = applied(steps, scan.fileSize);
    const block = img.subarray(Number(2n * cs), Number(3n * cs));
    const counts = Array.from({ length: 16 }, (_, i) => refcountAt(block, bits, i));
    assertEquals(counts, [...Array(9).fill(1n), ...Array(7).fill(0n)]);
    // The cleared L2 entries and the header's refcount_order untouched by accident.
    assert(img.subarray(Number(4n * cs + 32n), Number(4n * cs + 64n)).every((b) => b === 0));
    // The file is cut after the last used cluster (8).
    assertEquals(steps[steps.length - 1].fileSize, 9n * cs);
  });
}

Deno.test("shrink frees L2 tables past the new L1 size and zeroes the L1 tail", () => {
  const cb = 9;
  const cs = 512n;
  const scan = freshScan(cb, 4, 1n << 20n); // L2 maps 32 KiB, L1 has 32 entries
  scan.l1Size = 32;
  scan.l1 = new Map([[0, (4n * cs) | (1n << 63n)], [31, (5n * cs) | (1n << 63n)]]);
  scan.runs = [{ start: 0n, count: 7n, refcount: 1n }]; // data at 6
  scan.fileSize = 7n * cs;
  scan.frees = [{ start: 6n, count: 1n }];
  const r = planQcow2Resize(scan, { newSize: 32768n });
  assert(r.ok);
  const steps = r.value.steps;
  const l1Tail = writesAt(steps, 3n * cs + 8n);
  assertEquals(l1Tail.length, 1);
  assertEquals(l1Tail[0].bytes.length, 31 * 8);
  assert(l1Tail[0].bytes.every((b) => b === 0));
  assertEquals(steps[steps.length - 1].fileSize, 5n * cs);
});

Deno.test("shrink discards what it frees: zero patches over the freed clusters the file keeps", () => {
  const cs = 512n;
  const scan = freshScan(9, 4, 1n << 20n);
  scan.l1Size = 32;
  // L2 tables at 4 (kept) and 5 (past the new end), data at 6 (freed) and 7 (kept).
  scan.l1 = new Map([[0, (4n * cs) | (1n << 63n)], [31, (5n * cs) | (1n << 63n)]]);
  scan.runs = [{ start: 0n, count: 8n, refcount: 1n }];
  scan.fileSize = 8n * cs;
  scan.frees = [{ start: 6n, count: 1n }];
  const r = planQcow2Resize(scan, { newSize: 32768n });
  assert(r.ok);
  const zeros = r.value.steps.flatMap((s) => s.patches).filter((p) => p.kind === "zero");
  // qemu discards with QCOW2_DISCARD_ALWAYS: both clusters become a hole.
  assertEquals(zeros, [{ kind: "zero", offset: 5n * cs, length: 2n * cs }]);
  assertEquals(r.value.steps[r.value.steps.length - 1].fileSize, 8n * cs);
});

Deno.test("a free that would take a refcount below zero is refused before writing", () => {
  const scan = freshScan(16, 4, 1n << 30n);
  scan.frees = [{ start: 10n, count: 1n }];
  const r = planQcow2Resize(scan, { newSize: 512n });
  assert(!r.ok);
});

Deno.test("inconsistent scans are refused, never planned", () => {
  const bad: ((s: Qcow2ResizeScan) => void)[] = [
    (s) => s.runs.push({ start: 2n, count: 1n, refcount: 1n }), // overlaps
    (s) => (s.runs = [{ start: 0n, count: 4n, refcount: 1n << 20n }]), // above 16 bits
    (s) => s.runs.push({ start: 1n << 40n, count: 1n, refcount: 1n }), // no refblock there
    (s) => s.l1.set(99, 1n), // past l1_size
    (s) => s.reftable.set(0, 100n), // unaligned
  ];
  for (const mutate of bad) {
    const s = freshScan(16, 4, 1n << 30n);
    mutate(s);
    assert(!planQcow2Resize(s, { newSize: 2n << 30n }).ok);
  }
});

/** A small deterministic PRNG for the randomized invariant test. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

Deno.test("random scans: the planner returns a value or an error, and every plan keeps the invariants", () => {
  const r = rng(42);
  for (let iter = 0; iter < 200; iter++) {
    const cb = 9 + r(13);
    const order = r(7);
    const vs = BigInt(1 + r(1 << 20)) * 512n * BigInt(1 + r(4096));
    const s = freshScan(cb, order, vs);
    const runs: RefRun[] = [];
    let at = 0n;
    for (let k = 0; k < r(6); k++) {
      const count = BigInt(1 + r(50));
      runs.push({ start: at, count, refcount: BigInt(1 + r(1)) });
      at += count + BigInt(r(3));
    }
    if (runs.length) s.runs = runs;
    s.fileSize = (at + 1n) << BigInt(cb);
    for (let k = 0; k < r(4); k++) s.frees.push({ start: BigInt(r(60)), count: BigInt(1 + r(3)) });
    const newSize = BigInt(r(1 << 22)) * 512n + (r(2) ? vs : 0n);
    let res;
    try {
      res = planQcow2Resize(s, {
        newSize,
        preallocation: (["off", "off", "metadata", "falloc", "full"] as const)[r(5)],
      });
    } catch (e) {
      throw new Error(`iteration ${iter} threw: ${e}`);
    }
    if (res.ok) { for (const step of res.value.steps) assertEquals(planViolation(step), undefined); }
  }
});
