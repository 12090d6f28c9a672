// Safe rebase and `convert -n -O qcow2` into qcow2 images with compressed
// clusters, against qemu-img 7.2. Rebase: an overlay made by `qemu-img
// convert -c` (compressed clusters sharing host clusters, holes left
// unallocated) or with qemu-io `write -c`; qemu writes only where the
// overlay allocates nothing, so its compressed clusters stay, and the new
// clusters go where qemu's first fit puts them. convert -n: a target made by
// `qemu-img convert -c` that the source overwrites (a new cluster, the old
// compressed one freed) and zeroes (a zero cluster, or discarded in
// compat=0.10; host clusters whose count reaches 0 are discarded, as qemu's
// unmap does). One copy by qemu-img, one by instar: stdout, stderr and exit
// code, the contents (qemu-img compare), `qemu-img check --output=json`, `qemu-img
// info --output=json` (but for the disk size), and `cmp` of the written file.
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** A 2 MiB raw file of patterns (a few hundred bytes each compressed) and holes. */
const SOURCE = [
  "qemu-img create -q -f raw src.raw 2M",
  io(
    "-f raw src.raw",
    "write -P 1 0 512k",
    "write -P 2 512k 192k",
    "write -P 3 1M 384k",
    "write -P 4 1664k 64k",
  ),
];

/** Text compresses to about a quarter: with 4 KiB clusters compressed data crosses host clusters. */
const TEXT = "seq 1 300000 | head -c 1048576 > txt && dd if=txt of=src.raw conv=notrunc status=none";

interface Case {
  name: string;
  make: string[];
  args: string[];
  /** The file the command writes (compared with cmp). */
  file: string;
}

