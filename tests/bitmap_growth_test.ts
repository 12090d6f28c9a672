// bitmap --add/--merge/--disable/--enable where qemu 7.2 has to grow the refcount
// structures (alloc_refcount_block, qcow2_refcount_area) for the clusters
// its read-write close stores, against qemu-img on copies of the same
// image: 512-byte clusters and 64-bit refcounts, so one refcount block
// covers 64 clusters and the one-cluster table 2 MiB of file; the data
// written leave the file at the edge of a block or of the table. Each case
// asserts that qemu's own command grew what the case is about (a new table
// entry, or a moved table), then: the same output and exit code; the files
// byte-identical (cmp); `qemu-img check` clean; `qemu-img info
// --output=json` the same but for the file's name and allocation; each
// bitmap's dirty map the same (read through qemu-nbd). And for each case
// but the merge: every prefix of instar's steps applied to a copy (a crash
// between two synced steps) leaves an image `qemu-img check` finds clean or
// with leaked clusters only.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { sameFiles, SMALL_REFCOUNTS as OPTS } from "./support/growth.ts";
import { openImage } from "../lib/cli/image.ts";
import { applySteps } from "../lib/cli/apply_steps.ts";
import { scanBitmaps } from "../lib/cli/scan_bitmaps.ts";
import { decodeBitmapScan } from "../lib/formats/qcow2/bitmap_scan.ts";
import { type BitmapAction, planQcow2Bitmap } from "../lib/formats/qcow2/bitmap_plan.ts";
import { dirtyMap, haveNbd } from "./support/dirty_map.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** The refcount table's offset and its non-zero entries (the header's fields). */
async function reftable(path: string): Promise<{ offset: bigint; entries: number }> {
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  const offset = dv.getBigUint64(48), clusters = dv.getUint32(56);
  let entries = 0;
  for (let i = 0; i < clusters * 64; i++) if (dv.getBigUint64(Number(offset) + i * 8) !== 0n) entries++;
  return { offset, entries };
}

interface Case {
  name: string;
  /** `qemu-img bitmap` arguments before the image (b0 made at setup), then the bitmap name. */
  pre?: string[];
  /** KiB of data written from offset 0 (places the file's end at the edge). */
  fill: number;
  /**
   * Made as a compact copy: b0 (512-byte granularity) and the data in a
   * default qcow2, one sector more dirtied in each of b0's eight data
   * clusters, then `convert --bitmaps` into the small-cluster image (no
   * holes for the rewrite to reuse).
   */
  converted?: boolean;
  args: string[];
  bitmap: string;
  grows: "block" | "table";
}

const CASES: Case[] = [
  {
    // The file ends in the last cluster of block 31: the new bitmap's
    // directory needs block 32, which the table has room for.
    name: "--add needs a new refcount block",
    fill: 987,
    args: ["--add"],
    bitmap: "b1",
    grows: "block",
  },
  {
    // The file ends at 2 MiB: the new bitmap's table needs block 64, past
    // the one-cluster refcount table, which qemu moves.
    name: "--add moves the refcount table",
    fill: 1980,
    args: ["--add"],
    bitmap: "b1",
    grows: "table",
  },
  {
    // b0 (512-byte granularity, dirty) merged into a new b1 of another
    // granularity: the merged data and the rewritten b0 move the table.
    name: "--add --merge moves the refcount table",
    pre: ["--add", "-g", "512"],
    fill: 1977,
    args: ["--add", "--merge", "b0"],
    bitmap: "b1",
    grows: "table",
  },
  {
    // b0 rewritten at close: its eight data clusters, table and directory
    // go past the table's edge.
    name: "--disable moves the refcount table",
    converted: true,
    fill: 1940,
    args: ["--disable"],
    bitmap: "b0",
    grows: "table",
  },
  {
    name: "--enable moves the refcount table",
    converted: true,
    fill: 1940,
    args: ["--enable"],
    bitmap: "b0",
    grows: "table",
  },
];

