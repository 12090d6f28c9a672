// convert -B BACKING -F FMT -O qcow2 -o extended_l2=on against qemu-img 7.2:
// qemu writes, zeroes and copies-on-write subclusters (guest/ops/convert.c
// ext_cluster), so a cluster may hold allocated, zero and untouched
// subclusters side by side. Each case runs the same command line through
// qemu-img and instar (tests/support/convert_compare.ts: stdout, stderr, exit
// code, qemu-img compare, info, map without offsets, check, cluster counts),
// then compares every L2 entry's flags and subcluster bitmap (not its host
// offset: instar lays out its qcow2 differently).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { convertQcow2Steps, io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const MAKE = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 1M", "write -P 6 2080k 4k"),
  // 4 KiB clusters: data and zeroes inside 64 KiB target clusters, over data and over zeroes of the base.
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 4M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 256k 4k",
    "write -z 1536k 4k",
    "write -P 0 3M 4k",
    "write -P 5 3080k 4k",
    "write -z 2M 4k",
  ),
  // 512-byte clusters written off the subcluster boundaries.
  "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 fine.qcow2 4M",
  io(
    "fine.qcow2",
    "write -P 9 485376 48640",
    "write -z 2M 3k",
    "write -P 0 3M 2k",
    "write -P 8 3147264 512",
    "write -z 2090k 1k",
  ),
];

/** Every L2 entry of a qcow2 file with extended L2 entries: its flags and bitmap, without host offsets. */
async function l2Entries(path: string): Promise<string[]> {
  const f = await Deno.readFile(path);
  const v = new DataView(f.buffer);
  const cs = 1 << v.getUint32(20), l1n = v.getUint32(36), l1o = Number(v.getBigUint64(40));
  const out: string[] = [];
  for (let i = 0; i < l1n; i++) {
    const t = Number(v.getBigUint64(l1o + 8 * i) & 0x00fffffffffffe00n);
    for (let j = 0; j < cs / 16; j++) {
      if (!t) {
        out.push("-");
        continue;
      }
      const e = v.getBigUint64(t + 16 * j), bm = v.getBigUint64(t + 16 * j + 8);
      out.push(`${e & 0x00fffffffffffe00n ? "A" : "-"}${e & 1n}${e >> 62n}/${bm.toString(16)}`);
    }
  }
  return out;
}

const X = ["-o", "extended_l2=on"];
const CASES: { name: string; args: string[] }[] = [
  { name: "a 4 KiB-cluster top", args: [...X, "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"] },
  { name: "-S 0", args: [...X, "-S", "0", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"] },
  {
    name: "16 KiB clusters",
    args: ["-o", "extended_l2=on,cluster_size=16k", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
  },
  { name: "a 512-byte-cluster top", args: [...X, "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"] },
  {
    name: "a 512-byte-cluster top, -S 16k",
    args: [...X, "-S", "16k", "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
  },
  {
    name: "1 MiB clusters",
    args: ["-o", "extended_l2=on,cluster_size=1M", "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
  },
];

Deno.test(
  { name: "convert -B with extended L2 entries: subclusters as qemu-img's", ignore: !ready },
  async (t) => {
    await withTempDir(
      "instar-convert-bx-",
      (root) =>
        convertQcow2Steps(t, root, MAKE, CASES, async (caseArgs) => {
          // compareIn removes its targets: the L2 entries from a second pair.
          const args = ["convert", "-O", "qcow2", ...caseArgs, "l2.qcow2"];
          assertEquals((await qemuImg(args, `${root}/q`)).code, 0);
          assertEquals((await instarHere(args, `${root}/i`)).code, 0);
          assertEquals(await l2Entries(`${root}/i/l2.qcow2`), await l2Entries(`${root}/q/l2.qcow2`));
          for (const d of ["q", "i"]) await Deno.remove(`${root}/${d}/l2.qcow2`);
        }),
    );
  },
);
