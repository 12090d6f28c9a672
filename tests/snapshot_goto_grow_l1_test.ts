// `snapshot -a` of a snapshot whose L1 table is larger than the active one,
// against qemu-img 7.2: qcow2_snapshot_goto first grows the active table to
// the snapshot's size (qcow2_grow_l1_table, exact: a new table, the header's
// l1_size and l1_table_offset, the old table freed;
// lib/formats/qcow2/snapshot_plan.ts). qemu never shrinks an L1 table, so
// such a pair comes from another writer: here a qemu-made image whose
// snapshot was taken after a shrink (its L1 table sized for the old size)
// and whose header's l1_size is then cut to what the virtual size needs
// (the entries past it are zero: a valid image, `qemu-img check` clean once
// `check -r leaks` freed the table clusters the cut leaves unused).
// qemu-img runs on one copy, instar on the other: stdout, stderr and exit
// code, the file byte for byte, and every snapshot's contents must match.
import { io } from "./cli_helpers.ts";
import { built, haveQemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { snapshotCommandSame } from "./support/snapshot_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** The header's l1_size (offset 36, big-endian u32) set to `n` (< 2^16). */
const setL1Size = (file: string, n: number) =>
  `printf '\\000\\000\\${(n >> 8).toString(8).padStart(3, "0")}\\${
    (n & 255).toString(8).padStart(3, "0")
  }' | ` +
  `dd of=${file} bs=1 seek=36 conv=notrunc status=none`;

interface Case {
  name: string;
  make: string[];
  snaps: string[];
}

const CASES: Case[] = [
  {
    name: "64 KiB clusters: 1 entry grown to 4",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 2G",
      io("t.qcow2", "write -P 1 0 512k", "write -P 2 1536M 64k"),
      "qemu-img resize -q --shrink t.qcow2 1M",
      "qemu-img snapshot -c s t.qcow2",
      io("t.qcow2", "write -P 3 64k 64k"),
      setL1Size("t.qcow2", 1),
      "qemu-img check -q t.qcow2",
    ],
    snaps: ["s"],
  },
  {
    name: "the image grown since (the goto shrinks it first), then 1 entry grown to 4",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 2G",
      io("t.qcow2", "write -P 1 0 512k"),
      "qemu-img resize -q --shrink t.qcow2 1M",
      "qemu-img snapshot -c s t.qcow2",
      setL1Size("t.qcow2", 1),
      "qemu-img resize -q t.qcow2 3M",
      io("t.qcow2", "write -P 3 64k 64k", "write -P 4 2M 64k"),
      "qemu-img check -q t.qcow2",
    ],
    snaps: ["s"],
  },
  {
    name: "512 B clusters: a 1-cluster table grown to 8 clusters, two snapshots, compressed clusters",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=512 t.qcow2 16M",
      io("t.qcow2", "write -P 1 0 96k", "write -c -P 5 128k 512", "write -P 2 15M 4k"),
      "qemu-img resize -q --shrink t.qcow2 1M",
      "qemu-img snapshot -c s1 t.qcow2",
      io("t.qcow2", "write -P 3 32k 8k"),
      "qemu-img snapshot -c s2 t.qcow2",
      io("t.qcow2", "write -P 4 0 4k"),
      setL1Size("t.qcow2", 32),
      // The cut-off clusters of the old table leak: qemu-img repairs that.
      "qemu-img check -q -r leaks t.qcow2 >/dev/null",
      "qemu-img check -q t.qcow2",
    ],
    snaps: ["s1", "s2"],
  },
];

for (const c of CASES) {
  Deno.test({ name: `snapshot -a growing the L1 table: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-snapl1-", async (root) => {
      await snapshotCommandSame(root, c.make, ["snapshot", "-a", c.snaps[0], "t.qcow2"], c.snaps);
    });
  });
}
