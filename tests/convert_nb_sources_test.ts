// convert -n -B BACKING from the sources the qcow2-overlay tests leave out:
// `-l` snapshots of a qcow2 source (qemu-img's bdrv_snapshot_load_tmp: the
// top's block status, and so the ranges written, are the snapshot's L1
// table's; lib/convert/top_source.ts gives the map guest the snapshot), with
// and without a backing file, a snapshot taken before the image grew, into
// qcow2 and raw targets; and single-layer vpc, vhdx and vmdk sources (no
// backing file: qemu-img writes the whole disk). The same command runs
// through qemu-img and instar on copies of the same qemu-img-made files:
// stdout, stderr and exit code must match, the targets must be
// byte-identical (cmp), equal for qemu-img compare, pass qemu-img check, and
// differ from what they were (the case writes something).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const SETUP = [
  // base: 4 MiB of ones (a qcow2 target's and the overlay's backing file).
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 4M"),
  // top (4 KiB clusters) over base: data, zeroes and data (the last two only
  // part of a 64 KiB target cluster), then the snapshot s1, then the active
  // layer overwritten whole (what -l must not read).
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 4M",
  io(
    "top.qcow2",
    "write -P 2 64k 64k",
    "write -z 1M 64k",
    "write -P 3 2M 128k",
    "write -P 0 3M 4k",
    "write -P 5 3100k 4k",
  ),
  "qemu-img snapshot -c s1 top.qcow2",
  io("top.qcow2", "write -P 4 0 4M"),
  // grown: s1 taken at 2 MiB (a shorter L1 table), then grown to 4 MiB.
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 grown.qcow2 2M",
  io("grown.qcow2", "write -P 2 64k 64k", "write -z 1M 8k"),
  "qemu-img snapshot -c s1 grown.qcow2",
  "qemu-img resize -q grown.qcow2 4M",
  io("grown.qcow2", "write -P 4 0 4M"),
  // single: no backing file; s1 then overwritten.
  "qemu-img create -q -f qcow2 single.qcow2 4M",
  io("single.qcow2", "write -P 5 0 64k", "write -P 6 3M 64k"),
  "qemu-img snapshot -c s1 single.qcow2",
  io("single.qcow2", "write -P 7 0 4M"),
  // Single-layer sources of other formats, partly allocated.
  "qemu-img create -q -f vpc -o subformat=dynamic,force_size=on src.vpc 4M",
  io("src.vpc", "write -P 2 0 64k", "write -P 0 2M 4k"),
  "qemu-img create -q -f vhdx src.vhdx 4M",
  io("src.vhdx", "write -P 2 0 64k", "write -P 3 3M 8k"),
  "qemu-img create -q -f vmdk src.vmdk 4M",
  io("src.vmdk", "write -P 2 64k 64k", "write -P 0 1M 64k"),
  // The targets: a qcow2 over base and a raw file, all nines.
  "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 tgt.qcow2 4M",
  io("tgt.qcow2", "write -P 9 0 4M"),
  "qemu-img create -q -f raw tgt.raw 4M",
  io("-f raw tgt.raw", "write -P 9 0 4M"),
];

const CASES: { name: string; args: string[]; source: string; target: "qcow2" | "raw" }[] = [
  {
    name: "-l snapshot.name of an overlay into qcow2",
    args: ["-l", "snapshot.name=s1"],
    source: "top.qcow2",
    target: "qcow2",
  },
  { name: "-l id of an overlay into raw", args: ["-l", "1"], source: "top.qcow2", target: "raw" },
  {
    name: "-l -S 0 of an overlay into qcow2",
    args: ["-S", "0", "-l", "s1"],
    source: "top.qcow2",
    target: "qcow2",
  },
  {
    name: "-l of a snapshot taken before the image grew",
    args: ["-l", "snapshot.id=1"],
    source: "grown.qcow2",
    target: "qcow2",
  },
  {
    name: "-l of an image without a backing file",
    args: ["-l", "s1"],
    source: "single.qcow2",
    target: "qcow2",
  },
  {
    name: "-l of an image without a backing file into raw",
    args: ["-l", "s1"],
    source: "single.qcow2",
    target: "raw",
  },
  { name: "vpc source into qcow2", args: [], source: "src.vpc", target: "qcow2" },
  { name: "vpc source into raw", args: [], source: "src.vpc", target: "raw" },
  { name: "vhdx source into qcow2", args: [], source: "src.vhdx", target: "qcow2" },
  { name: "vmdk source into qcow2", args: [], source: "src.vmdk", target: "qcow2" },
  { name: "vmdk source into raw", args: [], source: "src.vmdk", target: "raw" },
];

Deno.test({ name: "convert -n -B: -l snapshots and vpc, vhdx, vmdk sources", ignore: !ready }, async (t) => {
  await withTempDir("instar-convert-nbs-", async (root) => {
    for (const l of SETUP) await sh(root, "sh", "-c", l);
    for (const c of CASES) {
      await t.step(c.name, async () => {
        const q = `${root}/q`, i = `${root}/i`;
        const out = `tgt.${c.target}`;
        for (const d of [q, i]) {
          await Deno.mkdir(d);
          for (const f of ["base.qcow2", c.source, out]) await Deno.copyFile(`${root}/${f}`, `${d}/${f}`);
        }
        try {
          const args = ["convert", "-n", ...c.args, "-B", "base.qcow2", "-O", c.target, c.source, out];
          const want = await qemuImg(args, q);
          assertEquals(want.code, 0, want.stderr);
          assertEquals(await instarHere(args, i), asInstar(want));
          await sh(root, "cmp", `q/${out}`, `i/${out}`);
          const fmt = ["-f", c.target, "-F", c.target];
          const same = await qemuImg(["compare", ...fmt, `q/${out}`, `i/${out}`], root);
          assertEquals(same.code, 0, same.stdout + same.stderr);
          // The writes changed the target (the case tests something).
          const changed = await qemuImg(["compare", ...fmt, out, `i/${out}`], root);
          assertEquals(changed.code, 1, changed.stdout);
          if (c.target === "qcow2") {
            const chk = await qemuImg(["check", out], i);
            assert(chk.code === 0, chk.stdout + chk.stderr);
          }
        } finally {
          for (const d of [q, i]) await Deno.remove(d, { recursive: true });
        }
      });
    }
  });
});
