// The vmdk size calculator: an empty image measures exactly what the create
// planner writes, seed 001's invariants hold across a sweep, and a real
// qemu-img convert of known data stays within the prediction.
import { ok as assert, strictEqual } from "node:assert/strict";
import { planVmdkCreate } from "./create_plan.ts";
import { vmdkMeasure } from "./measure.ts";
import { haveQemuImg, measureViolation, probeSizes, qemuImgSync, rng } from "../vpc/apply_for_tests.ts";

Deno.test("vmdk measure of an empty image equals the created file", () => {
  for (
    const size of [0n, 1n, 512n, 1n << 20n, 1000001n, 3n << 30n, 2n << 40n, 200n << 40n, (1n << 63n) - 1n]
  ) {
    for (const subformat of ["monolithicSparse", "streamOptimized"]) {
      const c = planVmdkCreate({ size, subformat, filename: "x.vmdk" }, { cid: 1 });
      const m = vmdkMeasure({ size, subformat, filename: "x.vmdk" });
      assert(c.ok && m.ok);
      strictEqual(m.value.required, c.value.fileSize, `${size} ${subformat}`);
    }
  }
});

Deno.test("vmdk measure keeps seed 001's invariants", () => {
  const next = rng(0x3dn);
  for (const size of probeSizes(next, 300)) {
    if (size > (1n << 63n) - 1n) continue; // qemu-img sizes are int64
    for (
      const subformat of [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
      ]
    ) {
      const alloc = { allocatedBytes: next() % (size + 1n), virtualSize: size };
      const m = vmdkMeasure({ size, subformat, filename: "x" }, alloc);
      if (!m.ok) continue;
      strictEqual(measureViolation(m.value, size), undefined, `${size} ${subformat}`);
    }
  }
});

Deno.test({ name: "vmdk measure predicts qemu-img convert's output", ignore: !haveQemuImg() }, () => {
  const dir = Deno.makeTempDirSync({ prefix: "instar-vmdkm-" });
  try {
    const raw = `${dir}/in.raw`;
    const data = new Uint8Array(64 << 20);
    for (let i = 0; i < 3 << 20; i++) data[i] = (i * 2654435761) >>> 24; // 3 MiB, poorly compressible
    Deno.writeFileSync(raw, data);
    const m = (subformat: string) => {
      const r = vmdkMeasure({ size: 64n << 20n, subformat, filename: "out.vmdk" }, {
        allocatedBytes: 3n << 20n,
        virtualSize: 64n << 20n,
      });
      assert(r.ok);
      return r.value;
    };
    let r = qemuImgSync(["convert", "-f", "raw", "-O", "vmdk", raw, `${dir}/out.vmdk`]);
    strictEqual(r.code, 0, r.stderr);
    strictEqual(BigInt(Deno.statSync(`${dir}/out.vmdk`).size), m("monolithicSparse").required);
    r = qemuImgSync([
      "convert",
      "-f",
      "raw",
      "-O",
      "vmdk",
      "-o",
      "subformat=streamOptimized",
      raw,
      `${dir}/s.vmdk`,
    ]);
    strictEqual(r.code, 0, r.stderr);
    // Compression makes the real size data-dependent: it lies between the two.
    const got = BigInt(Deno.statSync(`${dir}/s.vmdk`).size);
    const s = m("streamOptimized");
    assert(got >= s.required && got <= s.fullyAllocated, `${got} in [${s.required}, ${s.fullyAllocated}]`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
