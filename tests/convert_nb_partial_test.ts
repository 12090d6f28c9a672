// convert -n -B BACKING -O qcow2 where the source's top layer (4 KiB
// clusters) writes only part of a target cluster (64 KiB or 1 MiB): into a
// cluster holding data qemu writes the top's bytes (data, and zeroes through
// its write-zeroes fallback) in place and the rest keeps its bytes; an
// unallocated or zero cluster is allocated by a data write (the rest reads
// zeroes) or stays/becomes a zero cluster when only zeroes reach it
// (lib/convert/top_ranges.ts restrictOpsWithPieces, lib/cli/convert_into_qcow2.ts
// partialWrites). The same command runs through qemu-img and instar on copies
// of the same files: stdout, stderr and exit code must match, and the targets
// must be byte-identical (cmp). Zero-reading top data runs across a target
// cluster boundary, zero clusters with an allocation, compressed clusters and
// clusters a snapshot shares: tests/convert_nb_more_test.ts.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// base 4 MiB under a 6 MiB top with 4 KiB clusters: data, zeroes (two
// pieces in one target cluster), data of zeroes, data past the base's end.
const CHAIN = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 3M"),
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 6M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 1M 4k",
    "write -z 1028k 4k",
    "write -P 0 2M 8k",
    "write -P 3 3M 4k",
    "write -P 4 5M 12k",
  ),
];
// A target full of data, or data in its first 512 KiB and a zero cluster at 1 MiB (the rest unallocated).
const FULL = ["write -P 9 0 6M"], SOME = ["write -P 9 0 512k", "write -z 1M 64k"];
const target = (opts: string, writes: string[]) => [
  `qemu-img create -q -f qcow2 ${opts} out.qcow2 6M`,
  io("out.qcow2", ...writes),
];

const CASES: { name: string; opts: string; writes: string[]; args: string[] }[] = [
  { name: "64 KiB target clusters holding data", opts: "", writes: FULL, args: [] },
  { name: "holding data, -S 0", opts: "", writes: FULL, args: ["-S", "0"] },
  { name: "holding data, compat=0.10", opts: "-o compat=0.10", writes: FULL, args: [] },
  { name: "unallocated and zero target clusters", opts: "", writes: SOME, args: [] },
  { name: "unallocated and zero, -S 0", opts: "", writes: SOME, args: ["-S", "0"] },
  { name: "unallocated and zero, -S 8k", opts: "", writes: SOME, args: ["-S", "8k"] },
  { name: "unallocated, compat=0.10", opts: "-o compat=0.10", writes: SOME, args: [] },
  { name: "unallocated 1 MiB target clusters", opts: "-o cluster_size=1M", writes: SOME, args: [] },
];

async function both(root: string, make: string[], args: string[]) {
  const q = `${root}/q`, i = `${root}/i`;
  await Deno.mkdir(q);
  for (const l of make) await sh(q, "sh", "-c", l);
  await sh(root, "sh", "-c", "cp -a q i");
  const want = await qemuImg(["convert", ...args], q);
  const got = await instarHere(["convert", ...args], i);
  return { want, got, q, i };
}

Deno.test({ name: "convert -n -B: target clusters partly written", ignore: !ready }, async (t) => {
  for (const c of CASES) {
    await t.step(c.name, async () => {
      await withTempDir("instar-convert-nbp-", async (root) => {
        const args = ["-n", ...c.args, "-B", "base.qcow2", "-O", "qcow2", "top.qcow2", "out.qcow2"];
        const { want, got } = await both(root, [...CHAIN, ...target(c.opts, c.writes)], args);
        assertEquals(got, asInstar(want));
        assertEquals(want.code, 0, want.stderr);
        await sh(root, "cmp", "q/out.qcow2", "i/out.qcow2");
        const chk = await qemuImg(["check", "out.qcow2"], `${root}/i`);
        assert(chk.code === 0, chk.stdout + chk.stderr);
      });
    });
  }
});
