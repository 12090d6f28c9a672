// commit into a base with persistent bitmaps against qemu-img 7.2: the
// commit job reopens the base read-write (every bitmap marked in use),
// qemu's block layer sets a dirty bit in each enabled bitmap for every range
// the job writes (granularity rounding; lib/cli/commit_dirty.ts has the
// guest OR them into the bitmap's data), and the job's end stores every
// bitmap anew (lib/formats/qcow2/bitmaps_reopen.ts). Each chain is made by
// qemu-img/qemu-io and copied to two directories; qemu-img commits one,
// instar the other. Where the store places the bitmaps depends on where the
// mirror job placed the data (qemu's placement varies from run to run,
// tests/commit_test.ts), so the base is compared by what qemu reads:
// contents, `info`, a clean check, each bitmap's dirty map through qemu-nbd;
// the overlay byte for byte.
import { built, haveQemuImg } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { haveNbd } from "./support/dirty_map.ts";
import { type CommitBitmapCase, io, runCommitBitmapCase } from "./support/commit_bitmaps.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg() && haveNbd;

const CASES: CommitBitmapCase[] = [
  {
    name: "64 KiB clusters: enabled (64 KiB, 512 B, 1 MiB granularity) and disabled bitmaps, -d and without",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img bitmap --add -g 128k base.qcow2 off",
      io("base.qcow2", "write -P 2 3M 64k"),
      "qemu-img bitmap --disable base.qcow2 off",
      "qemu-img bitmap --add base.qcow2 on",
      "qemu-img bitmap --add -g 512 base.qcow2 fine",
      "qemu-img bitmap --add -g 1M base.qcow2 coarse",
      io("base.qcow2", "write -P 4 3200k 4k"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 3 512k 1M", "write -z 2M 128k", "write -P 5 4032k 64k"),
      "qemu-img bitmap --add ov.qcow2 top",
    ],
    runs: [["commit", "-d", "ov.qcow2"], ["commit", "ov.qcow2"]],
    bitmaps: ["off", "on", "fine", "coarse"],
  },
  {
    name: "1 KiB clusters (4 KiB mirror chunks), an enabled bitmap of 2 KiB granularity",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=1024 base.qcow2 1M",
      io("base.qcow2", "write -P 1 0 100k"),
      "qemu-img bitmap --add -g 2k base.qcow2 on",
      "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ov.qcow2 1M",
      io("ov.qcow2", "write -P 3 50k 9k", "write -z 300k 8k", "write -P 5 1020k 4k"),
    ],
    runs: [["commit", "ov.qcow2"]],
    bitmaps: ["on"],
  },
];

for (const c of CASES) {
  Deno.test({
    name: `commit into a base with bitmaps: ${c.name}`,
    ignore: !ready,
    // The base is compared by what qemu reads (the header): check must be clean, its figures may differ.
    fn: () => runCommitBitmapCase({ ...c, placementVaries: true }),
  });
}
