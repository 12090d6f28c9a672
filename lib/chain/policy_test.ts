import assert from "node:assert/strict";
import {
  checkBacking,
  fileKey,
  fullBackingFilename,
  hasProtocol,
  makePolicy,
  PolicyError,
} from "./policy.ts";

Deno.test("protocol detection follows qemu's path_has_protocol", () => {
  for (const p of ["json:{}", "nbd://h/x", "http://h/x", "file:/etc/passwd", "a:b/c"]) {
    assert.ok(hasProtocol(p), p);
  }
  for (const p of ["/abs/a:b", "rel/a:b", "plain.qcow2", "./x:y"]) assert.ok(!hasProtocol(p), p);
});

Deno.test("relative backing names join the overlay's directory without normalising", () => {
  assert.equal(fullBackingFilename("d/top.qcow2", "../b.qcow2"), "d/../b.qcow2");
  assert.equal(fullBackingFilename("top.qcow2", "b.qcow2"), "b.qcow2");
  assert.equal(fullBackingFilename("d/top.qcow2", "/abs/b"), "/abs/b");
  assert.equal(fullBackingFilename("json:{}", "b"), null);
});

Deno.test("checkBacking refuses before anything is opened", async (t) => {
  const d = await Deno.makeTempDir();
  const out = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${d}/top.qcow2`, "");
    await Deno.writeTextFile(`${d}/b.raw`, "");
    await Deno.writeTextFile(`${out}/secret`, "");
    await Deno.symlink(`${out}/secret`, `${d}/escape`);
    const policy = await makePolicy(`${d}/top.qcow2`);
    const top = `${d}/top.qcow2`;
    for (
      const name of [
        'json:{"file":"x"}',
        "nbd://127.0.0.1/x",
        "file:b.raw",
        `${out}/secret`,
        "escape",
        `../${out.split("/").pop()}/secret`,
      ]
    ) {
      await t.step(name, async () => {
        await assert.rejects(checkBacking(policy, top, name, 0, new Set()), PolicyError);
      });
    }
    await t.step("an allowed file passes and a repeat is a cycle", async () => {
      const link = await checkBacking(policy, top, "b.raw", 0, new Set());
      assert.equal(link.realPath, await Deno.realPath(`${d}/b.raw`));
      const seen = new Set([fileKey(link.dev, link.ino)]);
      await assert.rejects(checkBacking(policy, top, "./b.raw", 1, seen), PolicyError);
    });
    await t.step("the 17th image of a chain is refused", async () => {
      await checkBacking(policy, top, "b.raw", 14, new Set());
      await assert.rejects(checkBacking(policy, top, "b.raw", 15, new Set()), PolicyError);
    });
    await t.step("--backing-dir widens the allowlist", async () => {
      const wide = await makePolicy(top, [out]);
      await checkBacking(wide, top, `${out}/secret`, 0, new Set());
    });
  } finally {
    await Deno.remove(d, { recursive: true });
    await Deno.remove(out, { recursive: true });
  }
});
