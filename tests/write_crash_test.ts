// Crash safety of the in-place qcow2 writer (lib/formats/qcow2/write_plan.ts,
// behind commit, safe rebase and convert -n -O qcow2): a commit's plan (data
// over and past the base's, zero writes that free clusters a later write
// reuses) is applied to copies of the base, stopped after every action in
// turn (a round's data copy, each metadata step). `qemu-img check` must then
// find the base consistent, with at most leaked clusters; the whole plan
// leaves it clean and reading as the overlay does.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { applyCommitUntil, assertLeaksAtMost, io, planCommitIntoBase } from "./support/commit_crash.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

Deno.test({ name: "write plan: a crash after any step leaves at most leaks", ignore: !ready }, async () => {
  await withTempDir("instar-write-crash-", async (dir) => {
    for (
      const l of [
        "qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 2M",
        io("base.qcow2", "write -P 1 0 256k", "write -P 2 1M 64k"),
        "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ov.qcow2 2M",
        io("ov.qcow2", "write -z 1M 64k", "write -P 3 128k 256k", "write -z 0 16k", "write -P 4 1536k 300k"),
        "cp base.qcow2 base.orig",
      ]
    ) await sh(dir, "sh", "-c", l);
    const path = `${dir}/base.qcow2`;
    const run = async (stopAfter: number): Promise<number> => {
      await Deno.copyFile(`${dir}/base.orig`, path);
      return applyCommitUntil(await planCommitIntoBase(dir), path, stopAfter);
    };
    let rounds = 0;
    for (let k = 0;; k++) {
      const stopped = await run(k);
      const chk = await qemuImg(["check", "base.qcow2"], dir);
      if (stopped === -1) {
        assertEquals(chk.code, 0, chk.stdout + chk.stderr);
        const cmp = await qemuImg(["compare", "base.qcow2", "ov.qcow2"], dir);
        assertEquals(cmp.stdout, "Images are identical.\n");
        rounds = k;
        break;
      }
      assertLeaksAtMost(chk, k);
    }
    assert(rounds > 3, `only ${rounds} actions`);
  });
});