const CASES: Case[] = [
  {
    name: "rebase onto a new backing file: overlay from convert -c with holes",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 src.raw ov.qcow2",
      "qemu-img create -q -f qcow2 old.qcow2 2M",
      io("old.qcow2", "write -P 5 0 2M"),
      "qemu-img create -q -f qcow2 new.qcow2 2M",
      io("new.qcow2", "write -P 5 0 1M", "write -P 6 1536k 64k"),
      "qemu-img rebase -u -b old.qcow2 -F qcow2 ov.qcow2",
    ],
    args: ["rebase", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"],
    file: "ov.qcow2",
  },
  {
    name: 'rebase -b "": compat=0.10 overlay, 4 KiB clusters, compressed data crossing host clusters',
    make: [
      "qemu-img create -q -f raw src.raw 2M",
      TEXT,
      io("-f raw src.raw", "write -z 256k 128k", "write -P 3 1536k 128k"),
      "qemu-img convert -c -O qcow2 -o compat=0.10,cluster_size=4096 src.raw ov.qcow2",
      "qemu-img create -q -f qcow2 old.qcow2 2M",
      io("old.qcow2", "write -P 5 0 2M"),
      "qemu-img rebase -u -b old.qcow2 -F qcow2 ov.qcow2",
    ],
    args: ["rebase", "-b", "", "ov.qcow2"],
    file: "ov.qcow2",
  },
  {
    name: "rebase: overlay with qemu-io write -c clusters sharing a host cluster",
    make: [
      "qemu-img create -q -f qcow2 old.qcow2 2M",
      io("old.qcow2", "write -P 1 0 2M"),
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2 2M",
      io(
        "ov.qcow2",
        "write -c -P 5 0 64k",
        "write -c -P 6 64k 64k",
        "write -c -P 7 512k 128k",
        "write -P 8 1M 64k",
      ),
      "qemu-img create -q -f raw new.raw 2M",
    ],
    args: ["rebase", "-b", "new.raw", "-F", "raw", "ov.qcow2"],
    file: "ov.qcow2",
  },
  {
    name: "convert -n over a compressed target: overwritten, zeroed, kept",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 src.raw t.qcow2",
      "qemu-img create -q -f qcow2 in.qcow2 2M",
      io("in.qcow2", "write -P 7 64k 128k", "write -P 8 700k 4k", "write -P 1 0 64k", "write -P 9 1088k 64k"),
    ],
    args: ["convert", "-n", "-O", "qcow2", "in.qcow2", "t.qcow2"],
    file: "t.qcow2",
  },
  {
    name: "convert -n -S 0 over a compressed target with 4 KiB clusters and 2-bit refcounts",
    make: [
      "qemu-img create -q -f raw src.raw 2M",
      TEXT,
      io("-f raw src.raw", "write -P 3 1M 512k"),
      "qemu-img convert -c -O qcow2 -o cluster_size=4096,refcount_bits=2 src.raw t.qcow2",
      "qemu-img create -q -f raw in.raw 2M",
      io("-f raw in.raw", "write -P 9 8k 12k", "write -P 6 1040k 100k"),
    ],
    args: ["convert", "-n", "-S", "0", "-f", "raw", "-O", "qcow2", "in.raw", "t.qcow2"],
    file: "t.qcow2",
  },
  {
    name: "convert -n -S 0 over a compat=0.10 compressed target (one write per block-status run)",
    make: [
      "qemu-img create -q -f raw src.raw 2M",
      TEXT,
      "qemu-img convert -c -O qcow2 -o compat=0.10,cluster_size=4096 src.raw t.qcow2",
      "qemu-img create -q -f raw in.raw 2M",
      io("-f raw in.raw", "write -P 9 8k 12k", "write -P 6 1040k 100k"),
    ],
    args: ["convert", "-n", "-S", "0", "-f", "raw", "-O", "qcow2", "in.raw", "t.qcow2"],
    file: "t.qcow2",
  },
  {
    name: "convert -n -S 0 from a qcow2 source whose clusters lie out of order",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 src.raw t.qcow2",
      "qemu-img create -q -f qcow2 in.qcow2 2M",
      io("in.qcow2", "write -P 7 256k 64k", "write -P 8 128k 64k", "write -P 9 0 64k", "write -z 1M 128k"),
    ],
    args: ["convert", "-n", "-S", "0", "-O", "qcow2", "in.qcow2", "t.qcow2"],
    file: "t.qcow2",
  },
  {
    name: "convert -n over 128 KiB compressed clusters, source clusters part data, part zeroes",
    make: [
      ...SOURCE,
      "qemu-img convert -c -O qcow2 -o cluster_size=131072 src.raw t.qcow2",
      // The source's block-status runs end on the target's clusters (instar's unit).
      "qemu-img create -q -f qcow2 -o cluster_size=131072 in.qcow2 2M",
      io(
        "in.qcow2",
        "write -P 7 64k 64k",
        "write -P 8 384k 4k",
        "write -z 640k 128k",
        "write -P 9 1088k 200k",
      ),
    ],
    args: ["convert", "-n", "-O", "qcow2", "in.qcow2", "t.qcow2"],
    file: "t.qcow2",
  },
  {
    name: "convert -n into a compat=0.10 compressed target (zeroes discard the clusters)",
    make: [
      "qemu-img create -q -f raw src.raw 2M",
      TEXT,
      io("-f raw src.raw", "write -P 3 1M 512k"),
      "qemu-img convert -c -O qcow2 -o compat=0.10,cluster_size=4096 src.raw t.qcow2",
      "qemu-img create -q -f raw in.raw 2M",
      io("-f raw in.raw", "write -P 9 8k 12k", "write -P 6 1040k 100k"),
    ],
    args: ["convert", "-n", "-f", "raw", "-O", "qcow2", "in.raw", "t.qcow2"],
    file: "t.qcow2",
  },
];

async function make(dir: string, lines: string[]) {
  for (const l of lines) await sh(dir, "sh", "-c", l);
}

const checkJson = async (f: string, d: string) => {
  const o = await qemuImg(["check", "--output=json", f], d);
  const j = JSON.parse(o.stdout);
  delete j.filename;
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
  Deno.test({ name: `compressed target: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-ctarget-", async (root) => {
      const q = `${root}/q`, i = `${root}/i`;
      await Deno.mkdir(q);
      await make(q, c.make);
      const pre = await checkJson(c.file, q);
      assert((pre.j["compressed-clusters"] ?? 0) >= 2, "the image has compressed clusters");
      await sh(root, "cp", "-a", "q", "i");
      const want = await qemuImg(c.args, q);
      const got = await instarHere(c.args, i);
      assertEquals(got, asInstar(want));
      const f = c.file;
      const cmp = await qemuImg(["compare", "-U", `q/${f}`, `i/${f}`], root);
      assertEquals(cmp.stdout, "Images are identical.\n", `${f}: ${cmp.stdout}${cmp.stderr}`);
      const ic = await checkJson(f, i);
      assertEquals(ic, await checkJson(f, q), `${f}: qemu-img check --output=json`);
      assertEquals(ic.code, 0);
      assertEquals(await infoJson(f, i), await infoJson(f, q), `${f}: qemu-img info --output=json`);
      const same = await exec("cmp", [`q/${f}`, `i/${f}`], root);
      assertEquals(same.code, 0, `${f} differs from qemu-img's: ${same.stdout}`);
    });
  });
}
