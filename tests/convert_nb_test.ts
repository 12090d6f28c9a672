// convert -n -B BACKING (into an existing target) against qemu-img 7.2: qemu
// creates nothing, so the name is never opened, but only what the source's
// top layer allocates is written (zero clusters as zeroes), plus its
// unallocated runs that start at or past the backing file's end; the rest of
// the target keeps its bytes. The same command runs through qemu-img and
// instar on copies of the same files: stdout, stderr and exit code must
// match, and the targets must be byte-identical (raw and qcow2, v3 and v2).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { io } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// A 4 MiB base under a 6 MiB top: data, a zero cluster, a 4 KiB write, data past the base's end.
const CHAIN = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 3M"),
  "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 6M",
  io("top.qcow2", "write -P 2 512k 1M", "write -z 2M 128k", "write -P 3 3M 4k", "write -P 4 5M 64k"),
];
const targets = (opts: string) => [
  `qemu-img create -q -f qcow2 ${opts} out.qcow2 6M`,
  io("out.qcow2", "write -P 9 0 6M"),
  "qemu-img create -q -f raw out.raw 6M",
  io("-f raw out.raw", "write -P 9 0 6M"),
];

const CASES: { name: string; make: string[]; args: string[]; out: string }[] = [
  {
    name: "qcow2 target: the top's clusters only, zeroes past the backing file's end",
    make: [...CHAIN, ...targets("")],
    args: ["-n", "-B", "base.qcow2", "-O", "qcow2", "top.qcow2", "out.qcow2"],
    out: "out.qcow2",
  },
  {
    name: "raw target, a backing name that does not exist (never opened), no -F",
    make: [...CHAIN, ...targets("")],
    args: ["-n", "-B", "nothere.qcow2", "-O", "raw", "top.qcow2", "out.raw"],
    out: "out.raw",
  },
  {
    name: "compat=0.10 target with 4 KiB clusters",
    make: [...CHAIN, ...targets("-o compat=0.10,cluster_size=4096")],
    args: ["-n", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "out.qcow2"],
    out: "out.qcow2",
  },
  {
    name: "a source without a backing file: the whole disk",
    make: [
      "qemu-img create -q -f qcow2 top.qcow2 6M",
      io("top.qcow2", "write -P 2 512k 1M", "write -z 2M 128k"),
      ...targets(""),
    ],
    args: ["-n", "-B", "x", "-O", "raw", "top.qcow2", "out.raw"],
    out: "out.raw",
  },
];

for (const c of CASES) {
  Deno.test({ name: `convert -n -B: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-convert-nb-", async (root) => {
      const q = `${root}/q`, i = `${root}/i`;
      await Deno.mkdir(q);
      for (const l of c.make) await sh(q, "sh", "-c", l);
      await sh(root, "sh", "-c", "cp -a q i");
      const want = await qemuImg(["convert", ...c.args], q);
      const got = await instarHere(["convert", ...c.args], i);
      assertEquals(got, asInstar(want));
      assertEquals(want.code, 0, want.stderr);
      await sh(root, "cmp", `q/${c.out}`, `i/${c.out}`);
      if (c.out.endsWith(".qcow2")) {
        const chk = await qemuImg(["check", c.out], i);
        assert(chk.code === 0, chk.stdout + chk.stderr);
      }
    });
  });
}
