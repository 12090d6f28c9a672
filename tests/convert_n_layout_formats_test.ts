// convert -n -O qcow2 from vpc, vhdx, vmdk and extended-L2 qcow2 sources
// (and raw, a fixed VHD's twin) into an existing qcow2 with free gaps: the
// target's clusters laid out as qemu-img 7.2 lays them out. qemu's requests
// follow each source driver's block status (a dynamic VHD answers one
// allocated block at a time and runs of unallocated blocks at once, a fixed
// VHD and a flat vmdk extent the file's data and holes, a sparse vmdk one
// grain at a time, vhdx the whole disk as data, qcow2 runs of subclusters
// alike up to an L2 table's end) and its src_alignment (the block or grain
// size); each request allocates its own clusters, so into a gapped target
// those boundaries decide where the clusters land. Sources made by qemu-img
// convert from a qcow2 qemu-io wrote (data, zero clusters, zero bytes stored
// as data, unallocated space across several 2 MiB blocks), a vmdk qemu-io
// wrote itself (zero grains, grains out of guest order) and qcow2 overlays
// over a vmdk and a VHD (each layer's answers cut); default -S, -S 0,
// -S 64k, --target-is-zero. The same command runs through qemu-img and
// instar on copies of the same files: the outputs and the targets' bytes
// must be identical, `qemu-img check` clean.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, io, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { runBoth } from "./support/both_tools.ts";
import { headGaps, layoutTests } from "./support/layout_cases.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// 12 MiB: six 2 MiB VHD blocks (0-2 and 4-5 allocated, 3 not); data, a zero
// cluster, data not on cluster boundaries, zero bytes stored as data, a
// 2.5 MiB run across blocks 1 and 2 from inside a cluster, short data in blocks 4 and 5.
const QCOW2 = [
  "qemu-img create -q -f qcow2 in.qcow2 12M",
  io(
    "in.qcow2",
    "write -P 1 0 192k",
    "write -z 192k 64k",
    "write -P 2 256k 128k",
    "write -P 3 452k 8k",
    "write -P 0 512k 64k",
    "write -P 4 576k 4k",
    "write -P 7 1M 4k",
    "write -P 7 1036k 40k",
    "write -P 5 3076k 2560k",
    "write -P 6 8M 68k",
    "write -P 8 11M 12k",
  ),
];
const from = (fmt: string, opts = "") => [...QCOW2, `qemu-img convert -O ${fmt} ${opts} in.qcow2 src`];
const overlay = (fmt: string, ext: string, opts = "") => [
  ...QCOW2,
  `qemu-img convert -O ${fmt} ${opts} in.qcow2 base.${ext}`,
  `qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.${ext} -F ${fmt} src 12M`,
  io("src", "write -P 3 512k 68k", "write -z 1088k 8k", "write -P 4 2100k 20k", "write -z 4M 1M"),
];

const SOURCES: Record<string, { fmt: string; make: string[] }> = {
  // The same as raw: file extents like a fixed VHD's (a 2 MiB buffer ends inside a cluster).
  raw: { fmt: "raw", make: from("raw") },
  "vpc dynamic": { fmt: "vpc", make: from("vpc", "-o force_size=on") },
  "vpc fixed": { fmt: "vpc", make: from("vpc", "-o subformat=fixed,force_size=on") },
  vhdx: { fmt: "vhdx", make: from("vhdx", "-o block_size=1M") },
  "vmdk monolithicSparse": { fmt: "vmdk", make: from("vmdk") },
  "vmdk streamOptimized": { fmt: "vmdk", make: from("vmdk", "-o subformat=streamOptimized") },
  "vmdk monolithicFlat": { fmt: "vmdk", make: from("vmdk", "-o subformat=monolithicFlat") },
  "vmdk twoGbMaxExtentSparse": { fmt: "vmdk", make: from("vmdk", "-o subformat=twoGbMaxExtentSparse") },
  // Subclusters (2 KiB): partly allocated clusters, and runs of subclusters alike.
  "qcow2 extended L2": {
    fmt: "qcow2",
    make: [
      ...from("qcow2", "-o extended_l2=on"),
      io("src", "write -P 4 7M 4k", "write -z 7172k 8k", "write -P 5 7042k 2k", "write -P 6 6146k 60k"),
    ],
  },
  // A qcow2 overlay (4 KiB clusters) over a vmdk and over a dynamic VHD: runs of both layers.
  "qcow2 overlay over vmdk": { fmt: "qcow2", make: overlay("vmdk", "vmdk") },
  "qcow2 overlay over vpc": { fmt: "qcow2", make: overlay("vpc", "vpc", "-o force_size=on") },
  // Written by qemu-io: zero grains, and grains allocated out of guest order (host offsets not contiguous).
  "vmdk zeroed grains": {
    fmt: "vmdk",
    make: [
      "qemu-img create -q -f vmdk -o zeroed_grain=on src 12M",
      io(
        "src",
        "write -P 1 0 192k",
        "write -z 192k 64k",
        "write -P 3 1M 64k",
        "write -P 3 960k 64k",
        "write -P 3 1088k 128k",
        "write -P 4 2M 4k",
        "write -P 5 2176k 4k",
        "write -z 4M 1M",
        "write -P 6 6M 1M",
      ),
    ],
  },
};

