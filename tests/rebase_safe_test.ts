// rebase in safe mode against qemu-img 7.2: the same overlay (qemu-img
// create -b, data and zero writes by qemu-io) in two directories, rebased by
// qemu-img and by instar onto a new backing file (qcow2 or raw, smaller or
// larger, with compressed clusters in the old backing) or onto none (-b "").
// stdout, stderr and the exit code must match and the overlay must be the
// same bytes (qemu's rebase writes in order, so its layout is reproducible);
// `qemu-img check` clean.
import { runBoth } from "./support/both_tools.ts";
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  make: string[];
  args: string[];
}

const OLD = [
  "qemu-img create -q -f qcow2 old.qcow2 4M",
  io("old.qcow2", "write -P 1 0 1M", "write -z 1M 64k", "write -P 8 3M 64k"),
];
const OV = (size = "4M", opts = "") => [
  `qemu-img create -q -f qcow2 ${opts} -b old.qcow2 -F qcow2 ov.qcow2 ${size}`,
  io("ov.qcow2", "write -P 3 64k 64k", "write -z 2M 64k"),
];

const CASES: Case[] = [
  {
    name: "onto a qcow2 backing file that differs in places",
    make: [
      ...OLD,
      "qemu-img create -q -f qcow2 new.qcow2 4M",
      io("new.qcow2", "write -P 1 0 512k", "write -P 7 2M 128k"),
      ...OV(),
    ],
    args: ["rebase", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"],
  },
  {
    name: "-b '' (every cluster the old backing file holds)",
    make: [...OLD, ...OV()],
    args: ["rebase", "-b", "", "ov.qcow2"],
  },
  {
    name: "onto a smaller raw backing file, overlay larger than the old backing",
    make: [
      ...OLD,
      "qemu-img create -q -f raw new.raw 1M",
      io("-f raw new.raw", "write -P 1 0 256k"),
      ...OV("6M"),
    ],
    args: ["rebase", "-p", "-b", "new.raw", "-F", "raw", "ov.qcow2"],
  },
  {
    name: "new backing larger than the old one: zero clusters past the old end",
    make: [
      "qemu-img create -q -f qcow2 old.qcow2 1M",
      io("old.qcow2", "write -P 1 0 512k"),
      "qemu-img create -q -f qcow2 new.qcow2 4M",
      io("new.qcow2", "write -P 1 0 512k", "write -P 5 2M 192k"),
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2 4M",
    ],
    args: ["rebase", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"],
  },
  {
    name: "compressed clusters in the old backing file, compat=0.10 overlay, 4 KiB clusters",
    make: [
      "qemu-img create -q -f qcow2 src.qcow2 2M",
      io("src.qcow2", "write -P 4 0 1M", "write -P 6 1536k 64k"),
      "qemu-img convert -c -O qcow2 src.qcow2 old.qcow2",
      "qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 -b old.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 3 4k 8k"),
    ],
    args: ["rebase", "-b", "", "ov.qcow2"],
  },
  {
    name: "an overlay without a backing file gets a backing file (zero clusters where it holds data)",
    make: [
      "qemu-img create -q -f qcow2 new.qcow2 4M",
      io("new.qcow2", "write -P 7 1M 192k"),
      "qemu-img create -q -f qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 3 1088k 64k"),
    ],
    args: ["rebase", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"],
  },
  {
    name: "onto a backing file further down the old chain",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 2M"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 old.qcow2 4M",
      io("old.qcow2", "write -P 2 512k 256k", "write -z 1536k 64k"),
      ...OV(),
    ],
    args: ["rebase", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2"],
  },
  {
    name: "qemu copies, then refuses a new backing file without -F",
    make: [...OLD, "qemu-img create -q -f qcow2 new.qcow2 4M", ...OV()],
    args: ["rebase", "-b", "new.qcow2", "ov.qcow2"],
  },
  {
    name: "a new backing file that does not exist",
    make: [...OLD, ...OV()],
    args: ["rebase", "-b", "missing.qcow2", "-F", "qcow2", "ov.qcow2"],
  },
];

for (const c of CASES) {
  Deno.test({ name: `rebase (safe): ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-rebase-", async (root) => {
      let before: Awaited<ReturnType<typeof qemuImg>> | undefined;
      const { q, i, want, got } = await runBoth(root, c.make, c.args, async (q) => {
        before = await qemuImg(["convert", "-O", "raw", "ov.qcow2", "before.raw"], q);
      });
      assertEquals(before?.code, 0);
      if (c.args.includes("-p")) {
        // The intermediate percentages follow qemu's chunking (docs/quirks.md): first and last agree.
        assert(got.stdout.startsWith("    (0.00/100%)\r") && want.stdout.startsWith("    (0.00/100%)\r"));
        assert(got.stdout.endsWith("    (100.00/100%)\r\n") && want.stdout.endsWith("    (100.00/100%)\r\n"));
        got.stdout = want.stdout;
      }
      assertEquals(got, asInstar(want));
      const a = await Deno.readFile(`${q}/ov.qcow2`), b = await Deno.readFile(`${i}/ov.qcow2`);
      const at = a.findIndex((v, k) => v !== b[k]);
      assert(
        a.length === b.length && at < 0,
        `ov.qcow2 differs from qemu-img's (${a.length} vs ${b.length}, first at ${at})`,
      );
      const chk = await qemuImg(["check", "ov.qcow2"], i);
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
      // The overlay reads as before.
      const cmp = await qemuImg(["compare", "-F", "raw", "ov.qcow2", `${q}/before.raw`], i);
      assertEquals(cmp.stdout, "Images are identical.\n", cmp.stdout + cmp.stderr);
    });
  });
}
