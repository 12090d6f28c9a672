// Size changes of qcow2 images with internal snapshots against qemu-img 7.2:
// `resize --shrink` (the L2 tables a snapshot shares are copied before their
// cut-off entries are cleared, lib/formats/qcow2/resize_plan.ts) and
// `snapshot -a` of a snapshot whose virtual size is not the image's
// (qcow2_snapshot_goto truncates the image to the snapshot's size first: the
// Proxmox rollback after a disk resize, and the reverse). Images are made by
// qemu-img/qemu-io in one directory and copied; qemu-img runs on one copy,
// instar on the other. stdout, stderr and exit code must match, `qemu-img
// check` be clean, the files byte-identical, and every snapshot read the same.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const io = (file: string, ...cmds: string[]) =>
  `qemu-io ${cmds.map((c) => `-c '${c}'`).join(" ")} ${file} >/dev/null`;

interface Case {
  name: string;
  make: string[];
  args: string[];
  snaps: string[];
}

const CASES: Case[] = [
  {
    name: "resize --shrink: the table holding the new end is shared",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 4M",
      io("t.qcow2", "write -P 1 0 4M"),
      "qemu-img snapshot -c s1 t.qcow2",
    ],
    args: ["resize", "--shrink", "t.qcow2", "1M"],
    snaps: ["s1"],
  },
  {
    name: "resize --shrink: 4 KiB clusters, shared and copied tables, compressed clusters, past the new L1",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4k t.qcow2 7M",
      io("t.qcow2", "write -c -P 2 5M 64k", "write -P 1 0 5M", "write -P 1 5184k 1984k"),
      "qemu-img snapshot -c s1 t.qcow2",
      io("t.qcow2", "write -P 3 0 64k", "write -P 4 3M 64k"),
      "qemu-img snapshot -c s2 t.qcow2",
      io("t.qcow2", "write -P 5 6M 64k"),
    ],
    args: ["resize", "--shrink", "t.qcow2", "1500k"],
    snaps: ["s1", "s2"],
  },
  {
    name: "snapshot -a of a smaller snapshot (a rollback after the disk grew)",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1M",
      io("t.qcow2", "write -P 1 0 512k"),
      "qemu-img snapshot -c s1 t.qcow2",
      "qemu-img resize -q t.qcow2 3M",
      io("t.qcow2", "write -P 2 0 64k", "write -P 3 2M 512k"),
    ],
    args: ["snapshot", "-a", "s1", "t.qcow2"],
    snaps: ["s1"],
  },
  {
    name: "snapshot -a of a larger snapshot (the disk shrank), 4 KiB clusters",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4k t.qcow2 3M",
      io("t.qcow2", "write -P 1 0 3M"),
      "qemu-img snapshot -c s1 t.qcow2",
      "qemu-img resize -q --shrink t.qcow2 1M",
      io("t.qcow2", "write -P 2 0 64k"),
    ],
    args: ["snapshot", "-a", "s1", "t.qcow2"],
    snaps: ["s1"],
  },
  {
    name: "snapshot -a back to the larger snapshot after a rollback shrank the disk",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4k t.qcow2 1M",
      io("t.qcow2", "write -P 1 0 1M"),
      "qemu-img snapshot -c s1 t.qcow2",
      "qemu-img resize -q t.qcow2 9M",
      io("t.qcow2", "write -P 2 8M 64k"),
      "qemu-img snapshot -c s2 t.qcow2",
      "qemu-img snapshot -a s1 t.qcow2",
    ],
    args: ["snapshot", "-a", "s2", "t.qcow2"],
    snaps: ["s1", "s2"],
  },
];

for (const c of CASES) {
  Deno.test({ name: `snapshot sizes: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-snapsize-", async (root) => {
      const q = `${root}/q`, i = `${root}/i`;
      await Deno.mkdir(q);
      await Deno.mkdir(i);
      for (const l of c.make) await sh(q, "sh", "-c", l);
      await sh(root, "sh", "-c", "cp -a q/. i/");
      const want = await qemuImg(c.args, q);
      const got = await instarHere(c.args, i);
      assertEquals(got, asInstar(want));
      assertEquals(want.code, 0, want.stderr);
      const chk = await qemuImg(["check", "t.qcow2"], i);
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
      const r = await exec("cmp", ["q/t.qcow2", "i/t.qcow2"], root);
      assert(r.code === 0, `t.qcow2 differs from qemu-img's: ${r.stdout}`);
      for (const s of ["", ...c.snaps]) {
        const l = s === "" ? [] : ["-l", `snapshot.name=${s}`];
        await sh(q, "qemu-img", "convert", "-f", "qcow2", ...l, "-O", "raw", "t.qcow2", `${root}/q.raw`);
        await sh(i, "qemu-img", "convert", "-f", "qcow2", ...l, "-O", "raw", "t.qcow2", `${root}/i.raw`);
        const same = await exec("cmp", ["q.raw", "i.raw"], root);
        assert(same.code === 0, `${s || "the active layer"} differs: ${same.stdout}`);
      }
    });
  });
}
