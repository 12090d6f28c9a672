// Size changes of qcow2 images with internal snapshots against qemu-img 7.2:
// `resize --shrink` (the L2 tables a snapshot shares are copied before their
// cut-off entries are cleared, lib/formats/qcow2/resize_plan.ts) and
// `snapshot -a` of a snapshot whose virtual size is not the image's
// (qcow2_snapshot_goto truncates the image to the snapshot's size first: the
// Proxmox rollback after a disk resize, and the reverse). Images are made by
// qemu-img/qemu-io in one directory and copied; qemu-img runs on one copy,
// instar on the other. stdout, stderr and exit code must match, `qemu-img
// check` be clean, the files byte-identical, and every snapshot read the same.
import { io } from "./cli_helpers.ts";
import { built, haveQemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { snapshotCommandSame } from "./support/snapshot_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

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
      await snapshotCommandSame(root, c.make, c.args, c.snaps);
    });
  });
}
