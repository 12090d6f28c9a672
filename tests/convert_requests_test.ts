// The pure planners of convert -n's request model: qemu-img convert's write
// requests (lib/convert/convert_requests.ts) on hand-made block status and
// content, checked against what qemu-img.c's loop gives for them, and their
// target-cluster ops (lib/formats/qcow2/request_ops.ts). A seeded sweep
// checks the invariants: requests in order, tiling the disk (but for skipped
// zeroes), data requests within one status run and one buffer; ops
// ascending and disjoint. The byte-for-byte comparison with qemu-img is
// tests/convert_n_layout_test.ts.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { convertRequests, type Request, type StatusRun } from "../lib/convert/convert_requests.ts";
import { requestOps } from "../lib/formats/qcow2/request_ops.ts";
import type { ClusterKind, ExistingRun } from "../lib/formats/qcow2/write_plan.ts";

const KINDS: ClusterKind[] = ["normal", "zero_plain", "zero_alloc"];

const K = 1024n, M = K * K;
const base = {
  layers: [{ extents: [] }],
  srcAlign: 512n,
  bufBytes: 2n * M,
  targetIsZero: false,
  max: 1 << 20,
};
const r = (start: bigint, end: bigint, kind: "data" | "zero"): Request => ({ start, end, kind });

Deno.test("convert requests: data runs in 2 MiB buffers, zero runs whole, -S 0 makes zeroes data in buffers", () => {
  const runs: StatusRun[] = [
    { start: 0n, length: 3n * M, zero: false, depth: 0 },
    { start: 3n * M, length: 5n * M, zero: true, depth: 0 },
  ];
  const nonZero: [bigint, bigint][] = [[0n, 3n * M]];
  assertEquals(convertRequests({ ...base, size: 8n * M, runs, minSparse: 4n * K, nonZero }), [
    r(0n, 2n * M, "data"),
    r(2n * M, 3n * M, "data"),
    r(3n * M, 8n * M, "zero"),
  ]);
  assertEquals(convertRequests({ ...base, size: 8n * M, runs, minSparse: 0n, nonZero: [] }), [
    r(0n, 2n * M, "data"),
    r(2n * M, 3n * M, "data"),
    r(3n * M, 5n * M, "data"),
    r(5n * M, 7n * M, "data"),
    r(7n * M, 8n * M, "data"),
  ]);
  // --target-is-zero: the zero requests are not made.
  assertEquals(
    convertRequests({ ...base, size: 8n * M, runs, minSparse: 4n * K, nonZero, targetIsZero: true }),
    [r(0n, 2n * M, "data"), r(2n * M, 3n * M, "data")],
  );
});

Deno.test("convert requests: is_allocated_sectors_min pieces, qcow2 L2 bounds and source alignment", () => {
  const runs: StatusRun[] = [{ start: 0n, length: 64n * K, zero: false, depth: 0 }];
  // 8 KiB of zeroes between data: a zero piece; 1 KiB: taken into the data.
  assertEquals(
    convertRequests({
      ...base,
      size: 64n * K,
      runs,
      minSparse: 4n * K,
      nonZero: [[0n, 4n * K], [12n * K, 64n * K]],
    }),
    [r(0n, 4n * K, "data"), r(4n * K, 12n * K, "zero"), r(12n * K, 64n * K, "data")],
  );
  assertEquals(
    convertRequests({
      ...base,
      size: 64n * K,
      runs,
      minSparse: 4n * K,
      nonZero: [[0n, 4n * K], [5n * K, 64n * K]],
    }),
    [r(0n, 64n * K, "data")],
  );
  // A qcow2 layer with 512-byte clusters: an L2 table maps 32 KiB, each a status run of its own.
  assertEquals(
    convertRequests({
      ...base,
      size: 64n * K,
      runs,
      layers: [{ extents: [{ start: 0n, span: 32n * K }] }],
      minSparse: 0n,
      nonZero: [],
    }),
    [r(0n, 32n * K, "data"), r(32n * K, 64n * K, "data")],
  );
  // A run ending inside the source's (64 KiB) cluster at the disk's end is cut to the cluster.
  assertEquals(
    convertRequests({
      ...base,
      size: 96n * K,
      runs: [{ start: 0n, length: 96n * K, zero: false, depth: 0 }],
      srcAlign: 64n * K,
      minSparse: 0n,
      nonZero: [],
    }),
    [r(0n, 64n * K, "data"), r(64n * K, 96n * K, "data")],
  );
});

