// snapshot -c/-d, rebase (-u, and safe with disabled bitmaps) and amend
// (lazy_refcounts, refcount_bits) of a qcow2 with persistent bitmaps
// (Proxmox takes internal snapshots, vdsm keeps bitmaps and rebases with
// -u). instar leaves the bitmaps where they are; qemu-img rewrites every
// bitmap on its read-write close, so the files differ in layout; what must
// match is what qemu reads: `qemu-img info` (but for file name and disk size), a clean
// `qemu-img check`, the raw contents of the active layer and each snapshot,
// and each bitmap's dirty map, read through qemu-nbd (x-dirty-bitmap, as
// qemu's iotests read bitmaps). An inconsistent (in-use) bitmap is refused
// with nothing written.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { dirtyMap, haveNbd } from "./support/dirty_map.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

/** qemu-img info --output=json without the fields that name or size the file. */
async function info(dir: string, file: string): Promise<unknown> {
  const j = JSON.parse((await qemuImg(["info", "--output=json", file], dir)).stdout);
  delete j.filename;
  delete j["actual-size"];
  for (const s of j.snapshots ?? []) {
    delete s["date-sec"];
    delete s["date-nsec"];
  }
  return j;
}

/** Two copies of an image with three bitmaps (enabled, disabled at 128 KiB, empty) and data. */
async function images(dir: string, backing = false): Promise<void> {
  if (backing) {
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "old.qcow2", "32M");
    await sh(dir, "qemu-io", "-c", "write -P 9 0 8M", "old.qcow2");
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "new.qcow2", "32M");
    await sh(dir, "qemu-io", "-c", "write -P 8 2M 2M", "new.qcow2");
  }
  const b = backing ? ["-b", "old.qcow2", "-F", "qcow2"] : [];
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...b, "q.qcow2", "32M");
  await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "q.qcow2");
  await sh(dir, "qemu-img", "bitmap", "--add", "q.qcow2", "auto0");
  await sh(dir, "qemu-io", "-c", "write -P 2 4M 1M", "-c", "write -P 3 20M 64k", "q.qcow2");
  await sh(dir, "qemu-img", "bitmap", "--add", "-g", "128K", "--disable", "q.qcow2", "off1");
  await sh(dir, "qemu-img", "bitmap", "--add", "q.qcow2", "empty2");
  await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
}

/** Runs `args` + FILE as qemu-img on q.qcow2 and as instar on i.qcow2, then compares what qemu reads. */
async function sameAfter(dir: string, args: string[], bitmaps = ["auto0", "off1", "empty2"]): Promise<void> {
  const what = args.join(" ");
  const q = await qemuImg([...args, "q.qcow2"], dir);
  const i = await instarHere([...args, "i.qcow2"], dir);
  assertEquals(q.code, 0, q.stderr);
  assertEquals(i, q, what);
  const check = await qemuImg(["check", "i.qcow2"], dir);
  assertEquals(check.code, 0, check.stdout + check.stderr);
  assertEquals(await info(dir, "i.qcow2"), await info(dir, "q.qcow2"), what);
  for (const bm of bitmaps) {
    assertEquals(await dirtyMap(dir, "i.qcow2", bm), await dirtyMap(dir, "q.qcow2", bm), `${what} ${bm}`);
  }
  const same = await qemuImg(["compare", "q.qcow2", "i.qcow2"], dir);
  assertEquals(same.stdout, "Images are identical.\n", what);
}

Deno.test(
  { name: "snapshot -c/-d with persistent bitmaps: what qemu reads matches", ignore: !ready },
  async () => {
    await withTempDir("instar-bmkept-", async (dir) => {
      await images(dir);
      for (const args of [["-c", "s1"], ["-c", "s2"], ["-d", "s1"], ["-c", "s3"], ["-d", "s3"]]) {
        await sameAfter(dir, ["snapshot", ...args]);
      }
      for (const f of ["q", "i"]) {
        const r = await exec(
          "qemu-img",
          ["convert", "-l", "s2", "-O", "raw", `${f}.qcow2`, `${f}-s2.raw`],
          dir,
        );
        assertEquals(r.code, 0, r.stderr);
      }
      assertEquals(await Deno.readFile(`${dir}/i-s2.raw`), await Deno.readFile(`${dir}/q-s2.raw`));
    });
  },
);

Deno.test(
  { name: "rebase and amend with persistent bitmaps: what qemu reads matches", ignore: !ready },
  async () => {
    await withTempDir("instar-bmkept-", async (dir) => {
      await images(dir, true);
      await sameAfter(dir, ["rebase", "-u", "-b", "new.qcow2", "-F", "qcow2"]);
      await sameAfter(dir, ["rebase", "-u", "-b", "old.qcow2", "-F", "qcow2"]);
      await sameAfter(dir, ["amend", "-o", "lazy_refcounts=on"]);
      await sameAfter(dir, ["amend", "-o", "refcount_bits=64,lazy_refcounts=off"]);
      // A safe rebase writes into the image: an enabled bitmap would have to
      // record it (qemu's does), so instar refuses it before writing...
      const before = await Deno.readFile(`${dir}/i.qcow2`);
      const r = await instarHere(["rebase", "-b", "new.qcow2", "-F", "qcow2", "i.qcow2"], dir);
      assertEquals(r.code, 1);
      assertEquals(
        r.stderr,
        "instar: Could not rebase 'i.qcow2': instar does not rewrite the header of an image with bitmaps; nothing was written\n",
      );
      assertEquals(await Deno.readFile(`${dir}/i.qcow2`), before);
      // ...and carries disabled ones.
      for (const f of ["q", "i"]) {
        await sh(dir, "qemu-img", "bitmap", "--disable", `${f}.qcow2`, "auto0");
        await sh(dir, "qemu-img", "bitmap", "--remove", `${f}.qcow2`, "empty2");
      }
      await sameAfter(dir, ["rebase", "-b", "new.qcow2", "-F", "qcow2"], ["auto0", "off1"]);
    });
  },
);

Deno.test({
  name: "snapshot -c of an image with an in-use bitmap is refused, nothing written",
  ignore: !ready,
}, async () => {
  await withTempDir("instar-bmkept-", async (dir) => {
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "u.qcow2", "4M");
    await sh(dir, "qemu-img", "bitmap", "--add", "u.qcow2", "bm");
    // A VM killed while it had the image open leaves the bitmap marked in use.
    await exec("qemu-io", ["-c", "write -P 1 0 64k", "-c", "sigraise 9", "u.qcow2"], dir);
    const before = await Deno.readFile(`${dir}/u.qcow2`);
    const i = await instarHere(["snapshot", "-c", "s", "u.qcow2"], dir);
    assertEquals(i.code, 1);
    assertEquals(
      i.stderr,
      "instar: Could not create snapshot 's': the image has a bitmap in use (inconsistent); instar does not change its snapshots\n",
    );
    assertEquals(await Deno.readFile(`${dir}/u.qcow2`), before);
  });
});
