// The vpc size calculator: an empty image measures exactly what the create
// planner writes, seed 001's invariants hold across a sweep, and a real
// qemu-img convert of known data lands on the prediction.
import { ok as assert, strictEqual } from "node:assert/strict";
import { planVpcCreate } from "./create_plan.ts";
import { vpcMeasure } from "./measure.ts";
import { haveQemuImg, measureViolation, probeSizes, qemuImgSync, rng } from "./apply_for_tests.ts";

const e = { unixSeconds: 0n, uuid: new Uint8Array(16) };

Deno.test("vpc measure of an empty image equals the created file", () => {
  for (const size of [0n, 1n, 512n, 1n << 20n, 1000001n, 3n << 30n, 127n << 30n, 2040n << 30n]) {
    for (const subformat of ["dynamic", "fixed"]) {
      for (const forceSize of [false, true]) {
        const c = planVpcCreate({ size, subformat, forceSize }, e);
        const m = vpcMeasure({ size, subformat, forceSize });
        assert(c.ok && m.ok);
        strictEqual(m.value.required, c.value.fileSize, `${size} ${subformat} ${forceSize}`);
      }
    }
  }
});

Deno.test("vpc measure keeps seed 001's invariants", () => {
  const next = rng(0x5eedn);
  for (const size of probeSizes(next, 300)) {
    for (const subformat of ["dynamic", "fixed"]) {
      const alloc = { allocatedBytes: next() % (size + 1n), virtualSize: size };
      const m = vpcMeasure({ size, subformat, forceSize: (size & 1n) === 1n }, alloc);
      if (!m.ok) continue;
      strictEqual(measureViolation(m.value, size), undefined, `${size} ${subformat}`);
    }
  }
  // Allocated bytes above the virtual size are clamped, never counted.
  const m = vpcMeasure({ size: 4n << 20n }, { allocatedBytes: 1n << 40n, virtualSize: 4n << 20n });
  const f = vpcMeasure({ size: 4n << 20n }, { allocatedBytes: 4n << 20n, virtualSize: 4n << 20n });
  assert(m.ok && f.ok);
  strictEqual(m.value.required, f.value.required);
});

Deno.test({ name: "vpc measure predicts qemu-img convert's output", ignore: !haveQemuImg() }, () => {
  const dir = Deno.makeTempDirSync({ prefix: "instar-vpcm-" });
  try {
    const raw = `${dir}/in.raw`;
    const data = new Uint8Array(64 << 20);
    data.fill(0x5a, 0, 3 << 20); // 3 MiB of data: two 2 MiB blocks
    Deno.writeFileSync(raw, data);
    const r = qemuImgSync(["convert", "-f", "raw", "-O", "vpc", raw, `${dir}/out.vpc`]);
    strictEqual(r.code, 0, r.stderr);
    const m = vpcMeasure({ size: 64n << 20n }, { allocatedBytes: 3n << 20n, virtualSize: 64n << 20n });
    assert(m.ok);
    strictEqual(BigInt(Deno.statSync(`${dir}/out.vpc`).size), m.value.required);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