Deno.test("convert requests: vmdk answers per grain and extent, vpc per allocated block only", () => {
  // vmdk: two sparse extents of 96 KiB with 32 KiB grains; a merged data run and a merged zero run.
  const runs: StatusRun[] = [
    { start: 0n, length: 160n * K, zero: false, depth: 0 },
    { start: 160n * K, length: 32n * K, zero: true, depth: 0 },
  ];
  const vmdk = { extents: [{ start: 0n, span: 32n * K }, { start: 96n * K, span: 32n * K }] };
  assertEquals(
    convertRequests({ ...base, size: 192n * K, runs, layers: [vmdk], minSparse: 0n, nonZero: [] }),
    [0n, 32n, 64n, 96n, 128n, 160n].map((k) => r(k * K, (k + 32n) * K, "data")),
  );
  // Extents not on grain multiples: the grains count from each extent's start.
  const odd = { extents: [{ start: 0n, span: 32n * K }, { start: 40n * K, span: 32n * K }] };
  assertEquals(
    convertRequests({ ...base, size: 192n * K, runs, layers: [odd], minSparse: 0n, nonZero: [] })!
      .map((q) => q.end / K),
    [32n, 40n, 72n, 104n, 136n, 160n, 168n, 192n],
  );
  // vpc (2 MiB blocks): data ends at each block, a zero run goes on across blocks.
  const vpc = { extents: [{ start: 0n, span: 2n * M }], dataOnly: true };
  const runs2: StatusRun[] = [
    { start: 0n, length: 4n * M, zero: false, depth: 0 },
    { start: 4n * M, length: 4n * M, zero: true, depth: 0 },
  ];
  assertEquals(
    convertRequests({
      ...base,
      size: 8n * M,
      runs: runs2,
      layers: [vpc],
      minSparse: 4n * K,
      nonZero: [[0n, 4n * M]],
    }),
    [r(0n, 2n * M, "data"), r(2n * M, 4n * M, "data"), r(4n * M, 8n * M, "zero")],
  );
});

Deno.test("request ops: one data op per request; clusters shared with the previous request written in place", () => {
  const reqs = [
    r(0n, 4n * K, "data"),
    r(4n * K, 12n * K, "zero"),
    r(12n * K, 192n * K, "data"),
    r(192n * K, 320n * K, "zero"),
    r(320n * K, 330n * K, "zero"),
    r(330n * K, 400n * K, "data"),
  ];
  const ops = requestOps({
    requests: reqs,
    existing: [{ cluster: 5n, count: 1n, kind: "normal", host: 1n << 20n }],
    clusterBits: 16,
    virtualSize: 4n * M,
  });
  assertEquals(ops, [
    { cluster: 0n, count: 1n, kind: "data" },
    // Begins in cluster 0, which the first request wrote (its zeroes too, as data).
    { cluster: 1n, count: 2n, kind: "data", continues: true },
    { cluster: 3n, count: 2n, kind: "zero" },
    // Cluster 5 holds data: the partial write-zeroes is written as data (in place), the rest follows.
    { cluster: 5n, count: 1n, kind: "data" },
    // The data request begins in cluster 5: its new cluster goes right behind cluster 5's where free.
    { cluster: 6n, count: 1n, kind: "data", continues: true },
  ]);
  // Unallocated there: zeroed whole first, then allocated by the data request (one op).
  const ops2 = requestOps({ requests: reqs, existing: [], clusterBits: 16, virtualSize: 4n * M });
  assertEquals(ops2!.slice(3), [{ cluster: 5n, count: 2n, kind: "data" }]);
});

