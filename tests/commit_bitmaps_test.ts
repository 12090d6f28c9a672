// commit (without -d) of an overlay with persistent bitmaps against
// qemu-img 7.2: qemu's read-write open marks the overlay's bitmaps in use,
// qcow2_make_empty discards every cluster (a driver-level discard no dirty
// bitmap sees: the bits stay as they were), and the close stores every
// bitmap anew (lib/formats/qcow2/bitmaps_reopen.ts). Each chain is made by
// qemu-img/qemu-io and copied to two directories; qemu-img commits one,
// instar the other; stdout, stderr and the exit code must match, the
// overlay be byte-identical (the base: same contents and check), `qemu-img
// check` clean, and each bitmap's dirty map (read through qemu-nbd) the same.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, haveQemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { commitEmptiedBoth, io } from "./support/commit_pair.ts";
import { dirtyMap, haveNbd } from "./support/dirty_map.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

interface Case {
  name: string;
  make: string[];
  bitmaps: string[];
}

const CASES: Case[] = [
  {
    name: "an enabled and a disabled bitmap",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      "qemu-img bitmap --add ov.qcow2 b1",
      "qemu-img bitmap --add -g 128k --disable ov.qcow2 b2",
      io("ov.qcow2", "write -P 3 512k 1M", "write -z 3M 64k"),
      "qemu-img bitmap --add ov.qcow2 empty",
    ],
    bitmaps: ["b1", "b2", "empty"],
  },
  {
    name: "bitmaps and an internal snapshot, 4 KiB clusters, a missing L2 table",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 6M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ov.qcow2 6M",
      "qemu-img bitmap --add -g 4k ov.qcow2 fine",
      io("ov.qcow2", "write -P 3 100k 700k", "write -c -P 4 1M 64k"),
      "qemu-img snapshot -c s1 ov.qcow2",
      io("ov.qcow2", "write -P 5 5M 12k"),
      "qemu-img bitmap --add --disable ov.qcow2 off",
    ],
    bitmaps: ["fine", "off"],
  },
];

for (const c of CASES) {
  Deno.test({
    name: `commit of an overlay with persistent bitmaps: ${c.name}`,
    ignore: !ready,
    async fn() {
      await withTempDir("instar-commit-bm-", async (dir) => {
        await commitEmptiedBoth(dir, c.make);
        for (const b of c.bitmaps) {
          assertEquals(await dirtyMap(`${dir}/i`, "ov.qcow2", b), await dirtyMap(`${dir}/q`, "ov.qcow2", b));
        }
      });
    },
  });
}
