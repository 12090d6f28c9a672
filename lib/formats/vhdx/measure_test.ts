// The vhdx size calculator: an empty image measures exactly what the create
// planner writes, seed 001's invariants hold across a sweep, and a real
// qemu-img convert of known data lands on the prediction.
import { ok as assert, strictEqual } from "node:assert/strict";
import { planVhdxCreate } from "./create_plan.ts";
import { vhdxMeasure } from "./measure.ts";
import { haveQemuImg, measureViolation, probeSizes, qemuImgSync, rng } from "../vpc/apply_for_tests.ts";

const z = new Uint8Array(16);
const e = { sequenceNumber: 0, fileWriteGuid: z, dataWriteGuid: z, page83Guid: z };

Deno.test("vhdx measure of an empty image equals the created file", () => {
  for (const size of [0n, 1n, 512n, 1n << 20n, 1000001n, 3n << 30n, 2n << 40n, 64n << 40n]) {
    for (const o of [{}, { blockSize: 1n << 20n }, { logSize: 8n << 20n }, { subformat: "fixed" }]) {
      const c = planVhdxCreate({ size, ...o }, e);
      const m = vhdxMeasure({ size, ...o });
      if (!c.ok) {
        assert(!m.ok);
        continue;
      }
      assert(m.ok);
      strictEqual(
        m.value.required,
        c.value.fileSize,
        `${size} ${JSON.stringify(o, (_k, v) => typeof v === "bigint" ? `${v}` : v)}`,
      );
    }
  }
});

Deno.test("vhdx measure keeps seed 001's invariants", () => {
  const next = rng(0x7edn);
  for (const size of probeSizes(next, 300)) {
    const blockSize = [undefined, 0n, 1n << 20n, next() % (1n << 30n), next()][Number(next() % 5n)];
    const alloc = { allocatedBytes: next() % (size + 1n), virtualSize: size };
    const m = vhdxMeasure({ size, blockSize }, alloc);
    if (!m.ok) continue;
    strictEqual(measureViolation(m.value, size), undefined, `${size} ${blockSize}`);
  }
});

Deno.test({ name: "vhdx measure predicts qemu-img convert's output", ignore: !haveQemuImg() }, () => {
  const dir = Deno.makeTempDirSync({ prefix: "instar-vhdxm-" });
  try {
    const raw = `${dir}/in.raw`;
    const data = new Uint8Array(64 << 20);
    data.fill(0x5a, 0, 3 << 20); // 3 MiB of data: one 8 MiB block
    Deno.writeFileSync(raw, data);
    const r = qemuImgSync(["convert", "-f", "raw", "-O", "vhdx", raw, `${dir}/out.vhdx`]);
    strictEqual(r.code, 0, r.stderr);
    const m = vhdxMeasure({ size: 64n << 20n }, { allocatedBytes: 3n << 20n, virtualSize: 64n << 20n });
    assert(m.ok);
    strictEqual(BigInt(Deno.statSync(`${dir}/out.vhdx`).size), m.value.required);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
