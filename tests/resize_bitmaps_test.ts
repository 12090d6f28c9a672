// resize of a qcow2 with persistent dirty bitmaps (vdsm keeps bitmaps for
// incremental backup; clouds grow disks): qemu-img resizes the bitmaps and
// stores them anew at close, and so does instar
// (lib/formats/qcow2/resize_bitmaps.ts). qemu-img resize runs on one copy,
// instar's on another: same output and exit code, the files byte-identical,
// a clean `qemu-img check`, the same `info --output=json` and each
// bitmap's dirty map (read through qemu-nbd as tests/bitmaps_kept_test.ts
// does. What instar still refuses (an in-use bitmap) writes nothing; a
// shrink cutting dirty bits: tests/resize_bitmaps_shrink_test.ts.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { dirtyMap, haveNbd } from "./support/dirty_map.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

async function info(dir: string, file: string): Promise<unknown> {
  const j = JSON.parse((await qemuImg(["info", "--output=json", file], dir)).stdout);
  delete j.filename;
  delete j["actual-size"];
  return j;
}

/** q.qcow2 and i.qcow2: two bitmaps (enabled with dirty bits, disabled at 128 KiB with some). */
async function images(dir: string, size: string): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", size);
  await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "q.qcow2");
  await sh(dir, "qemu-img", "bitmap", "--add", "q.qcow2", "auto0");
  await sh(dir, "qemu-io", "-c", "write -P 2 1M 1M", "-c", "write -P 3 3M 64k", "q.qcow2");
  await sh(dir, "qemu-img", "bitmap", "--add", "-g", "128K", "q.qcow2", "off1");
  await sh(dir, "qemu-io", "-c", "write -P 4 512k 64k", "q.qcow2");
  await sh(dir, "qemu-img", "bitmap", "--disable", "q.qcow2", "off1");
  await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
}

/** resize `args` with qemu-img on q.qcow2 and instar on i.qcow2; everything qemu sees must match. */
async function sameAfter(dir: string, args: string[], identical = true, cmd = "resize"): Promise<void> {
  const what = args.join(" ");
  const q = await qemuImg([cmd, "q.qcow2", ...args], dir);
  const i = await instarHere([cmd, "i.qcow2", ...args], dir);
  assertEquals(q.code, 0, q.stderr);
  assertEquals(i, q, what);
  const check = await qemuImg(["check", "i.qcow2"], dir);
  assertEquals(check.code, 0, check.stdout + check.stderr);
  assertEquals(await info(dir, "i.qcow2"), await info(dir, "q.qcow2"), what);
  for (const bm of ["auto0", "off1"]) {
    assertEquals(await dirtyMap(dir, "i.qcow2", bm), await dirtyMap(dir, "q.qcow2", bm), `${what} ${bm}`);
  }
  const cmp = await exec("cmp", ["q.qcow2", "i.qcow2"], dir);
  if (identical) assertEquals(cmp.code, 0, `${what}: files differ: ${cmp.stdout}`);
  else await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`); // the next step starts from the same bytes
}

Deno.test({
  name: "resize grows a qcow2 with persistent bitmaps as qemu-img does, byte for byte",
  ignore: !ready,
}, async () => {
  await withTempDir("instar-rsbm-", async (dir) => {
    await images(dir, "4M");
    await sameAfter(dir, ["+4M"]);
    // Past what the L1 table covers (64 KiB clusters: 512 MiB per entry... 8 entries' worth).
    await sameAfter(dir, ["1G"]);
    // Preallocated metadata before the bitmaps are stored: the store
    // continues from qemu's free-cluster index as the preallocation left it.
    await sameAfter(dir, ["--preallocation=metadata", "+64M"]);
    // An internal snapshot alongside.
    await sh(dir, "qemu-img", "snapshot", "-c", "s1", "q.qcow2");
    await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
    await sameAfter(dir, ["+1G"]);
    // amend -o size= goes through the same truncate.
    await sameAfter(dir, ["-o", "size=3G"], true, "amend");
  });
});

Deno.test(
  { name: "resize shrinks a qcow2 with persistent bitmaps as qemu-img does", ignore: !ready },
  async () => {
    await withTempDir("instar-rsbm-", async (dir) => {
      await images(dir, "1G");
      await sameAfter(dir, ["--shrink", "512M"]);
    });
  },
);

Deno.test({ name: "resize refusals with persistent bitmaps write nothing", ignore: !ready }, async () => {
  await withTempDir("instar-rsbm-", async (dir) => {
    await images(dir, "8M");
    // An in-use bitmap (a VM killed with the image open).
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "u.qcow2", "4M");
    await sh(dir, "qemu-img", "bitmap", "--add", "u.qcow2", "bm");
    await exec("qemu-io", ["-c", "write -P 1 0 64k", "-c", "sigraise 9", "u.qcow2"], dir);
    const before = await Deno.readFile(`${dir}/u.qcow2`);
    await Deno.copyFile(`${dir}/u.qcow2`, `${dir}/uq.qcow2`);
    const q = await qemuImg(["resize", "uq.qcow2", "8M"], dir);
    const r = await instarHere(["resize", "u.qcow2", "8M"], dir);
    assertEquals(q.code, 1, q.stderr);
    assertEquals(r, asInstar(q));
    assertEquals(await Deno.readFile(`${dir}/u.qcow2`), before);
    assertEquals(await Deno.readFile(`${dir}/uq.qcow2`), before);
  });
});
