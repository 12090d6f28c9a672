// The in-place writers with their work split over two guests (one per core:
// rebase_diff compares two halves of the disk, copy_runs moves two halves of
// the bytes; lib/cli/rebase_safe.ts, lib/cli/write_rounds.ts) must write the
// same bytes as one guest, and what qemu-img writes. INSTAR_GUESTS forces
// the choice on these small images (the split starts at 64 MiB otherwise).
// Images made by qemu-img and qemu-io; a move is cut inside by the split.
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();
interface Case {
  name: string;
  make: string[];
  args: string[];
  /** Files that must equal qemu-img's byte for byte; the others are compared by contents. */
  exact: string[];
  others: string[];
}

const CASES: Case[] = [
  {
    name: "safe rebase",
    make: [
      "qemu-img create -q -f qcow2 old.qcow2 12M",
      io("old.qcow2", "write -P 1 0 7M", "write -P 4 9M 2M"),
      "qemu-img create -q -f qcow2 new.qcow2 12M",
      io("new.qcow2", "write -P 1 0 1M", "write -P 5 6M 2M"),
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2 12M",
      io("ov.qcow2", "write -P 2 2M 512k", "write -z 5M 64k"),
    ],
    args: ["rebase", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"],
    exact: ["ov.qcow2"],
    others: [],
  },
  {
    name: "commit",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 12M",
      io("base.qcow2", "write -P 1 0 3M"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 12M",
      io("top.qcow2", "write -P 2 1M 6M", "write -P 3 9M 2M"),
    ],
    args: ["commit", "top.qcow2"],
    exact: ["top.qcow2"],
    others: ["base.qcow2"],
  },
  {
    name: "convert -n into an existing qcow2",
    make: [
      "qemu-img create -q -f raw src.raw 12M",
      io("-f raw src.raw", "write -P 6 0 5M", "write -P 7 6M 5M"),
      "qemu-img create -q -f qcow2 dst.qcow2 12M",
      io("dst.qcow2", "write -P 9 3M 1M"),
    ],
    args: ["convert", "-n", "-f", "raw", "-O", "qcow2", "src.raw", "dst.qcow2"],
    exact: ["dst.qcow2"],
    others: [],
  },
];

for (const c of CASES) {
  Deno.test({ name: `two guests write what one writes: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-two-guests-", async (root) => {
      await Deno.mkdir(`${root}/q`);
      for (const l of c.make) await sh(`${root}/q`, "sh", "-c", l);
      await sh(root, "sh", "-c", "cp -a q g1 && cp -a q g2");
      const want = await qemuImg(c.args, `${root}/q`);
      assertEquals(want.code, 0, want.stderr);
      for (const g of ["1", "2"]) {
        assertEquals(
          await instarHere(c.args, `${root}/g${g}`, { INSTAR_GUESTS: g }),
          asInstar(want),
          `guests ${g}`,
        );
      }
      for (const f of [...c.exact, ...c.others]) {
        const [a, b, q] = await Promise.all(["g1", "g2", "q"].map((d) => Deno.readFile(`${root}/${d}/${f}`)));
        assert(
          a.length === b.length && a.every((v, k) => v === b[k]),
          `${f}: two guests wrote other bytes than one`,
        );
        if (c.exact.includes(f)) {
          assert(q.length === b.length && q.every((v, k) => v === b[k]), `${f} differs from qemu-img's`);
        }
        const cmp = await qemuImg(["compare", `q/${f}`, `g2/${f}`], root);
        assertEquals(cmp.stdout, "Images are identical.\n", `${f}: ${cmp.stdout}${cmp.stderr}`);
        const chk = await qemuImg(["check", f], `${root}/g2`);
        assertEquals(chk.code, 0, chk.stdout + chk.stderr);
      }
    });
  });
}
