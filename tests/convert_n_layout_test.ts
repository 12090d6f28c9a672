// convert -n into an existing qcow2: the target's clusters laid out as
// qemu-img 7.2 lays them out. qemu issues one write per request of its
// convert loop (one per block-status run of the source, at most 2 MiB each,
// cut into -S pieces) and each write allocates its own clusters, first fit
// from where its allocator got to: into a target with free gaps the
// requests' boundaries decide which clusters land where. Sources whose runs
// alternate data, zeroes and data (raw with holes, qcow2 with zero clusters
// and out-of-order host clusters), targets empty, with freed gaps (discard)
// and with small clusters; default -S, -S 0 and --target-is-zero. The same
// command runs through qemu-img and instar on copies of the same files: the
// outputs and the targets' bytes must be identical, `qemu-img check` clean.
// (No -W: qemu's out-of-order writes make its own layout vary.)
import { built, haveQemuImg } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { headGaps, layoutTests } from "./support/layout_cases.ts";
import { io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const SOURCES: Record<string, string[]> = {
  // Data, a hole, data not on cluster boundaries, a hole, zero bytes stored
  // as data, 4 KiB of data, an 8 KiB hole and more data in one cluster, a
  // 2.5 MiB data run (two buffers), a short tail.
  raw: [
    "qemu-img create -q -f raw src 4M",
    io(
      "-f raw src",
      "write -P 1 0 192k",
      "write -P 2 320k 64k",
      "write -P 3 452k 8k",
      "write -P 0 512k 64k",
      "write -P 4 576k 4k",
      "write -P 7 1M 4k",
      "write -P 7 1036k 40k",
      "write -P 5 1088k 2560k",
      "write -P 6 3968k 12k",
    ),
  ],
  // Data, a zero cluster, data, clusters written out of guest order (their
  // host clusters are not contiguous), a cluster of zero bytes, 4 KiB writes.
  qcow2: [
    "qemu-img create -q -f qcow2 src 4M",
    io(
      "src",
      "write -P 1 0 192k",
      "write -z 192k 64k",
      "write -P 2 256k 128k",
      "write -P 3 1M 64k",
      "write -P 3 960k 64k",
      "write -P 3 1088k 128k",
      "write -P 0 2M 64k",
      "write -P 4 2M 4k",
      "write -P 5 2176k 4k",
      "write -P 6 3M 1M",
    ),
  ],
  // 4 KiB clusters: a zero cluster and data ending inside the target's clusters.
  "qcow2, 4 KiB clusters": [
    "qemu-img create -q -f qcow2 -o cluster_size=4096 src 4M",
    io("src", "write -P 1 0 68k", "write -z 68k 8k", "write -P 2 76k 100k", "write -P 3 1300k 4k"),
    io("src", "write -P 4 1280k 8k", "write -P 5 2M 1M"),
  ],
  // An overlay with 4 KiB clusters over a 64 KiB-cluster base: runs of both layers.
  "qcow2 overlay": [
    "qemu-img create -q -f qcow2 base 4M",
    io("base", "write -P 1 0 1M", "write -P 2 2M 1M"),
    "qemu-img create -q -f qcow2 -b base -F qcow2 -o cluster_size=4096 src 4M",
    io("src", "write -P 3 512k 68k", "write -z 1088k 8k", "write -P 4 2100k 20k"),
  ],
};

// Free gaps of one, two and three clusters (and more at the end) in a full target.
const gaps = (cs: number) => [
  io("dst", "write -P 9 0 4M"),
  io("dst", `discard ${cs} ${cs}`, `discard ${4 * cs} ${2 * cs}`, `discard ${9 * cs} ${3 * cs}`),
  io("dst", `discard ${20 * cs} ${cs}`, `discard 3M 256k`, `write -z ${30 * cs} ${2 * cs}`),
];
const TARGETS: Record<string, string[]> = {
  "freed gaps before unallocated": ["qemu-img create -q -f qcow2 dst 4M", ...headGaps(65536)],
  "freed gaps before unallocated, 4 KiB clusters": [
    "qemu-img create -q -f qcow2 -o cluster_size=4096 dst 4M",
    ...headGaps(4096),
  ],
  empty: ["qemu-img create -q -f qcow2 dst 4M"],
  gaps: ["qemu-img create -q -f qcow2 dst 4M", ...gaps(65536)],
  "gaps, 4 KiB clusters": ["qemu-img create -q -f qcow2 -o cluster_size=4096 dst 4M", ...gaps(4096)],
  "gaps, compat=0.10": ["qemu-img create -q -f qcow2 -o compat=0.10 dst 4M", ...gaps(65536)],
};

// The default run takes these (each path keeps a case); INSTAR_FULL_TESTS=1 every combination.
const QUICK: Record<string, Record<string, string[]>> = {
  raw: {
    "freed gaps before unallocated": ["default", "-S 0", "--target-is-zero", "-S 64k"],
    "freed gaps before unallocated, 4 KiB clusters": ["default"],
    gaps: ["default"],
    empty: ["default"],
  },
  qcow2: {
    "freed gaps before unallocated": ["default", "-S 0"],
    gaps: ["default"],
    "gaps, compat=0.10": ["default"],
  },
  "qcow2, 4 KiB clusters": { "freed gaps before unallocated": ["default"], gaps: ["default"] },
  "qcow2 overlay": { "freed gaps before unallocated": ["default"] },
};

layoutTests({
  // raw sources as -f raw, the others as qcow2.
  sources: Object.fromEntries(
    Object.entries(SOURCES).map(([k, make]) => [k, { fmt: k.startsWith("qcow2") ? "qcow2" : "raw", make }]),
  ),
  targets: TARGETS,
  quick: QUICK,
  prefix: "instar-nlayout-",
  ready,
});