Deno.test("convert requests: write-zeroes joined only where they meet at a target cluster's start", () => {
  // Zero status runs cut at 100 KiB and 192 KiB (a vmdk's grains, say); 64 KiB target clusters.
  const runs: StatusRun[] = [
    { start: 0n, length: 64n * K, zero: false, depth: 0 },
    { start: 64n * K, length: 36n * K, zero: true, depth: 0 },
    { start: 100n * K, length: 92n * K, zero: true, depth: 0 },
    { start: 192n * K, length: 64n * K, zero: true, depth: 0 },
  ];
  const x = {
    ...base,
    size: 256n * K,
    runs,
    minSparse: 4n * K,
    nonZero: [[0n, 64n * K]] as [bigint, bigint][],
  };
  const joined = convertRequests({ ...x, joinZeroesAt: 64n * K })!;
  assertEquals(joined, [r(0n, 64n * K, "data"), r(64n * K, 100n * K, "zero"), r(100n * K, 256n * K, "zero")]);
  // Cluster 1 holds data: each request covers it in part (written as zeroes, as data), the three joined
  // would cover it whole (a zero cluster). The ops are those of the requests as made.
  const t = {
    existing: [{ cluster: 1n, count: 1n, kind: "normal" as const, host: 1n << 20n }],
    clusterBits: 16,
  };
  const ops = requestOps({ ...t, requests: joined, virtualSize: 256n * K });
  assertEquals(ops, requestOps({ ...t, requests: convertRequests(x)!, virtualSize: 256n * K }));
  assertEquals(ops, [
    { cluster: 0n, count: 1n, kind: "data" },
    { cluster: 1n, count: 1n, kind: "data" },
    { cluster: 2n, count: 2n, kind: "zero" },
  ]);
});

Deno.test("convert requests and ops: invariants over seeded random sources", () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let iter = 0; iter < 300; iter++) {
    const sectors = 1 + rnd(4000);
    const size = BigInt(sectors) * 512n;
    const runs: StatusRun[] = [];
    for (let at = 0n; at < size;) {
      let len = BigInt(1 + rnd(400)) * 512n;
      if (at + len > size) len = size - at;
      runs.push({ start: at, length: len, zero: rnd(3) === 0, depth: 0 });
      at += len;
    }
    const nonZero: [bigint, bigint][] = [];
    for (let at = 0n; at < size;) {
      const len = BigInt(1 + rnd(40)) * 512n;
      if (rnd(2)) nonZero.push([at, at + len > size ? size : at + len]);
      at += len;
    }
    const minSparse = BigInt(rnd(3)) * 4096n;
    const targetIsZero = rnd(4) === 0;
    const buf = BigInt(1 + rnd(64)) * 512n;
    const input = {
      ...base,
      size,
      runs,
      layers: [{ extents: [{ start: 0n, span: rnd(2) ? BigInt(1 + rnd(8)) * 4096n : 0n }] }],
      srcAlign: rnd(2) ? 512n : 4096n,
      bufBytes: buf,
      minSparse,
      nonZero,
      targetIsZero,
    };
    const reqs = convertRequests(input)!;
    let at = 0n;
    for (const q of reqs) {
      assert(q.end > q.start && q.start >= at, `request order at ${iter}`);
      if (!targetIsZero) assertEquals(q.start, at);
      const run = runs.find((x) => x.start <= q.start && q.start < x.start + x.length)!;
      assert(q.end <= run.start + run.length, `request past its status run at ${iter}`);
      if (q.kind === "data") assert(q.end - q.start <= buf, `data request over the buffer at ${iter}`);
      if (minSparse === 0n) assertEquals(q.kind, "data");
      at = q.end;
    }
    if (!targetIsZero) assertEquals(at, size);
    const cb = 9 + rnd(8);
    const ops = requestOps({ requests: reqs, existing: [], clusterBits: cb, virtualSize: size });
    // Zero requests joined where they meet at a target cluster's start: the same ops, over any target.
    const joined = convertRequests({ ...input, joinZeroesAt: 1n << BigInt(cb) })!;
    assert(joined.length <= reqs.length);
    const existing: ExistingRun[] = [];
    for (let c = 0n; c << BigInt(cb) < size; c++) {
      const k = rnd(4);
      if (k > 0) existing.push({ cluster: c, count: 1n, kind: KINDS[k - 1], host: (c + 8n) << BigInt(cb) });
    }
    for (const ex of [[], existing]) {
      const x = { existing: ex, clusterBits: cb, virtualSize: size };
      assertEquals(
        requestOps({ ...x, requests: joined }),
        requestOps({ ...x, requests: reqs }),
        `joined at ${iter}`,
      );
    }
    let end = 0n;
    for (const o of ops ?? []) {
      assert(o.count > 0n && o.cluster >= end, `ops out of order at ${iter}`);
      end = o.cluster + o.count;
    }
  }
});
