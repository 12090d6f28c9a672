// convert -n -B BACKING -O qcow2 where the source's top layer (4 KiB
// clusters) writes only part of a target cluster (64 KiB or 1 MiB) that
// holds data: qemu writes the top's bytes (data, and zeroes through its
// write-zeroes fallback) in place and the rest of the cluster keeps its
// bytes; instar copies just those ranges (lib/convert/top_ranges.ts
// restrictOpsWithPieces). The same command runs through qemu-img and instar
// on copies of the same files: stdout, stderr and exit code must match, and
// the targets must be byte-identical (cmp). A partly written cluster that
// holds no data (qemu would allocate it) stays refused, leaving the target as it was.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// base 4 MiB under a 6 MiB top with 4 KiB clusters: data, zeroes, written
// zeroes, data past the base's end, each a few KiB.
const CHAIN = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 3M"),
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 6M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 1M 4k",
    "write -P 0 2M 8k",
    "write -P 3 3M 4k",
    "write -P 4 5M 12k",
  ),
];
const target = (opts: string) => [
  `qemu-img create -q -f qcow2 ${opts} out.qcow2 6M`,
  io("out.qcow2", "write -P 9 0 6M"),
];

const CASES: { name: string; opts: string; args: string[] }[] = [
  { name: "64 KiB target clusters", opts: "", args: [] },
  { name: "-S 0", opts: "", args: ["-S", "0"] },
  { name: "compat=0.10 target", opts: "-o compat=0.10", args: [] },
  { name: "1 MiB target clusters", opts: "-o cluster_size=1M", args: [] },
  { name: "--target-is-zero", opts: "", args: ["--target-is-zero"] },
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

Deno.test({ name: "convert -n -B: target clusters partly written, in place", ignore: !ready }, async (t) => {
  for (const c of CASES) {
    await t.step(c.name, async () => {
      await withTempDir("instar-convert-nbp-", async (root) => {
        const args = ["-n", ...c.args, "-B", "base.qcow2", "-O", "qcow2", "top.qcow2", "out.qcow2"];
        const { want, got } = await both(root, [...CHAIN, ...target(c.opts)], args);
        assertEquals(got, asInstar(want));
        assertEquals(want.code, 0, want.stderr);
        await sh(root, "cmp", "q/out.qcow2", "i/out.qcow2");
        const chk = await qemuImg(["check", "out.qcow2"], `${root}/i`);
        assert(chk.code === 0, chk.stdout + chk.stderr);
      });
    });
  }
});

Deno.test(
  { name: "convert -n -B: a partly written cluster without data is refused", ignore: !ready },
  async () => {
    await withTempDir("instar-convert-nbp-", async (root) => {
      // Only the first MiB of the target holds data; the top writes part of the cluster at 1 MiB.
      const make = [
        ...CHAIN,
        "qemu-img create -q -f qcow2 out.qcow2 6M",
        io("out.qcow2", "write -P 9 0 1M"),
        "cp out.qcow2 orig.qcow2",
      ];
      const args = ["-n", "-B", "base.qcow2", "-O", "qcow2", "top.qcow2", "out.qcow2"];
      const { want, got, i } = await both(root, make, args);
      assertEquals(want.code, 0, want.stderr);
      assertEquals(got.code, 1);
      assert(
        /writes only part of cluster 16 of the target \(-n -B\), which holds no data/.test(got.stderr),
        got.stderr,
      );
      // Nothing was written: the target is still the copy made before.
      await sh(i, "cmp", "out.qcow2", "orig.qcow2");
    });
  },
);
