// commit into a base with persistent bitmaps against qemu-img 7.2, the
// corner cases of size: a base the commit must grow (bdrv_co_truncate
// resizes the bitmaps in memory, the grown range clean; the job's writes
// past the old end set their bits, and the store writes tables for the new
// size), and enabled bitmaps in a base with clusters over 64 KiB (the mirror
// job writes 64 KiB chunks, so a bitmap finer than a cluster gets the
// chunks' bits only). The comparison: tests/support/commit_bitmaps.ts.
import { built, haveQemuImg } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { haveNbd } from "./support/dirty_map.ts";
import { type CommitBitmapCase as Case, io, runCommitBitmapCase } from "./support/commit_bitmaps.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

const CASES: Case[] = [
  {
    name: "a base the commit grows (2 MiB -> 5 MiB): enabled, fine and disabled bitmaps",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 2M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img bitmap --add base.qcow2 on",
      "qemu-img bitmap --add -g 512 base.qcow2 fine",
      "qemu-img bitmap --add -g 128k base.qcow2 off",
      io("base.qcow2", "write -P 2 1M 64k", "write -P 6 2047k 1k"),
      "qemu-img bitmap --disable base.qcow2 off",
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 5M",
      io("ov.qcow2", "write -P 3 512k 64k", "write -P 5 3M 64k", "write -P 7 5116k 4k"),
    ],
    runs: [["commit", "ov.qcow2"], ["commit", "-d", "ov.qcow2"]],
    bitmaps: ["on", "fine", "off"],
  },
  {
    name: "128 KiB clusters: enabled bitmaps of 64 KiB, 4 KiB and 256 KiB granularity",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=128k base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img bitmap --add base.qcow2 on",
      "qemu-img bitmap --add -g 4k base.qcow2 fine",
      "qemu-img bitmap --add -g 256k base.qcow2 coarse",
      io("base.qcow2", "write -P 2 3M 4k"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 3 64k 64k", "write -P 4 1152k 4k", "write -z 2M 128k", "write -P 5 4032k 64k"),
    ],
    runs: [["commit", "ov.qcow2"]],
    bitmaps: ["on", "fine", "coarse"],
  },
];

for (const c of CASES) {
  Deno.test({
    name: `commit into a base with bitmaps, sizes: ${c.name}`,
    ignore: !ready,
    fn: () => runCommitBitmapCase(c),
  });
}