/** q.qcow2 as the case makes it. */
async function makeImage(dir: string, c: Case) {
  if (c.converted) {
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "16M");
    await sh(dir, "qemu-img", "bitmap", "--add", "-g", "512", "s.qcow2", "b0");
    const more = [2, 4, 6, 8, 10, 12, 14].flatMap((m) => ["-c", `write -P 2 ${m}M 512`]);
    await sh(dir, "qemu-io", "-c", `write -P 1 0 ${c.fill}k`, ...more, "s.qcow2");
    await sh(dir, "qemu-img", "convert", "--bitmaps", "-O", "qcow2", ...OPTS, "s.qcow2", "q.qcow2");
  } else {
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...OPTS, "q.qcow2", "16M");
    if (c.pre) await sh(dir, "qemu-img", "bitmap", ...c.pre, "q.qcow2", "b0");
    await sh(dir, "qemu-io", "-c", `write -P 1 0 ${c.fill}k`, "q.qcow2");
  }
}

/** instar's steps for the case, applied up to each point: at most leaks. */
async function crashPrefixes(dir: string, c: Case) {
  const img = await openImage(`${dir}/q.qcow2`, { noLists: true });
  const s = decodeBitmapScan(await scanBitmaps(img), img.fileSize);
  const plan = planQcow2Bitmap(s, {
    name: new TextEncoder().encode(c.bitmap),
    granularity: 0n,
    actions: c.args.map((a) => ({ act: a.slice(2) }) as BitmapAction),
    nodeName: "#block000",
  });
  assert(
    plan.ok && !plan.value.mergeJob && !plan.value.error,
    plan.ok ? plan.value.error : plan.error.message,
  );
  const steps = plan.value.steps;
  for (let k = 0; k <= steps.length; k++) {
    const f = `${dir}/crash.qcow2`;
    await Deno.copyFile(`${dir}/q.qcow2`, f);
    await applySteps(await openImage(f, { noLists: true }), steps.slice(0, k), "test", "off", "discard");
    const check = await qemuImg(["check", "--output=json", f], dir);
    const r = JSON.parse(check.stdout);
    const label = `${c.name}: after ${k} of ${steps.length} steps`;
    assertEquals(r["corruptions"] ?? 0, 0, `${label}: ${check.stdout}`);
    assert(check.code === 0 || check.code === 3, `${label}: exit ${check.code} ${check.stderr}`);
    if (k === steps.length) assertEquals(check.code, 0, label);
  }
}

for (const c of CASES) {
  if (c.args.includes("--merge")) continue;
  Deno.test({
    name:
      `bitmap with growing refcount structures: a crash between two steps leaves at most leaks: ${c.name}`,
    ignore: !ready,
    fn: () =>
      withTempDir("instar-bmgrow-crash-", async (dir) => {
        await makeImage(dir, c);
        await crashPrefixes(dir, c);
      }),
  });
}

for (const c of CASES) {
  Deno.test({
    name: `bitmap with growing refcount structures as qemu-img: ${c.name}`,
    ignore: !ready,
    fn: () =>
      withTempDir("instar-bmgrow-", async (dir) => {
        await makeImage(dir, c);
        await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
        const before = await reftable(`${dir}/q.qcow2`);
        const label = `${c.name}: bitmap ${c.args.join(" ")}`;
        const q = await qemuImg(["bitmap", ...c.args, "q.qcow2", c.bitmap], dir);
        const i = await instarHere(["bitmap", ...c.args, "i.qcow2", c.bitmap], dir);
        assertEquals(
          { code: i.code, stdout: i.stdout, stderr: i.stderr },
          { code: q.code, stdout: q.stdout, stderr: q.stderr.replaceAll("q.qcow2", "i.qcow2") },
          label,
        );
        assertEquals(q.code, 0, label);
        const after = await reftable(`${dir}/q.qcow2`);
        if (c.grows === "table") assert(after.offset !== before.offset, `${label}: qemu kept the table`);
        else {
          assert(after.offset === before.offset, `${label}: qemu moved the table`);
          assert(after.entries > before.entries, `${label}: qemu made no refcount block`);
        }
        // Byte-identical files, i clean, the same info.
        await sameFiles(dir, label);
        if (haveNbd) {
          for (const bm of new Set(c.pre ? ["b0", c.bitmap] : [c.bitmap])) {
            assertEquals(
              await dirtyMap(dir, "i.qcow2", bm),
              await dirtyMap(dir, "q.qcow2", bm),
              `${label}: dirty map of ${bm}`,
            );
          }
        }
      }),
  });
}
