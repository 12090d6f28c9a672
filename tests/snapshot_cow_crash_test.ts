// Crash safety of the in-place qcow2 writer's copy-on-write
// (lib/formats/qcow2/write_plan.ts) in a base with an internal snapshot: a
// commit's plan (data over clusters and L2 tables the snapshot shares and
// over unshared ones, zero writes that free clusters a later write reuses)
// is applied to copies of the base, stopped after every action in turn (a
// round's data copy, each metadata step). `qemu-img check` must find at most
// leaked clusters, and the snapshot must read as it did, after every one;
// the whole plan leaves the base clean and reading as the overlay does.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, exec, haveQemuImg, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { applyCommitUntil, assertLeaksAtMost, io, planCommitIntoBase } from "./support/commit_crash.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

Deno.test({
  name: "snapshot COW: a crash after any step leaves leaks at most, the snapshot intact",
  ignore: !ready,
}, async () => {
  await withTempDir("instar-snapcow-crash-", async (dir) => {
    for (
      const l of [
        "qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 3M",
        io("base.qcow2", "write -P 1 0 256k", "write -P 2 1M 64k", "write -P 6 2M 64k"),
        "qemu-img snapshot -c s base.qcow2",
        // The first L2 table copied by qemu already; the second still shared.
        io("base.qcow2", "write -P 7 1040k 8k"),
        "qemu-img convert -l snapshot.name=s -O raw base.qcow2 snap.want",
        "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ov.qcow2 3M",
        io(
          "ov.qcow2",
          "write -z 1M 64k",
          "write -P 3 128k 256k",
          "write -z 0 16k",
          "write -P 4 1536k 300k",
          "write -P 5 2M 16k",
        ),
        "cp base.qcow2 base.orig",
      ]
    ) await sh(dir, "sh", "-c", l);
    const path = `${dir}/base.qcow2`;
    const job = await planCommitIntoBase(dir);
    const copies = job.plan.rounds.flatMap((r) => r.steps).filter((s) =>
      s.patches.some((p) => p.kind === "copy")
    );
    assert(copies.length > 0, "no L2 table was copied");
    const run = async (stopAfter: number): Promise<number> => {
      // Rewritten in place: the opened image's device and inode stay.
      await Deno.writeFile(path, await Deno.readFile(`${dir}/base.orig`));
      return applyCommitUntil(job, path, stopAfter);
    };
    let actions = 0;
    for (let k = 0;; k++) {
      const stopped = await run(k);
      const chk = await qemuImg(["check", "base.qcow2"], dir);
      await sh(dir, "qemu-img", "convert", "-l", "snapshot.name=s", "-O", "raw", "base.qcow2", "snap.got");
      const same = await exec("cmp", ["snap.want", "snap.got"], dir);
      assertEquals(same.code, 0, `after ${k} actions the snapshot changed: ${same.stdout}`);
      if (stopped === -1) {
        assertEquals(chk.code, 0, chk.stdout + chk.stderr);
        const cmp = await qemuImg(["compare", "base.qcow2", "ov.qcow2"], dir);
        assertEquals(cmp.stdout, "Images are identical.\n");
        actions = k;
        break;
      }
      assertLeaksAtMost(chk, k);
    }
    assert(actions > 3, `only ${actions} actions`);
  });
});
