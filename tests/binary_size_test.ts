// Every embedded guest binary must stay within the 384 KiB budget the
// architecture sets (small attack surface, fast load). The build refuses
// oversize binaries too; this test catches a build script that stops checking.
import assert from "node:assert/strict";
import { guests } from "../lib/embedded/index.ts";
import { limits } from "../lib/abi/spec.ts";

Deno.test("every embedded guest binary is at most 384 KiB", () => {
  const names = Object.keys(guests);
  assert.ok(names.length >= 3, `expected the info/check/map guests, found ${names.join(", ")}`);
  for (const name of names) {
    const size = Uint8Array.fromBase64(guests[name]).length;
    assert.ok(size > 0, `${name} is empty`);
    assert.ok(size <= limits.GUEST_BINARY_MAX, `${name} is ${size} bytes, over ${limits.GUEST_BINARY_MAX}`);
  }
});

Deno.test("the ABI header is not stale", async () => {
  const { generate } = await import("../scripts/gen_abi.ts");
  const have = await Deno.readTextFile(new URL("../guest/include/abi.h", import.meta.url));
  assert.equal(have, generate(), "run `scripts/deno.sh task abi`");
});
