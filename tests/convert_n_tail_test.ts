// convert -n -O qcow2 with a source that ends inside a cluster of a larger
// target (issue 14): qemu-img 7.2 writes up to the source's end and keeps
// the rest of that cluster as the target read it (copy-on-write from the
// old cluster, zeroes, a compressed cluster's bytes). The same source and
// target in two directories, converted by qemu-img and by instar: stdout,
// stderr, exit code and the target's bytes must match, `qemu-img check` clean.
import { runBoth } from "./support/both_tools.ts";
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { tailOps } from "../lib/convert/tail_cluster.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** A raw source of 1,000,000 bytes (its last 64 KiB cluster ends at 1 MiB): data up to its end. */
const RAW = [
  "truncate -s 1000000 src.raw",
  io("-f raw src.raw", "write -P 5 900000 100000", "write -P 6 0 4k"),
];
/** A 2 MiB target with data across the source's last cluster. */
const DST = (opts = "") => [
  `qemu-img create -q -f qcow2 ${opts} dst.qcow2 2M`,
  io("dst.qcow2", "write -P 7 0 64k", "write -P 9 960k 128k"),
];
const N = (...more: string[]) => ["convert", "-n", ...more, "-O", "qcow2"];
const RAWARGS = [...N("-f", "raw"), "src.raw", "dst.qcow2"];

const CASES: { name: string; make: string[]; args: string[] }[] = [
  { name: "raw source, data in the last cluster", make: [...RAW, ...DST()], args: RAWARGS },
  {
    name: "-S 0",
    make: [...RAW, ...DST()],
    args: [...N("-f", "raw", "-S", "0"), "src.raw", "dst.qcow2"],
  },
  {
    name: "the source's tail reads as zeroes (write-zeroes into a data cluster)",
    make: ["truncate -s 1000000 src.raw", io("-f raw src.raw", "write -P 5 0 900000"), ...DST()],
    args: RAWARGS,
  },
  {
    name: "a zero cluster there (with and without an allocation)",
    make: [
      ...RAW,
      "qemu-img create -q -f qcow2 dst.qcow2 2M",
      io("dst.qcow2", "write -P 9 896k 64k", "write -z 896k 64k", "write -z 960k 64k"),
    ],
    args: RAWARGS,
  },
  {
    name: "a zero cluster with an allocation there, the source's tail zero",
    make: [
      "truncate -s 1000000 src.raw",
      io("-f raw src.raw", "write -P 5 0 64k"),
      "qemu-img create -q -f qcow2 dst.qcow2 2M",
      io("dst.qcow2", "write -P 9 896k 192k", "write -z 960k 64k"),
    ],
    args: RAWARGS,
  },
  {
    name: "a compressed target, -S 0",
    make: [
      ...RAW,
      "qemu-img create -q -f qcow2 plain.qcow2 2M",
      io("plain.qcow2", "write -P 9 0 2M"),
      "qemu-img convert -c -O qcow2 plain.qcow2 dst.qcow2",
    ],
    args: [...N("-f", "raw", "-S", "0"), "src.raw", "dst.qcow2"],
  },
  {
    name: "an unallocated cluster there, --target-is-zero",
    make: [...RAW, "qemu-img create -q -f qcow2 dst.qcow2 2M"],
    args: [...N("-f", "raw", "--target-is-zero"), "src.raw", "dst.qcow2"],
  },
  {
    name: "a cluster an internal snapshot shares (copy-on-write of the old bytes)",
    make: [...RAW, ...DST(), "qemu-img snapshot -c s1 dst.qcow2"],
    args: RAWARGS,
  },
  {
    name: "compat=0.10 target with 4 KiB clusters",
    make: [
      ...RAW,
      "qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 dst.qcow2 2M",
      io("dst.qcow2", "write -P 9 960k 128k"),
    ],
    args: RAWARGS,
  },
  {
    name: "a compressed target",
    make: [
      ...RAW,
      "qemu-img create -q -f qcow2 plain.qcow2 2M",
      io("plain.qcow2", "write -P 9 0 2M"),
      "qemu-img convert -c -O qcow2 plain.qcow2 dst.qcow2",
    ],
    args: RAWARGS,
  },
  {
    name: "a vpc source made without force_size",
    make: [
      "qemu-img create -q -f vpc src.vpc 8M",
      io("src.vpc", "write -P 3 7M 1M"),
      "qemu-img create -q -f qcow2 dst.qcow2 9M",
      io("dst.qcow2", "write -P 9 7M 2M"),
    ],
    args: [...N(), "src.vpc", "dst.qcow2"],
  },
  {
    name: "a qcow2 source with 4 KiB clusters",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4096 src.qcow2 1000k",
      io("src.qcow2", "write -P 4 900k 100k", "write -z 800k 100k"),
      ...DST(),
    ],
    args: [...N(), "src.qcow2", "dst.qcow2"],
  },
];

for (const c of CASES) {
  Deno.test(
    { name: `convert -n -O qcow2, source ends inside a cluster: ${c.name}`, ignore: !ready },
    async () => {
      await withTempDir("instar-convert-n-tail-", async (root) => {
        const { q, i, want, got } = await runBoth(root, c.make, c.args);
        assertEquals(got, asInstar(want));
        assertEquals(want.code, 0);
        const same = await exec("cmp", [`${q}/dst.qcow2`, `${i}/dst.qcow2`], root);
        assertEquals(same.code, 0, `dst.qcow2 differs from qemu-img's: ${same.stdout}`);
        const chk = await qemuImg(["check", "dst.qcow2"], i);
        assertEquals(chk.code, 0, chk.stdout + chk.stderr);
        assert(chk.stdout.includes("No errors"), chk.stdout);
      });
    },
  );
}

Deno.test("tailOps: the op reaching the last cluster becomes a partial write of what the requests cover", () => {
  const cs = 65536n, size = 15n * cs + 1000n;
  // A data op over clusters 14-15 from two requests, the second starting inside cluster 15.
  const r = tailOps({
    ops: [{ cluster: 14n, count: 2n, kind: "data" }],
    size,
    clusterBits: 16,
    kind: "normal",
    requests: [{ start: 14n * cs, end: 15n * cs + 512n, kind: "data" }, {
      start: 15n * cs + 512n,
      end: size,
      kind: "data",
    }],
  });
  assertEquals(r.ops, [{
    cluster: 14n,
    count: 2n,
    kind: "data",
    only: [[14n * cs, 15n * cs], [15n * cs, size]],
  }]);
  assertEquals(r.piece, [[15n * cs, size]]);
  // Zeroes into a cluster holding data: whole clusters zeroed, the last written with zeroes.
  const z = tailOps({
    ops: [{ cluster: 13n, count: 3n, kind: "zero" }],
    size,
    clusterBits: 16,
    kind: "compressed",
  });
  assertEquals(z.ops, [
    { cluster: 13n, count: 2n, kind: "zero" },
    { cluster: 15n, count: 1n, kind: "data", only: [[15n * cs, size]] },
  ]);
  // A cluster that reads as zeroes stays a zero write.
  const u = tailOps({
    ops: [{ cluster: 15n, count: 1n, kind: "zero" }],
    size,
    clusterBits: 16,
    kind: "unallocated",
  });
  assertEquals(u.ops, [{ cluster: 15n, count: 1n, kind: "zero" }]);
  assertEquals(u.piece, undefined);
});
