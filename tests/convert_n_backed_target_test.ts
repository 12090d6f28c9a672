// convert -n -O qcow2 (with and without -B) into a qcow2 target that has a
// backing file of its own, as qemu-img 7.2 does it: the target is opened
// with its backing chain (through the allowlist; a missing backing file is
// qemu's open error); whole clusters are written as into any target, and
// where the source's top writes only part of an unallocated target cluster
// the rest is the target's backing file's bytes (qemu's copy-on-write, read
// through the target's chain), a first write-zeroes makes a zero cluster
// only where the rest of the cluster reads as zeroes through that chain, and
// compat=0.10 writes zeroes as data. The same command runs through qemu-img
// and instar on copies of the same qemu-img-made files: stdout, stderr and
// exit code must match, the targets must be byte-identical (cmp) and pass
// qemu-img check.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { convertIntoCopies, io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// base: 3 MiB of data. top (4 KiB clusters) over it, each in its own 64 KiB
// target cluster: data (1); zeroes over base's data (16); zeroes then data
// over base's data (32) and past it (50); zeroes written as data across
// clusters 48/49; 1 KiB of data then zeroes across 50/51 (-S 128k rounds).
const SOURCE = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 3M"),
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 4M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 1M 4k",
    "write -z 2M 4k",
    "write -P 4 2056k 4k",
    "write -P 0 3132k 8k",
    "write -z 3200k 4k",
    "write -P 4 3208k 4k",
    "write -P 5 3260k 1k",
    "write -P 0 3261k 7k",
  ),
  // Targets over base: v3 with data in the first MiB, compat=0.10.
  "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 v3.qcow2 4M",
  io("v3.qcow2", "write -P 9 0 1M"),
  "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2.qcow2 4M",
  io("v2.qcow2", "write -P 9 0 1M"),
];

const NB = ["-B", "base.qcow2"];
const CASES: { name: string; target: string; args: string[] }[] = [
  { name: "without -B", target: "v3", args: [] },
  { name: "without -B, compat=0.10", target: "v2", args: [] },
  { name: "-B: clusters written in part over the backing file", target: "v3", args: NB },
  { name: "-B -S 128k", target: "v3", args: [...NB, "-S", "128k"] },
  { name: "-B -S 0", target: "v3", args: [...NB, "-S", "0"] },
  { name: "-B, compat=0.10", target: "v2", args: NB },
];

Deno.test({ name: "convert -n into a qcow2 target with a backing file", ignore: !ready }, async (t) => {
  await withTempDir("instar-convert-nbt-", async (root) => {
    for (const l of SOURCE) await sh(root, "sh", "-c", l);
    for (const c of CASES) {
      await t.step(c.name, async () => {
        const args = ["convert", "-n", ...c.args, "-O", "qcow2", "top.qcow2", "out.qcow2"];
        await convertIntoCopies(root, ["base.qcow2", "top.qcow2"], c.target, args);
      });
    }
    await t.step("a missing backing file: qemu's open error, nothing written", async () => {
      await sh(root, "sh", "-c", "qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 m.qcow2 4M");
      await Deno.copyFile(`${root}/m.qcow2`, `${root}/m0.qcow2`);
      const args = ["convert", "-n", "-O", "qcow2", "top.qcow2", "m.qcow2"];
      const want = await qemuImg(args, root);
      assertEquals(want.code, 1);
      assertEquals(await instarHere(args, root), asInstar(want));
      await sh(root, "cmp", "m.qcow2", "m0.qcow2");
    });
  });
});
