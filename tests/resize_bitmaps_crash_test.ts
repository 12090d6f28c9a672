// Crash order of resize with persistent bitmaps (lib/formats/qcow2/
// resize_bitmaps.ts): the in-use marking, the resize's steps, then the
// bitmaps stored anew, each step synced before the next. A SIGKILL can
// leave the image as it is after any prefix of the steps of all three
// batches; lib/cli/apply_steps.ts numbers its kill points per batch, so
// this test runs the resize in-process with a host that stops after the
// k-th step overall (what a kill after that step leaves). For each k, on
// a copy of a qemu-made image: `qemu-img check` reports at most leaks
// (then `check -r leaks` leaves it clean), the guest contents read back as
// before or as after (a shrink: the kept range as before), and a bitmap no
// longer in use has the dirty map qemu-img's own resize leaves.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, exec, haveQemuImg, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { dirtyMap, haveNbd } from "./support/dirty_map.ts";
import { openImage } from "../lib/cli/image.ts";
import { resizeHost } from "../lib/cli/resize_host.ts";

await useHostedGuestsWithoutKvm();
const ready = built() && haveQemuImg() && haveNbd;

class Crash extends Error {}

/** Resizes `file` to `newSize` in-process, stopping after `limit` steps; the steps applied, or -1 if stopped. */
async function resizeUpTo(file: string, newSize: bigint, limit: number): Promise<number> {
  const img = await openImage(file);
  const host = resizeHost(img, "off");
  const apply = host.applySteps.bind(host);
  let applied = 0;
  host.applySteps = async (steps, what, zeroInside, plain) => {
    if (applied + steps.length > limit) {
      await apply(steps.slice(0, limit - applied), what, zeroInside, plain);
      throw new Crash();
    }
    await apply(steps, what, zeroInside, plain);
    applied += steps.length;
  };
  try {
    await img.driver.resize!.run(
      { filename: file, image: img, newSize, shrink: true, preallocation: "off" },
      host,
    );
  } catch (e) {
    if (e instanceof Crash) return -1;
    throw e;
  }
  return applied;
}

async function raw(dir: string, file: string, out: string) {
  await sh(dir, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", file, out);
}

/** Whether the first `bytes` of two raw files are equal, and their lengths. */
async function sameHead(dir: string, a: string, b: string, bytes: bigint): Promise<boolean> {
  const r = await exec("cmp", ["-n", String(bytes), a, b], dir);
  return r.code === 0;
}

async function inUse(dir: string, file: string): Promise<boolean> {
  const j = JSON.parse((await qemuImg(["info", "-U", "--output=json", file], dir)).stdout);
  const bms = j["format-specific"]?.data?.bitmaps ?? [];
  return bms.some((b: { flags: string[] }) => b.flags.includes("in-use"));
}

async function crashEveryStep(dir: string, newSize: bigint, bitmaps: string[], minSteps: number) {
  const oldSize = BigInt((await Deno.stat(`${dir}/orig.raw`)).size);
  // qemu-img's own resize: the contents and dirty maps after.
  await Deno.copyFile(`${dir}/orig.qcow2`, `${dir}/q.qcow2`);
  await sh(dir, "qemu-img", "resize", "-q", "--shrink", "q.qcow2", String(newSize));
  await raw(dir, "q.qcow2", "after.raw");
  const maps = new Map<string, string>();
  for (const bm of bitmaps) maps.set(bm, await dirtyMap(dir, "q.qcow2", bm));
  let total = -1, stored = 0;
  for (let k = 0; total < 0; k++) {
    assert(k < 200, "the resize never finished");
    await Deno.copyFile(`${dir}/orig.qcow2`, `${dir}/c.qcow2`);
    total = await resizeUpTo(`${dir}/c.qcow2`, newSize, k);
    const label = `${newSize}: crashed after ${k} steps`;
    if (total >= 0) {
      // Run to the end: the file qemu-img leaves (compared before a repair opens it read-write).
      const cmp = await exec("cmp", ["q.qcow2", "c.qcow2"], dir);
      assertEquals(cmp.code, 0, `files differ: ${cmp.stdout}`);
    }
    const first = await qemuImg(["check", "c.qcow2"], dir);
    assert(first.code === 0 || first.code === 3, `${label}: ${first.stdout}${first.stderr}`);
    const fix = await qemuImg(["check", "-r", "leaks", "c.qcow2"], dir);
    assertEquals(fix.code, 0, `${label}: check -r leaks: ${fix.stdout}${fix.stderr}`);
    await raw(dir, "c.qcow2", "c.raw");
    const size = BigInt((await Deno.stat(`${dir}/c.raw`)).size);
    assert(size === oldSize || size === newSize, `${label}: size ${size}`);
    const kept = newSize < oldSize ? newSize : oldSize;
    assert(
      await sameHead(dir, "c.raw", "orig.raw", kept) &&
        (size === newSize ? await sameHead(dir, "c.raw", "after.raw", size) : true),
      `${label}: contents neither as before nor as after`,
    );
    if (!(await inUse(dir, "c.qcow2")) && size === newSize) {
      stored++;
      for (const bm of bitmaps) {
        assertEquals(await dirtyMap(dir, "c.qcow2", bm), maps.get(bm), `${label}: ${bm}`);
      }
    }
  }
  assert(total >= minSteps, `${total} steps`);
  assert(stored >= 2, `the bitmaps were stored after ${stored} kill points only`);
}

/** orig.qcow2 (with its raw contents in orig.raw): 4 KiB clusters, two bitmaps with dirty bits throughout. */
async function image(dir: string, opts: string) {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "orig.qcow2", "6M");
  await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "orig.qcow2");
  await sh(dir, "qemu-img", "bitmap", "--add", "-g", "4K", "orig.qcow2", "a");
  await sh(dir, "qemu-img", "bitmap", "--add", "-g", "512", "orig.qcow2", "b");
  await sh(
    dir,
    "qemu-io",
    "-c",
    "write -P 2 512k 1M",
    "-c",
    "write -P 3 3M 8k",
    "-c",
    "write -P 4 5M 1M",
    "orig.qcow2",
  );
  await raw(dir, "orig.qcow2", "orig.raw");
}

Deno.test({
  name: "resize with bitmaps: a crash after any step of a grow leaves at most leaks",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-rsbc-", async (dir) => {
      await image(dir, "cluster_size=4096");
      await crashEveryStep(dir, 40n << 20n, ["a", "b"], 6);
    }),
});

Deno.test({
  name: "resize with bitmaps: a crash after any step of a shrink cutting dirty bits leaves at most leaks",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-rsbc-", async (dir) => {
      // 512-byte clusters, 16-bit refcounts: the bitmaps span several data clusters.
      await image(dir, "cluster_size=512");
      await crashEveryStep(dir, (3n << 20n) + 4096n + 512n, ["a", "b"], 6);
    }),
});
