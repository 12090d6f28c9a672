// convert -B BACKING -F FMT -c -o compression_type=zstd (a zstd-compressed
// overlay) against qemu-img 7.2: the zstd convert programs carry the -B -c
// code (guest/ops/convert.c convert_qcow2_backing_compressed); and -B -c with
// extended L2 entries (zlib and zstd). Each case runs
// the same command line through qemu-img and instar (tests/support/convert_compare.ts):
// stdout, stderr, exit code, qemu-img compare, info and map (without the
// target's own offsets: instar lays out its qcow2 differently), check, and the
// counts of allocated and compressed clusters.
import { built, haveQemuImg } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { compareIn, io, setUp } from "./support/convert_compare.ts";
import { withTempDir } from "./cli_helpers.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// Data, a zero-flagged cluster, a cluster of written zeroes, a 4 KiB write, all over the base.
const TOP = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 1M"),
  "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
  io("top.qcow2", "write -P 2 64k 64k", "write -z 256k 64k", "write -P 0 512k 64k", "write -P 3 1M 4k"),
];
// 512-byte clusters: short runs make their whole target cluster data.
const FINE = [
  "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 fine.qcow2 4M",
  io("fine.qcow2", "write -P 9 485376 48640", "write -z 2M 3k", "write -P 0 3M 2k", "write -P 8 3147264 512"),
];
// 512-byte clusters: short runs make their whole target cluster data.
const FINE512 = [
  "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 fine512.qcow2 4M",
  io("fine512.qcow2", "write -P 9 485376 48640", "write -z 2M 3k", "write -P 0 3M 2k", "write -P 0 1000k 1k"),
];
// A zstd-compressed top over a shorter backing file.
const ZTOP = [
  "qemu-img create -q -f qcow2 small.qcow2 1M",
  io("small.qcow2", "write -P 7 0 64k"),
  "qemu-img create -q -f qcow2 -o compression_type=zstd -b small.qcow2 -F qcow2 ztop.qcow2 2M",
  io("ztop.qcow2", "write -c -P 4 0 64k", "write -P 5 1536k 64k", "write -z 1M 64k"),
];

const Z = ["-c", "-o", "compression_type=zstd"];
const CASES: { name: string; args: string[] }[] = [
  {
    name: "a chain's top layer over its own base",
    args: [...Z, "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
  },
  {
    name: "-S 0 (zeroes compressed too)",
    args: [...Z, "-S", "0", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
  },
  {
    name: "64 KiB clusters partly written by a 512-byte-cluster top",
    args: [...Z, "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
  },
  {
    name: "1-bit refcounts (a host cluster per stream)",
    args: [
      "-c",
      "-o",
      "compression_type=zstd,refcount_bits=1",
      "-B",
      "base.qcow2",
      "-F",
      "qcow2",
      "top.qcow2",
    ],
  },
  // Extended L2 entries: compressed clusters have no subcluster bitmap, zero clusters read all-zero.
  {
    name: "extended L2 entries (zlib)",
    args: ["-c", "-o", "extended_l2=on", "-B", "base.qcow2", "-F", "qcow2", "fine512.qcow2"],
  },
  {
    name: "extended L2 entries, 16 KiB clusters, zstd",
    args: [
      "-c",
      "-o",
      "extended_l2=on,cluster_size=16k,compression_type=zstd",
      "-B",
      "base.qcow2",
      "-F",
      "qcow2",
      "fine512.qcow2",
    ],
  },
  {
    name: "a zstd-compressed top over a shorter backing file",
    args: [...Z, "-B", "small.qcow2", "-F", "qcow2", "ztop.qcow2"],
  },
];

Deno.test({ name: "convert -B -c zstd: targets equal to qemu-img's", ignore: !ready }, async (t) => {
  await withTempDir("instar-convert-bz-", async (root) => {
    await setUp(root, [...TOP, ...FINE, ...FINE512, ...ZTOP]);
    for (const c of CASES) {
      await t.step(c.name, async () => {
        await compareIn(root, {
          make: [],
          args: ["convert", "-O", "qcow2", ...c.args, "out.qcow2"],
          sameCounts: true,
        });
      });
    }
  });
});
