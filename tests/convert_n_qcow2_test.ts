// convert -n -O qcow2 (writing into an existing qcow2 image) against qemu-img
// 7.2: the same source and target in two directories, converted by qemu-img
// and by instar. stdout, stderr, the exit code and the target's bytes must
// be the same (qemu writes in guest order here), `qemu-img check` clean.
import { runBoth } from "./support/both_tools.ts";
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const SRC = [
  "qemu-img create -q -f qcow2 src.qcow2 4M",
  io("src.qcow2", "write -P 1 0 1M", "write -z 1M 64k", "write -P 0 2M 64k", "write -P 3 3M 4k"),
];
const DST = (opts = "", size = "4M") => [
  `qemu-img create -q -f qcow2 ${opts} dst.qcow2 ${size}`,
  size === "4M"
    ? io("dst.qcow2", "write -P 9 0 128k", "write -P 9 2M 256k", "write -P 9 1M 64k")
    : io("dst.qcow2", "write -P 9 0 128k", "write -P 9 512k 64k"),
];

const CASES: { name: string; make: string[]; args: string[] }[] = [
  {
    name: "over data, zero clusters and zero bytes (freed clusters reused and discarded)",
    make: [...SRC, ...DST()],
    args: ["convert", "-n", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
  },
  {
    name: "-S 0 (every cluster written as data, --target-is-zero or not)",
    make: [...SRC, ...DST()],
    args: ["convert", "-n", "-S", "0", "--target-is-zero", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
  },
  {
    name: "--target-is-zero into a new image, larger than the source",
    make: [...SRC, "qemu-img create -q -f qcow2 dst.qcow2 8M"],
    args: ["convert", "-n", "--target-is-zero", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
  },
  {
    name: "compat=0.10 target with 4 KiB clusters, raw source, -p",
    make: [
      "qemu-img create -q -f raw src.raw 2M",
      io("-f raw src.raw", "write -P 5 64k 300k", "write -P 6 1M 4k"),
      ...DST("-o compat=0.10,cluster_size=4096", "2M"),
    ],
    args: ["convert", "-p", "-n", "-f", "raw", "-O", "qcow2", "src.raw", "dst.qcow2"],
  },
  {
    name: "compressed source clusters",
    make: [
      "qemu-img create -q -f qcow2 plain.qcow2 4M",
      io("plain.qcow2", "write -P 4 0 2M"),
      "qemu-img convert -c -O qcow2 plain.qcow2 src.qcow2",
      ...DST(),
    ],
    args: ["convert", "-n", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
  },
  {
    name: "a target smaller than the source",
    make: [...SRC, ...DST("", "1M")],
    args: ["convert", "-n", "-O", "qcow2", "src.qcow2", "dst.qcow2"],
  },
];

for (const c of CASES) {
  Deno.test({ name: `convert -n -O qcow2: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-convert-n-", async (root) => {
      const { q, i, want, got } = await runBoth(root, c.make, c.args);
      if (c.args.includes("-p")) {
        // The intermediate percentages follow qemu's chunking (docs/quirks.md): first and last agree.
        assert(got.stdout.startsWith("    (0.00/100%)\r") && want.stdout.startsWith("    (0.00/100%)\r"));
        assert(got.stdout.endsWith("    (100.00/100%)\r\n") && want.stdout.endsWith("    (100.00/100%)\r\n"));
        got.stdout = want.stdout;
      }
      assertEquals(got, asInstar(want));
      const a = await Deno.readFile(`${q}/dst.qcow2`), b = await Deno.readFile(`${i}/dst.qcow2`);
      const at = a.findIndex((v, k) => v !== b[k]);
      assert(
        a.length === b.length && at < 0,
        `dst.qcow2 differs from qemu-img's (${a.length} vs ${b.length}, first at ${at})`,
      );
      const chk = await qemuImg(["check", "dst.qcow2"], i);
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
    });
  });
}
