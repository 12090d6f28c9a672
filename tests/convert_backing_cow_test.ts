// convert -B BACKING -F FMT -O qcow2 where the source's top layer writes only
// part of a target cluster (its clusters are smaller than the target's), as
// qemu-img 7.2 does it: a data write allocates the cluster and qcow2's COW
// copies the target backing file's bytes into the rest; a write-zeroes piece
// makes the cluster a zero cluster when the rest of it reads as zeroes
// through the backing file, else falls back to writing zeroes (COW again).
// The target's backing file is opened through the allowlist and read by the
// guest (guest/ops/convert.c partial_cluster). Each case runs the same
// command line through qemu-img and instar (tests/support/convert_compare.ts):
// stdout, stderr, exit code, qemu-img compare, info, map (without the
// target's own offsets), check and the allocated-cluster count.
import { built, haveQemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { convertQcow2Steps, io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// base: data in its first MiB and at 2 MiB + 32 KiB. other: another pattern,
// shorter (2 MiB), for a target backing file that is not the source's.
// top (4 KiB clusters over base): data inside base's data, zeroes inside it,
// zeroes where base reads as zeroes, zeroes beside base's data in one 64 KiB
// cluster, two zero pieces in one cluster, written zeroes, data past other's end.
const MAKE = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 1M", "write -P 6 2080k 4k"),
  "qemu-img create -q -f qcow2 other.qcow2 2M",
  io("other.qcow2", "write -P 7 0 1536k"),
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 4M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 256k 4k",
    "write -z 1088k 4k",
    "write -z 2M 4k",
    "write -z 1536k 4k",
    "write -z 1556k 8k",
    "write -P 0 3M 4k",
    "write -P 5 3080k 4k",
  ),
  // 512-byte clusters written off qemu's 4 KiB -S alignment (data widened to it), short zero runs.
  "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 fine.qcow2 4M",
  io(
    "fine.qcow2",
    "write -P 9 485376 48640",
    "write -z 2M 3k",
    "write -P 0 3M 2k",
    "write -P 8 3147264 512",
    "write -P 0 1000k 1k",
    "write -z 2090k 1k",
  ),
  // A raw backing file with holes: is_zero asks the file (SEEK_HOLE).
  "qemu-img create -q -f raw holes.raw 4M",
  io("-f raw holes.raw", "write -P 8 0 64k", "write -P 8 1088k 4k", "write -P 9 2052k 4k"),
];

const B = (file: string, fmt: string) => ["-B", file, "-F", fmt, "top.qcow2"];
const CASES: { name: string; args: string[] }[] = [
  { name: "over the source's own backing file", args: B("base.qcow2", "qcow2") },
  { name: "over another, shorter backing file", args: B("other.qcow2", "qcow2") },
  { name: "over a raw backing file with holes", args: B("holes.raw", "raw") },
  { name: "-S 0 (zeroes written as data)", args: ["-S", "0", ...B("base.qcow2", "qcow2")] },
  {
    name: "compat=0.10 (write-zeroes falls back to writes)",
    args: ["-o", "compat=0.10", ...B("base.qcow2", "qcow2")],
  },
  { name: "1 MiB target clusters", args: ["-o", "cluster_size=1M", ...B("other.qcow2", "qcow2")] },
  { name: "-S 8k", args: ["-S", "8k", ...B("holes.raw", "raw")] },
  { name: "a 512-byte-cluster top", args: ["-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"] },
  {
    name: "a 512-byte-cluster top, -S 16k",
    args: ["-S", "16k", "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
  },
];

Deno.test(
  { name: "convert -B: target clusters partly written over the backing file", ignore: !ready },
  async (t) => {
    await withTempDir("instar-convert-bcow-", (root) => convertQcow2Steps(t, root, MAKE, CASES));
  },
);
