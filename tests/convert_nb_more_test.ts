// convert -n -B BACKING -O qcow2 where the source's top layer (4 KiB
// clusters) writes only part of 64 KiB target clusters that are zero
// clusters with an allocation, compressed, or shared with an internal
// snapshot, and where a top data run that reads as zeroes crosses a target
// cluster boundary (qemu-img's requests, -S rounding included:
// lib/convert/nb_requests.ts; the writes: lib/cli/convert_into_qcow2.ts
// partialWrites, lib/formats/qcow2/write_plan.ts). The same command runs
// through qemu-img and instar on copies of the same qemu-img-made files:
// stdout, stderr and exit code must match, the targets must be
// byte-identical (cmp) and pass qemu-img check.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, haveQemuImg, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { convertIntoCopies, io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// base: 3 MiB of data. top (4 KiB clusters, 4 MiB) over it, each in its own
// 64 KiB target cluster: data (1), zeroes (16), zeroes then data (32),
// zeroes written as data across the boundary of 48 and 49, and 1 KiB of
// data then zeroes across the boundary of 50 and 51 (-S 128k rounds the
// data request over it: qemu writes zeroes as data into 51).
const SOURCE = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 3M"),
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 4M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 1M 4k",
    "write -z 2M 4k",
    "write -P 4 2056k 4k",
    "write -P 0 3132k 8k",
    "write -P 5 3260k 1k",
    "write -P 0 3261k 7k",
    // The same across 56/57, but the top's two clusters are not contiguous
    // in its file: two block-status runs, so -S 128k rounds nothing into 57.
    "write -P 0 3648k 4k",
    "write -P 5 3644k 1k",
  ),
];

/** A 4 MiB pattern compressed by qemu-img into `name` (`opts`: its -o). */
const compressed = (name: string, opts = "") =>
  `qemu-img create -q -f raw p.raw 4M && ${io("-f raw p.raw", "write -P 9 0 4M")} && ` +
  `qemu-img convert -c -O qcow2 ${opts} p.raw ${name} && rm p.raw`;

// The targets, each made once: unallocated, zero clusters with an
// allocation (preallocated then zeroed), compressed (v3 and compat=0.10),
// and data, zero_alloc and compressed clusters an internal snapshot shares.
const TARGETS: Record<string, string[]> = {
  empty: ["qemu-img create -q -f qcow2 empty.qcow2 4M"],
  zalloc: [
    "qemu-img create -q -f qcow2 zalloc.qcow2 4M",
    io("zalloc.qcow2", "write -P 9 0 4M", "write -z 0 4M"),
  ],
  comp: [compressed("comp.qcow2")],
  comp10: [compressed("comp10.qcow2", "-o compat=0.10")],
  snapdata: [
    "qemu-img create -q -f qcow2 snapdata.qcow2 4M",
    io("snapdata.qcow2", "write -P 9 0 4M"),
    "qemu-img snapshot -c s1 snapdata.qcow2",
  ],
  snapzalloc: [
    "qemu-img create -q -f qcow2 snapzalloc.qcow2 4M",
    io("snapzalloc.qcow2", "write -P 9 0 2M", "write -z 0 2M", "write -P 8 2M 2M"),
    "qemu-img snapshot -c s1 snapzalloc.qcow2",
  ],
  snapcomp: [compressed("snapcomp.qcow2"), "qemu-img snapshot -c s1 snapcomp.qcow2"],
};

const CASES: { name: string; target: string; args: string[] }[] = [
  { name: "zero-reading runs across clusters, unallocated target", target: "empty", args: [] },
  { name: "the same, -S 128k (zeroes rounded into a data request)", target: "empty", args: ["-S", "128k"] },
  { name: "zero clusters with an allocation", target: "zalloc", args: [] },
  { name: "zero clusters with an allocation, -S 0", target: "zalloc", args: ["-S", "0"] },
  { name: "zero clusters with an allocation, -S 128k", target: "zalloc", args: ["-S", "128k"] },
  { name: "compressed clusters", target: "comp", args: [] },
  { name: "compressed clusters, compat=0.10", target: "comp10", args: [] },
  { name: "data clusters a snapshot shares", target: "snapdata", args: [] },
  { name: "zero_alloc and data clusters a snapshot shares", target: "snapzalloc", args: [] },
  { name: "compressed clusters a snapshot shares", target: "snapcomp", args: [] },
];

Deno.test({ name: "convert -n -B: more target clusters partly written", ignore: !ready }, async (t) => {
  await withTempDir("instar-convert-nbm-", async (root) => {
    for (const l of [...SOURCE, ...Object.values(TARGETS).flat()]) await sh(root, "sh", "-c", l);
    for (const c of CASES) {
      await t.step(c.name, async () => {
        const args = [
          "convert",
          "-n",
          ...c.args,
          "-B",
          "base.qcow2",
          "-O",
          "qcow2",
          "top.qcow2",
          "out.qcow2",
        ];
        await convertIntoCopies(root, ["base.qcow2", "top.qcow2"], c.target, args, async () => {
          // The writes changed the target (the case tests something).
          const same = await qemuImg(
            ["compare", "-f", "qcow2", "-F", "qcow2", `${c.target}.qcow2`, "i/out.qcow2"],
            root,
          );
          assertEquals(same.code, 1, same.stdout);
        });
      });
    }
  });
});
