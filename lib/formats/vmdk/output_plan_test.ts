// The VMDK output planner on its own (no I/O): grain tables land in both
// copies at the create layout's offsets, untrusted guest reports are
// refused when they leave the written data, overlap or repeat, multi-file
// targets are named and cut as qemu-img names and cuts them (checked
// against qemu-img create here), and qemu's option refusals come first.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { MAX_PATCHES, planViolation } from "../plan.ts";
import { checkPackedGrains, grainTablePatches, vmdkOutput } from "./output_plan.ts";
import { vmdkLayout } from "./create_plan.ts";
import { decomposeFilename, vmdkExtentFiles, vmdkExtentLine } from "./extents.ts";
import { haveQemuImg, qemuImgSync } from "../vpc/apply_for_tests.ts";

const le32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, true);

Deno.test("grain tables: both copies, at the layout's offsets, merged within the patch limit", () => {
  const l = vmdkLayout(1n << 40n, "monolithicSparse"); // 2^24 grains, 32768 tables
  const entries = new Map<bigint, bigint>([[0n, 128n], [513n, 256n]]);
  const p = grainTablePatches(l, entries);
  assert(p.ok);
  const writes = p.value.filter((x) => x.kind === "write");
  assertEquals(writes.length, 2); // tables 0 and 1 are adjacent: one run per copy
  for (const [i, gd] of [l.rgdOffset, l.gdOffset].entries()) {
    const w = writes[i];
    assertEquals(w.offset, (gd + BigInt(l.gdSectors)) * 512n);
    assertEquals(le32(w.bytes, 0), 128);
    assertEquals(le32(w.bytes, 2048 + 4), 256);
  }
  // Spread over every table: still few enough patches, nothing overlapping.
  const spread = new Map<bigint, bigint>();
  for (let t = 0n; t < 32768n; t += 3n) spread.set(t * 512n, t + 1000n);
  const q = grainTablePatches(l, spread);
  assert(q.ok);
  assert(q.value.length <= 2000);
  assertEquals(planViolation({ patches: q.value, fileSize: 1n << 41n }), undefined);
  // A sector past 32 bits, a grain past the tables: refused.
  assert(!grainTablePatches(l, new Map([[0n, 1n << 32n]])).ok);
  assert(!grainTablePatches(vmdkLayout(1n << 20n, "monolithicSparse"), new Map([[512n, 200n]])).ok);
});

Deno.test("monolithicSparse: block runs become grain-table entries; bad runs are refused", () => {
  const o = vmdkOutput({ size: 5n << 20n, filename: "t.vmdk" }, { cid: 7 });
  assert(o.ok && o.value.writer === "blocks");
  const b = o.value.blocks!;
  assertEquals([b.placement, b.blockSize, b.dataStart, b.slotPrefix], ["slots", 65536n, 65536n, 0n]);
  assertEquals(b.cap, 65536n + 80n * 65536n);
  const plan = b.finish(65536n * 3n, [{ block: 4n, count: 2n, slot: 65536n }]);
  assert(plan.ok);
  assertEquals(planViolation(plan.value), undefined);
  assertEquals(plan.value.fileSize, 65536n * 3n);
  const l = vmdkLayout(5n << 20n, "monolithicSparse");
  const gt = plan.value.patches.find((p) => p.kind === "write" && p.offset === (l.gdOffset + 1n) * 512n);
  assert(gt && gt.kind === "write");
  assertEquals([le32(gt.bytes, 16), le32(gt.bytes, 20)], [128, 256]);
  for (
    const runs of [
      [{ block: 80n, count: 1n, slot: 65536n }], // past the disk
      [{ block: 0n, count: 1n, slot: 65536n }, { block: 0n, count: 1n, slot: 131072n }], // twice
      [{ block: 0n, count: 1n, slot: 65536n }, { block: 1n, count: 1n, slot: 65536n }], // one slot
      [{ block: 0n, count: 1n, slot: 0n }], // over the header
      [{ block: 0n, count: 2n, slot: 65536n }], // past the data end
    ]
  ) {
    assert(!b.finish(65536n * 2n, runs).ok, JSON.stringify(runs, (_k, v) => String(v)));
  }
});

Deno.test("streamOptimized: packed grains are checked; the file reaches a grain past the last", () => {
  const o = vmdkOutput({ size: 3n << 20n, filename: "s.vmdk", subformat: "streamOptimized" }, { cid: 1 });
  assert(o.ok && o.value.writer === "stream");
  const s = o.value.stream!;
  const g = (grain: bigint, offset: bigint, length: bigint) => ({ grain, offset, length });
  const plan = s.finish(65536n + 1536n, [g(0n, 65536n, 512n), g(16n, 66048n, 1024n)]);
  assert(plan.ok);
  assertEquals(plan.value.fileSize, 66048n + 65536n);
  assertEquals(planViolation(plan.value), undefined);
  const max = s.grainMax;
  const bad = [
    [g(48n, 65536n, 512n)], // past the disk
    [g(0n, 65536n, 512n), g(0n, 66048n, 512n)], // twice
    [g(0n, 65536n, 1024n), g(1n, 66048n, 512n)], // overlapping
    [g(0n, 65536n, 500n)], // not whole sectors
    [g(0n, 65536n, 0n)], // empty
    [g(0n, 65536n, max + 512n)], // more than a grain can take
    [g(0n, 512n, 512n)], // inside the metadata
    [g(0n, 65536n + 1536n, 512n)], // past the data end
  ];
  for (const grains of bad) assert(!checkPackedGrains(grains, 48n, 65536n, 65536n + 1536n, max).ok);
  assert(!checkPackedGrains([], 48n, 65536n, 65537n, max).ok);
});

