import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { planViolation } from "../plan.ts";
import { BDRV_MAX_LENGTH, planRawResize } from "./resize_plan.ts";

Deno.test("raw resize is a change of file length, with no write", () => {
  for (const [from, to] of [[1048576n, 1000000001n], [1000000001n, 1000n], [0n, 512n]]) {
    const r = planRawResize({ fileSize: from, newSize: to, preallocation: "off" });
    assert(r.ok);
    assertEquals(r.value, { patches: [], fileSize: to });
    assertEquals(planViolation(r.value), undefined);
  }
});

Deno.test("raw resize past qemu's BDRV_MAX_LENGTH is refused with qemu's text", () => {
  assertEquals(BDRV_MAX_LENGTH, 9223372035781033984n);
  const r = planRawResize({ fileSize: 0n, newSize: BDRV_MAX_LENGTH + 1n, preallocation: "off" });
  assert(!r.ok);
  assertEquals(r.error.message, "offset(9223372035781033985) exceeds maximum(9223372035781033984)");
});

Deno.test("raw preallocation: metadata refused as qemu words it, falloc/full allocate the new tail", () => {
  const m = planRawResize({ fileSize: 0n, newSize: 1n << 20n, preallocation: "metadata" });
  assert(!m.ok);
  assertEquals(m.error.message, "Unsupported preallocation mode: metadata");
  for (const p of ["falloc", "full"] as const) {
    const r = planRawResize({ fileSize: 1048576n, newSize: 3000001n, preallocation: p });
    assert(r.ok);
    assertEquals(r.value, {
      patches: [{ kind: "zero", offset: 1048576n, length: 1951425n }],
      fileSize: 3000001n,
    });
    assertEquals(planViolation(r.value), undefined);
  }
});
