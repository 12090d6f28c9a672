// commit with persistent bitmaps already in use (inconsistent) against
// qemu-img 7.2: qemu loads them as inconsistent and never stores them (their
// entries and clusters stay as they are) while the other bitmaps are marked
// and stored anew; a base with such a bitmap that would have to grow fails
// the job (qcow2_truncate_bitmaps_check). The comparison:
// tests/support/commit_bitmaps.ts.
import { built, haveQemuImg } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { haveNbd } from "./support/dirty_map.ts";
import {
  type CommitBitmapCase as Case,
  io,
  killOpen,
  runCommitBitmapCase,
} from "./support/commit_bitmaps.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

const CASES: Case[] = [
  {
    name: "a base bitmap in use beside enabled and disabled ones, grown base",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 3M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img bitmap --add base.qcow2 bad",
      io("base.qcow2", "write -P 2 1M 64k"),
      killOpen("base.qcow2"),
      "qemu-img bitmap --add base.qcow2 good",
      "qemu-img bitmap --add -g 128k base.qcow2 dis",
      "qemu-img bitmap --disable base.qcow2 dis",
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      "qemu-img bitmap --add ov.qcow2 top",
      io("ov.qcow2", "write -P 3 512k 64k", "write -P 5 3M 64k"),
    ],
    runs: [["commit", "-d", "ov.qcow2"]],
    bitmaps: ["good", "dis"],
    // qcow2_truncate_bitmaps_check: the job fails; both images' bitmaps are stored anew.
    code: 1,
  },
  {
    name: "a base bitmap in use beside enabled and disabled ones, same size",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img bitmap --add base.qcow2 bad",
      killOpen("base.qcow2"),
      "qemu-img bitmap --add -g 4k base.qcow2 good2",
      "qemu-img bitmap --add base.qcow2 dis",
      "qemu-img bitmap --disable base.qcow2 dis",
      io("base.qcow2", "write -P 2 1M 64k"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 3 512k 64k", "write -P 5 3M 8k"),
    ],
    runs: [["commit", "ov.qcow2"]],
    bitmaps: ["good2", "dis"],
  },
  {
    name: "every base bitmap in use, and an overlay bitmap in use (the overlay emptied)",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img bitmap --add base.qcow2 b1",
      "qemu-img bitmap --add -g 1M base.qcow2 b2",
      killOpen("base.qcow2"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      "qemu-img bitmap --add ov.qcow2 t1",
      io("ov.qcow2", "write -P 3 512k 64k", "write -P 5 3M 64k"),
      killOpen("ov.qcow2"),
      "qemu-img bitmap --add ov.qcow2 t2",
    ],
    runs: [["commit", "ov.qcow2"]],
    bitmaps: [],
  },
];

for (const c of CASES) {
  Deno.test({
    name: `commit into a base with bitmaps, in use: ${c.name}`,
    ignore: !ready,
    fn: () => runCommitBitmapCase(c),
  });
}
