// commit with compressed clusters against qemu-img 7.2: a base made by
// `qemu-img convert -c` (compressed clusters, several sharing a host
// cluster) that the commit overwrites wholly, partly (128 KiB clusters: the
// mirror job writes 64 KiB chunks, qemu's copy-on-write fills the rest from
// the decompressed old data) or zeroes, and overlays with compressed
// clusters (qemu-io write -c) that the commit empties (v2: qcow2_make_empty's
// discard). One copy committed by qemu-img, one by instar: stdout, stderr and
// exit code, the contents (qemu-img compare), `qemu-img check --output=json`
// (but for fragmented-clusters: qemu's mirror job places clusters in an order
// that varies from run to run), `qemu-img info --output=json` (but for the
// disk size), and `cmp` where qemu's layout is deterministic (`exact`).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { commitBoth, type CommitCase, io } from "./support/commit_pair.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** A 2 MiB raw source of patterns (they compress to a few hundred bytes each) and zeroes. */
const SOURCE = [
  "qemu-img create -q -f raw src.raw 2M",
  io(
    "-f raw src.raw",
    "write -P 1 0 512k",
    "write -P 2 512k 256k",
    "write -P 3 1M 512k",
    "write -P 4 1664k 64k",
  ),
];

interface Case extends CommitCase {
  /**
   * Files whose image end is not compared: qemu's mirror job runs requests
   * concurrently, so whether a cluster a compressed cluster's free released
   * is reused before the next allocations varies (five qemu-img runs on this
   * chain gave two image ends); the clusters allocated and the contents agree.
   */
  endVaries?: string[];
}

const CASES: Case[] = [
  {
    name: "compressed base overwritten whole and in part, zeroed; v3 overlay emptied",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 src.raw base.qcow2",
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 7 64k 64k", "write -P 8 200k 4k", "write -z 1M 128k", "write -P 9 1600k 100k"),
    ],
    args: ["commit", "ov.qcow2"],
    files: ["base.qcow2", "ov.qcow2"],
    exact: ["ov.qcow2"],
  },
  {
    name: "128 KiB compressed base clusters: 64 KiB chunks written with copy-on-write (-d)",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 -o cluster_size=131072 src.raw base.qcow2",
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 7 0 64k", "write -P 8 320k 4k", "write -P 9 1088k 8k", "write -z 1536k 64k"),
    ],
    args: ["commit", "-d", "ov.qcow2"],
    files: ["base.qcow2", "ov.qcow2"],
    exact: ["ov.qcow2"],
  },
  {
    name: "compat=0.10 compressed base (zeroes written as data); v2 overlay with compressed clusters emptied",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 -o compat=0.10 src.raw base.qcow2",
      "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -c -P 5 0 64k", "write -c -P 6 64k 64k", "write -P 8 600k 4k", "write -z 1M 64k"),
    ],
    args: ["commit", "ov.qcow2"],
    files: ["base.qcow2", "ov.qcow2"],
    exact: ["ov.qcow2"],
  },
  {
    name: "-b into a 4 KiB-cluster compressed middle layer with 2-bit refcounts (spanning host clusters)",
    make: [
      "qemu-img create -q -f raw src.raw 2M",
      // Text compresses to about a quarter: compressed data often crosses a host cluster boundary.
      "seq 1 300000 | head -c 1048576 > txt && dd if=txt of=src.raw conv=notrunc status=none",
      io("-f raw src.raw", "write -P 3 1M 512k"),
      "qemu-img create -q -f qcow2 low.qcow2 2M",
      io("low.qcow2", "write -P 1 0 2M"),
      "qemu-img convert -c -O qcow2 -o cluster_size=4096,refcount_bits=2 -B low.qcow2 -F qcow2 src.raw mid.qcow2",
      "qemu-img create -q -f qcow2 -o cluster_size=65536 -b mid.qcow2 -F qcow2 top.qcow2 2M",
      io("top.qcow2", "write -P 7 4k 8k", "write -P 8 100k 70k", "write -z 1028k 16k", "write -P 9 1500k 3k"),
    ],
    args: ["commit", "-b", "mid.qcow2", "top.qcow2"],
    files: ["mid.qcow2", "top.qcow2"],
    exact: ["top.qcow2"],
    endVaries: ["mid.qcow2"],
  },
  {
    name: "v2 overlay whose compressed clusters share a host cluster, emptied (both files exact)",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 2M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io(
        "ov.qcow2",
        "write -c -P 5 0 64k",
        "write -c -P 6 64k 64k",
        "write -c -P 7 512k 128k",
        "write -P 8 1M 64k",
      ),
    ],
    args: ["commit", "ov.qcow2"],
    files: ["base.qcow2", "ov.qcow2"],
    exact: ["base.qcow2", "ov.qcow2"],
  },
];

const checkJson = async (f: string, d: string, endVaries = false) => {
  const o = await qemuImg(["check", "--output=json", f], d);
  const j = JSON.parse(o.stdout);
  delete j.filename;
  delete j["fragmented-clusters"];
  if (endVaries) delete j["image-end-offset"];
  return { code: o.code, j };
};

const infoJson = async (f: string, d: string) => {
  const j = JSON.parse((await qemuImg(["info", "-U", "--output=json", f], d)).stdout);
  delete j["actual-size"];
  delete j.filename;
  delete j["backing-filename-full"];
  return j;
};

for (const c of CASES) {
  Deno.test({ name: `commit (compressed): ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-commit-c-", async (root) => {
      const { q, i, want, got } = await commitBoth(root, c, async (q) => {
        // The base really has compressed clusters sharing host clusters (or the overlay has).
        const pre = await checkJson(c.files[c.files.length - 1], q);
        const preBase = await checkJson(c.files[0], q);
        assert((pre.j["compressed-clusters"] ?? 0) + (preBase.j["compressed-clusters"] ?? 0) >= 2);
      });
      assertEquals(got, asInstar(want));
      for (const f of c.files) {
        const cmp = await qemuImg(["compare", "-f", "qcow2", "-F", "qcow2", `q/${f}`, `i/${f}`], root);
        assertEquals(cmp.stdout, "Images are identical.\n", `${f}: ${cmp.stdout}${cmp.stderr}`);
        const ends = c.endVaries?.includes(f);
        assertEquals(
          await checkJson(f, i, ends),
          await checkJson(f, q, ends),
          `${f}: qemu-img check --output=json`,
        );
        assertEquals((await checkJson(f, i)).code, 0);
        assertEquals(await infoJson(f, i), await infoJson(f, q), `${f}: qemu-img info --output=json`);
        if (c.exact?.includes(f)) {
          const same = await exec("cmp", [`q/${f}`, `i/${f}`], root);
          assertEquals(same.code, 0, `${f} differs from qemu-img's: ${same.stdout}`);
        }
      }
    });
  });
}
