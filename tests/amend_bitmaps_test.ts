// amend of a qcow2 with persistent bitmaps: qemu-img's read-write open
// marks them in use and its close stores them anew, whatever the options
// changed (lazy_refcounts, refcount_bits, nothing at all); instar does the
// same around the amend (lib/cli/amend.ts with qcow2/resize_bitmaps.ts), so
// the files are byte-identical to qemu-img's (found by fuzz:diff refgrow,
// seed 1 iterations 0, 13, 14, 18). qemu-img amends one copy, instar the
// other: same output, same file, a clean check, the same dirty maps.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { qemuImgCreate } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { dirtyMap, haveNbd } from "./support/dirty_map.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

Deno.test(
  { name: "amend stores persistent bitmaps anew as qemu-img's close does", ignore: !ready },
  async () => {
    await withTempDir("instar-amendbm-", async (dir) => {
      // 4 KiB clusters, 1-bit refcounts: the first bitmap's data sits low in the file.
      await qemuImgCreate(dir, "qcow2", "-o", "cluster_size=4096,refcount_bits=1", "a.qcow2", "8M");
      await sh(dir, "qemu-img", "bitmap", "--add", "-g", "4k", "a.qcow2", "pre");
      await sh(dir, "qemu-io", "-c", "write -P 7 0 3M", "-c", "write -P 8 1M 64k", "a.qcow2");
      await sh(dir, "qemu-img", "bitmap", "--add", "-g", "512", "a.qcow2", "b");
      await sh(dir, "qemu-io", "-c", "write -P 9 5M 8k", "a.qcow2");
      for (
        const o of [
          "lazy_refcounts=on",
          "refcount_bits=32",
          "refcount_bits=1",
          "refcount_bits=16,lazy_refcounts=on",
        ]
      ) {
        await Deno.copyFile(`${dir}/a.qcow2`, `${dir}/q.qcow2`);
        await Deno.copyFile(`${dir}/a.qcow2`, `${dir}/i.qcow2`);
        const q = await qemuImg(["amend", "-o", o, "q.qcow2"], dir);
        const i = await instarHere(["amend", "-o", o, "i.qcow2"], dir);
        assertEquals(q.code, 0, q.stderr);
        assertEquals(i, q, o);
        const cmp = await exec("cmp", ["q.qcow2", "i.qcow2"], dir);
        assertEquals(cmp.code, 0, `${o}: files differ: ${cmp.stdout}`);
        const check = await qemuImg(["check", "i.qcow2"], dir);
        assertEquals(check.code, 0, check.stdout + check.stderr);
      }
      for (const bm of ["pre", "b"]) {
        assertEquals(await dirtyMap(dir, "i.qcow2", bm), await dirtyMap(dir, "q.qcow2", bm), bm);
      }
    });
  },
);