Deno.test("multi-file targets: qemu's names, 2 GiB extents, descriptor lines", () => {
  assertEquals(decomposeFilename("dir/a.b.vmdk"), { path: "dir/", prefix: "a.b", postfix: ".vmdk" });
  assertEquals(decomposeFilename("noext"), { path: "", prefix: "noext", postfix: "" });
  assertEquals(decomposeFilename("c:disk.vmdk"), { path: "c:", prefix: "disk", postfix: ".vmdk" });
  const flat = vmdkExtentFiles("d/x.vmdk", "monolithicFlat", 3n << 20n);
  assertEquals(flat, [{ path: "d/x-flat.vmdk", name: "x-flat.vmdk", from: 0n, to: 3n << 20n, flat: true }]);
  assertEquals(vmdkExtentLine(flat[0]), 'RW 6144 FLAT "x-flat.vmdk" 0\n');
  const split = vmdkExtentFiles("x.vmdk", "twoGbMaxExtentSparse", (5n << 30n) + 512n);
  assertEquals(split.map((f) => [f.name, f.from, f.to]), [
    ["x-s001.vmdk", 0n, 2n << 30n],
    ["x-s002.vmdk", 2n << 30n, 4n << 30n],
    ["x-s003.vmdk", 4n << 30n, (5n << 30n) + 512n],
  ]);
  assertEquals(vmdkExtentLine(split[2]), 'RW 2097153 SPARSE "x-s003.vmdk"\n');
  assertEquals(vmdkExtentFiles("x.vmdk", "twoGbMaxExtentFlat", 0n), []);
  // The descriptor: whole sectors once data was written, the bare text otherwise.
  const o = vmdkOutput({ size: 5n << 30n, filename: "x.vmdk", subformat: "twoGbMaxExtentFlat" }, {
    cid: 0xabc,
  });
  assert(o.ok && o.value.writer === "extents");
  const x = o.value.extents!;
  assertEquals(x.extents.map((e) => [e.path, e.blocks.placement, e.blocks.cap]), [
    ["x-f001.vmdk", "inplace", 2n << 30n],
    ["x-f002.vmdk", "inplace", 2n << 30n],
    ["x-f003.vmdk", "inplace", 1n << 30n],
  ]);
  const [bare, padded] = [x.descriptor(false), x.descriptor(true)];
  const text = new TextDecoder().decode((bare.patches[0] as { bytes: Uint8Array }).bytes);
  assert(text.startsWith("# Disk DescriptorFile\nversion=1\nCID=abc\n"), text);
  assert(text.includes('createType="twoGbMaxExtentFlat"\n'));
  assertEquals(bare.fileSize, BigInt(text.length));
  assertEquals(padded.fileSize, 512n * BigInt(Math.ceil(text.length / 512)));
  assertEquals(o.value.compress, { accepted: false, message: "invalid cluster size" });
});

Deno.test("convert -O vmdk's option refusals, in qemu's order", () => {
  const msg = (o: Record<string, unknown>) => {
    const r = vmdkOutput({ size: 1n << 20n, filename: "t.vmdk", ...o }, { cid: 1 });
    return r.ok ? "ok" : r.error.message;
  };
  assertEquals(msg({ adapterType: "foo", subformat: "bar" }), "invalid parameter value: foo");
  assertEquals(msg({ subformat: "bar", compat6: true, hwversion: "4" }), "invalid parameter value: bar");
  assertEquals(
    msg({ subformat: "monolithicFlat", zeroedGrain: true, compat6: true, hwversion: "4" }),
    "compat6 cannot be enabled with hwversion set",
  );
  assertEquals(
    msg({ subformat: "twoGbMaxExtentFlat", zeroedGrain: true }),
    "Flat image can't enable zeroed grain",
  );
  assertEquals(msg({ subformat: "twoGbMaxExtentSparse", zeroedGrain: true }), "ok");
});

Deno.test({
  name: "multi-file targets: the files qemu-img create makes",
  ignore: !haveQemuImg(),
}, () => {
  const dir = Deno.makeTempDirSync({ prefix: "instar-vmdk-extents-" });
  try {
    for (const sub of ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] as const) {
      for (const size of [0n, 1n << 20n, (4n << 30n) + 65536n]) {
        const name = `${dir}/${sub}-${size}.vmdk`;
        const r = qemuImgSync(["create", "-q", "-f", "vmdk", "-o", `subformat=${sub}`, name, `${size}`]);
        assertEquals(r.code, 0, r.stderr);
        const desc = Deno.readTextFileSync(name);
        const files = vmdkExtentFiles(name, sub, size);
        assertEquals(
          desc.split("\n").filter((l) => l.startsWith("RW ")).map((l) => `${l}\n`),
          files.map(vmdkExtentLine),
        );
        for (const f of files) {
          const st = Deno.statSync(f.path);
          if (f.flat) assertEquals(BigInt(st.size), f.to - f.from);
          else assertEquals(BigInt(st.size), vmdkLayout(f.to - f.from, sub).fileSize);
        }
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the plans stay within the applier's patch limit", () => {
  const o = vmdkOutput({ size: 1n << 40n, filename: "t.vmdk" }, { cid: 1 });
  assert(o.ok);
  const b = o.value.blocks!;
  // 5000 grains, each in its own grain table.
  const runs = [];
  for (let i = 0n; i < 5000n; i++) runs.push({ block: i * 3000n, count: 1n, slot: b.dataStart + 65536n * i });
  const plan = b.finish(b.dataStart + 5000n * 65536n, runs);
  assert(plan.ok, plan.ok ? "" : plan.error.message);
  assertEquals(planViolation(plan.value), undefined);
  assert(plan.value.patches.length <= MAX_PATCHES);
});
