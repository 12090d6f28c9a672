// amend -o refcount_bits=N narrowing an image with a count too large for
// the new width past the first new refcount block: qemu's first walk
// allocates the new blocks before the count and fails there, its error
// path frees them, and the file is left as it was
// (lib/formats/qcow2/refcount_order_plan.ts). instar gives qemu's message,
// exit code and file (compared byte for byte with qemu-img's copy).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

Deno.test({
  name:
    "amend refcount_bits narrowing past a too-wide count beyond the first new block fails as qemu-img does",
  ignore: !ready,
}, async () => {
  await withTempDir("instar-rcnarrow-", async (dir) => {
    // 512-byte clusters: a 1-bit block covers 2 MiB. The snapshot shares
    // every cluster; the active layer then rewrites the first 2300 KiB, so
    // only clusters past the first 2 MiB of the file keep a count of 2.
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "a.qcow2", "4M");
    await sh(dir, "qemu-io", "-c", "write -P 1 0 3M", "a.qcow2");
    await sh(dir, "qemu-img", "snapshot", "-c", "s", "a.qcow2");
    await sh(dir, "qemu-io", "-c", "write -P 2 0 2300k", "a.qcow2");
    for (const bits of ["1"]) {
      await Deno.copyFile(`${dir}/a.qcow2`, `${dir}/q.qcow2`);
      await Deno.copyFile(`${dir}/a.qcow2`, `${dir}/i.qcow2`);
      const q = await qemuImg(["amend", "-o", `refcount_bits=${bits}`, "q.qcow2"], dir);
      const i = await instarHere(["amend", "-o", `refcount_bits=${bits}`, "i.qcow2"], dir);
      assertEquals(q.code, 1, q.stderr);
      assertEquals(i, asInstar(q), bits);
      const cmp = await exec("cmp", ["q.qcow2", "i.qcow2"], dir);
      assertEquals(cmp.code, 0, `refcount_bits=${bits}: files differ: ${cmp.stdout}`);
    }
  });
});
