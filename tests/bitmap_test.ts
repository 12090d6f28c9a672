// bitmap against qemu-img 7.2's img_bitmap: copies of the same qemu-made
// qcow2 image (bitmaps added by qemu-img, data written through qemu-io so
// the bitmaps have set bits) changed by qemu-img and by instar must end
// byte for byte the same, with the same messages and exit codes; `qemu-img
// check` must find the result clean and `qemu-img info` must agree. qemu's
// node name (#blockNNN, a per-run counter) is the one thing compared loosely.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { openImage } from "../lib/cli/image.ts";
import { applySteps } from "../lib/cli/apply_steps.ts";
import { scanBitmaps } from "../lib/cli/scan_bitmaps.ts";
import { decodeBitmapScan } from "../lib/formats/qcow2/bitmap_scan.ts";
import { type BitmapAction, planQcow2Bitmap } from "../lib/formats/qcow2/bitmap_plan.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

async function makeImages(dir: string) {
  const q = (...a: string[]) => sh(dir, "qemu-img", ...a);
  const io = (img: string, ...cmds: string[]) => sh(dir, "qemu-io", ...cmds.flatMap((c) => ["-c", c]), img);
  await q("create", "-q", "-f", "qcow2", "empty.qcow2", "10M");
  await q("create", "-q", "-f", "qcow2", "one.qcow2", "10M");
  await io("one.qcow2", "write -P 1 0 1M");
  await q("bitmap", "--add", "one.qcow2", "b0");
  // two bitmaps with set bits, one disabled, holes left by qemu's own rewrites
  await q("create", "-q", "-f", "qcow2", "two.qcow2", "10M");
  await q("bitmap", "--add", "two.qcow2", "b0");
  await q("bitmap", "--add", "-g", "128k", "two.qcow2", "b1");
  await io("two.qcow2", "write -P 2 0 10k", "write -P 3 5M 300k");
  await q("bitmap", "--disable", "two.qcow2", "b1");
  await io("two.qcow2", "write -P 4 9M 64k");
  // small clusters, a backing file, a big bitmap spanning several data clusters
  await q("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "base.qcow2", "64M");
  await q(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "cluster_size=4096",
    "-b",
    "base.qcow2",
    "-F",
    "qcow2",
    "small.qcow2",
  );
  await q("bitmap", "--add", "-g", "512", "small.qcow2", "fine");
  await io("small.qcow2", "write -P 5 0 1M", "write -P 6 40M 2M");
  await q("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "10M");
  await q("create", "-q", "-f", "raw", "disk.raw", "1M");
}

const CASES: [string, string, string[]][] = [
  ["empty.qcow2", "b0", ["--add"]],
  ["empty.qcow2", "g", ["--add", "-g", "1k"]],
  ["empty.qcow2", "g", ["--add", "--granularity", "2M", "--disable"]],
  ["one.qcow2", "b1", ["--add"]],
  ["one.qcow2", "b0", ["--remove"]],
  ["one.qcow2", "b0", ["--disable"]],
  ["two.qcow2", "b0", ["--remove"]],
  ["two.qcow2", "b1", ["--remove"]],
  ["two.qcow2", "b0", ["--clear"]],
  ["two.qcow2", "b1", ["--enable"]],
  ["two.qcow2", "b2", ["--add", "--merge", "b1"]],
  ["two.qcow2", "b0", ["--clear", "--merge", "b0"]],
  ["two.qcow2", "b0", ["--merge", "b1"]],
  ["two.qcow2", "b1", ["--merge", "b0", "--disable"]],
  ["small.qcow2", "n", ["--add", "-g", "64k", "--merge", "fine"]],
  ["two.qcow2", "b0", ["--remove", "--add", "-g", "64k"]],
  ["two.qcow2", "b1", ["--remove", "--remove"]],
  ["two.qcow2", "b9", ["--add", "--add"]],
  ["two.qcow2", "b0", ["--disable", "--add"]],
  ["small.qcow2", "fine", ["--disable"]],
  ["small.qcow2", "other", ["--add"]],
  ["small.qcow2", "fine", ["--remove"]],
  // qemu's refusals
  ["one.qcow2", "b0", ["--add"]],
  ["one.qcow2", "", ["--add"]],
  ["one.qcow2", "x", ["--add", "-g", "1000"]],
  ["one.qcow2", "x", ["--add", "-g", "4G"]],
  ["one.qcow2", "x", ["--add", "-g", "256"]],
  ["one.qcow2", "x".repeat(1024), ["--add"]],
  ["one.qcow2", "nope", ["--remove"]],
  ["one.qcow2", "nope", ["--clear"]],
  ["one.qcow2", "nope", ["--enable"]],
  ["one.qcow2", "nope", ["--disable"]],
  ["one.qcow2", "b0", ["--merge", "nope"]],
  ["one.qcow2", "nope", ["--merge", "b0"]],
  ["v2.qcow2", "x", ["--add"]],
  ["v2.qcow2", "x", ["--remove"]],
  ["disk.raw", "x", ["--add", "-f", "raw"]],
  ["disk.raw", "x", ["--clear", "-f", "raw"]],
  ["one.qcow2", "x", ["--add", "-f", "raw"]],
  ["one.qcow2", "b0", ["--merge", "b0", "-b", "empty.qcow2"]],
  ["one.qcow2", "b0", ["--merge", "b0", "-b", "two.qcow2", "-F", "qcow2"]],
  ["one.qcow2", "b0", ["--merge", "b0", "-b", "nonexistent"]],
];

/** The first offset where the files differ (or the shorter length), -1 when equal: cheap to report. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let k = 0; k < n; k++) if (a[k] !== b[k]) return k;
  return a.length === b.length ? -1 : n;
}

const normalize = (s: string) => s.replaceAll("qemu-img", "instar").replace(/#block\d+/g, "#block");

Deno.test({ name: "bitmap changes the image as qemu-img does, byte for byte", ignore: !ready }, async (t) => {
  await withTempDir("instar-bitmap-", async (dir) => {
    await makeImages(dir);
    for (const [n, [image, name, args]] of CASES.entries()) {
      await t.step(`${image} ${args.join(" ")} ${name.slice(0, 20)}`, async () => {
        const [q, i] = [`q${n}-${image}`, `i${n}-${image}`];
        await Deno.copyFile(`${dir}/${image}`, `${dir}/${q}`);
        await Deno.copyFile(`${dir}/${image}`, `${dir}/${i}`);
        const qr = await qemuImg(["bitmap", ...args, q, name], dir);
        const ir = await instarHere(["bitmap", ...args, i, name], dir);
        assertEquals(
          { code: ir.code, stdout: ir.stdout, stderr: normalize(ir.stderr) },
          { code: qr.code, stdout: qr.stdout, stderr: normalize(qr.stderr) },
        );
        assertEquals(
          firstDifference(await Deno.readFile(`${dir}/${i}`), await Deno.readFile(`${dir}/${q}`)),
          -1,
        );
        if (image.endsWith(".qcow2") && !image.startsWith("v2")) {
          const check = await qemuImg(["check", i], dir);
          assertEquals(check.code, 0, check.stdout + check.stderr);
          const info = async (f: string) => {
            const j = JSON.parse((await qemuImg(["info", "--output=json", f], dir)).stdout);
            return j["format-specific"].data.bitmaps;
          };
          assertEquals(await info(i), await info(q));
        }
      });
    }
  });
});

const USAGE: string[][] = [
  [],
  ["one.qcow2", "b0"],
  ["--add"],
  ["--add", "one.qcow2"],
  ["--add", "one.qcow2", "x", "y"],
  ["--remove", "-g", "64k", "one.qcow2", "b0"],
  ["--remove", "-F", "raw", "one.qcow2", "b0"],
  ["--remove", "-b", "disk.raw", "one.qcow2", "b0"],
  ["-g", "x", "--add", "one.qcow2", "x"],
  ["--add", "nonexistent", "x"],
  ["--bogus", "one.qcow2", "x"],
  ["--merge"],
  ["-x"],
];

Deno.test({ name: "bitmap usage errors are qemu-img's, word for word", ignore: !ready }, async (t) => {
  await withTempDir("instar-bitmap-usage-", async (dir) => {
    await makeImages(dir);
    const before = await Deno.readFile(`${dir}/one.qcow2`);
    for (const args of USAGE) {
      await t.step(args.join(" ") || "(none)", async () => {
        const q = await qemuImg(["bitmap", ...args], dir);
        const i = await instarHere(["bitmap", ...args], dir);
        assertEquals({ ...i, stderr: normalize(i.stderr) }, { ...q, stderr: normalize(q.stderr) });
        assert(q.code !== 0);
      });
    }
    assertEquals(firstDifference(await Deno.readFile(`${dir}/one.qcow2`), before), -1);
  });
});

// Crash safety: the plan's steps applied only up to each point (a crash
// between two steps) leave an image qemu-img check finds clean or with
// leaked clusters only, never corrupt.
const CRASH_CASES: [string, string, BitmapAction[]][] = [
  ["empty.qcow2", "b0", [{ act: "add" }]],
  ["two.qcow2", "b0", [{ act: "remove" }]],
  ["two.qcow2", "b1", [{ act: "clear" }, { act: "add" }]],
  ["small.qcow2", "fine", [{ act: "disable" }]],
];

Deno.test(
  { name: "bitmap: a crash between any two steps leaves at most leaks", ignore: !ready },
  async (t) => {
    await withTempDir("instar-bitmap-crash-", async (dir) => {
      await makeImages(dir);
      for (const [image, name, actions] of CRASH_CASES) {
        await t.step(`${image} ${actions.map((a) => a.act).join(" ")} ${name}`, async () => {
          const img = await openImage(`${dir}/${image}`, { noLists: true });
          const s = decodeBitmapScan(await scanBitmaps(img), img.fileSize);
          const plan = planQcow2Bitmap(s, {
            name: new TextEncoder().encode(name),
            granularity: 0n,
            actions,
            nodeName: "#block000",
          });
          assert(plan.ok && !plan.value.mergeJob);
          const steps = plan.value.steps;
          assert(steps.length >= 3, `${steps.length} steps`);
          for (let k = 0; k <= steps.length; k++) {
            const f = `${dir}/crash-${k}-${image}`;
            await Deno.copyFile(`${dir}/${image}`, f);
            await applySteps(
              await openImage(f, { noLists: true }),
              steps.slice(0, k),
              "test",
              "off",
              "discard",
            );
            const check = await qemuImg(["check", "--output=json", f], dir);
            const r = JSON.parse(check.stdout);
            assertEquals(r["corruptions"] ?? 0, 0, `after ${k} of ${steps.length} steps: ${check.stdout}`);
            assert(
              check.code === 0 || check.code === 3,
              `after ${k} steps: exit ${check.code} ${check.stderr}`,
            );
            if (k === steps.length) assertEquals(check.code, 0);
            await Deno.remove(f);
          }
        });
      }
    });
  },
);