// Free gaps of one, two and three clusters (and more further on) in a full target.
const gaps = (cs: number) => [
  io("dst", "write -P 9 0 12M"),
  io("dst", `discard ${cs} ${cs}`, `discard ${4 * cs} ${2 * cs}`, `discard ${9 * cs} ${3 * cs}`),
  io(
    "dst",
    `discard ${20 * cs} ${cs}`,
    "discard 3M 256k",
    `write -z ${30 * cs} ${2 * cs}`,
    "discard 9M 512k",
  ),
  // 1 MiB free: a request of up to 1 MiB fits, a 2 MiB buffer does not; and 2 MiB free.
  io("dst", "discard 5M 1M", "discard 10M 2M"),
];
const TARGETS: Record<string, string[]> = {
  "freed gaps before unallocated": ["qemu-img create -q -f qcow2 dst 12M", ...headGaps(65536)],
  "freed gaps before unallocated, 4 KiB clusters": [
    "qemu-img create -q -f qcow2 -o cluster_size=4096 dst 12M",
    ...headGaps(4096),
  ],
  gaps: ["qemu-img create -q -f qcow2 dst 12M", ...gaps(65536)],
  "gaps, 4 KiB clusters": ["qemu-img create -q -f qcow2 -o cluster_size=4096 dst 12M", ...gaps(4096)],
};

// The default run takes these (each source and path keeps a case); INSTAR_FULL_TESTS=1 every combination.
const QUICK: Record<string, Record<string, string[]>> = {
  raw: { gaps: ["default"] },
  "vpc dynamic": {
    "freed gaps before unallocated": ["default", "-S 0", "--target-is-zero"],
    "freed gaps before unallocated, 4 KiB clusters": ["-S 64k"],
    gaps: ["default"],
  },
  "vpc fixed": { "freed gaps before unallocated, 4 KiB clusters": ["-S 0"], gaps: ["default"] },
  vhdx: { "freed gaps before unallocated": ["default", "-S 0"], gaps: ["default"] },
  "vmdk monolithicSparse": {
    "freed gaps before unallocated": ["default", "-S 0"],
    "gaps, 4 KiB clusters": ["default", "--target-is-zero"],
  },
  "vmdk streamOptimized": { "freed gaps before unallocated, 4 KiB clusters": ["default"] },
  "vmdk monolithicFlat": { gaps: ["default", "-S 0"] },
  "vmdk twoGbMaxExtentSparse": { gaps: ["default"] },
  "qcow2 extended L2": { gaps: ["default", "-S 0"] },
  "qcow2 overlay over vmdk": { gaps: ["default"] },
  "qcow2 overlay over vpc": { gaps: ["-S 0"] },
  "vmdk zeroed grains": { "freed gaps before unallocated": ["default", "-S 0"], gaps: ["--target-is-zero"] },
};

layoutTests({ sources: SOURCES, targets: TARGETS, quick: QUICK, prefix: "instar-nlayoutf-", ready });

// Extended L2 entries are 16 bytes: with 16 KiB clusters an L2 table maps
// 16 MiB, so qemu's answer ends at 16M though the host clusters go on (the
// table past it was allocated first); a 1 MiB gap takes the run's first half.
Deno.test(
  { name: "convert -n layout: extended L2 source, a run across an L2 table's end", ignore: !ready },
  async () => {
    await withTempDir("instar-nlayoutf-", async (root) => {
      const { q, i, want, got } = await runBoth(root, [
        "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k src 32M",
        io("src", "write -P 3 20M 1M", "write -P 2 0 64k", "write -P 1 15M 2M"),
        "qemu-img create -q -f qcow2 dst 32M",
        io("dst", "write -P 9 0 32M"),
        io("dst", "discard 64k 64k", "discard 256k 1M", "discard 2M 512k", "discard 15M 2M"),
      ], ["convert", "-n", "--target-is-zero", "-O", "qcow2", "src", "dst"]);
      assertEquals(got, asInstar(want));
      assertEquals(want.code, 0, want.stderr);
      const same = await new Deno.Command("cmp", { args: [`${q}/dst`, `${i}/dst`] }).output();
      assert(same.success, new TextDecoder().decode(same.stdout));
      const chk = await qemuImg(["check", "dst"], i);
      assert(chk.code === 0, chk.stdout + chk.stderr);
    });
  },
);
