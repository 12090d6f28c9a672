// `bitmap` on an image whose persistent bitmap has bits set past its end,
// against qemu-img 7.2 (lib/formats/qcow2/bitmap_tail.ts): qemu loads and
// stores whole 64-bit words, so the bits past the end inside the word
// holding the end stay and the rest of that cluster is stored zero; a
// cluster whose only set bits lie past the end is dropped. qemu never sets
// such bits itself: each image is made by qemu-img/qemu-io and then one
// bitmap data cluster is edited (bits set past the end, in the last word and
// after it). qemu-img runs on one copy, instar on the other: stdout, stderr
// and exit code, and the file byte for byte. `--merge` with such bitmaps:
// tests/bitmap_merge_tail_test.ts.
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { editBitmap } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  make: string[];
  /** The edit: table entry, bits set, bits cleared. */
  edit: [number, number[], number[]];
  args: string[];
}

const CASES: Case[] = [
  {
    name: "64 KiB clusters: bits past the end in the last word and after it, --add",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1M",
      "qemu-img bitmap --add t.qcow2 b",
      io("t.qcow2", "write -P 1 0 64k", "write -P 1 960k 64k"),
    ],
    edit: [0, [20, 63, 64, 100, 8000], []],
    args: ["bitmap", "--add", "t.qcow2", "c"],
  },
  {
    name: "--disable of the bitmap itself, a size not a multiple of the granularity",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1000k",
      "qemu-img bitmap --add -g 8k t.qcow2 b",
      io("t.qcow2", "write -P 1 992k 8k"),
    ],
    edit: [0, [125, 127, 130], []],
    args: ["bitmap", "--disable", "t.qcow2", "b"],
  },
  {
    name: "512 B clusters: the last cluster's only set bits past the end (dropped), --enable",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=512 t.qcow2 2097664",
      "qemu-img bitmap --add -g 512 t.qcow2 b",
      io("t.qcow2", "write -P 1 0 4k", "write -P 1 2097152 512"),
      "qemu-img bitmap --disable t.qcow2 b",
    ],
    edit: [1, [3, 40], [0]],
    args: ["bitmap", "--enable", "t.qcow2", "b"],
  },
  {
    name: "--clear drops every bit",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1M",
      "qemu-img bitmap --add t.qcow2 b",
      io("t.qcow2", "write -P 1 960k 64k"),
    ],
    edit: [0, [17, 70], []],
    args: ["bitmap", "--clear", "t.qcow2", "b"],
  },
];

for (const c of CASES) {
  Deno.test({ name: `bitmap with bits past the end: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-bmtail-", async (root) => {
      await Deno.mkdir(`${root}/q`);
      for (const l of c.make) await sh(`${root}/q`, "sh", "-c", l);
      const [k, set, clear] = c.edit;
      await editBitmap(`${root}/q/t.qcow2`, { bm: 0, k, set, clear });
      await sh(root, "cp", "-a", "q", "i");
      const want = await qemuImg(c.args, `${root}/q`);
      const got = await instarHere(c.args, `${root}/i`);
      assertEquals(got, asInstar(want));
      assertEquals(want.code, 0, want.stderr);
      const r = await exec("cmp", ["q/t.qcow2", "i/t.qcow2"], root);
      assertEquals(r.code, 0, `t.qcow2 differs from qemu-img's: ${r.stdout}`);
      assertEquals((await qemuImg(["check", "t.qcow2"], `${root}/i`)).code, 0);
    });
  });
}

/** Sets the first bitmap's directory entry table size (a size other than the image's needs). */
async function setTableSize(path: string, n: number) {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const h = new Uint8Array(4096);
    for (let o = 0; o < h.length;) o += (await f.read(h.subarray(o)))!;
    const dv = new DataView(h.buffer);
    let dir = -1n;
    for (let at = dv.getUint32(100); at + 8 <= 4096;) {
      const type = dv.getUint32(at), len = dv.getUint32(at + 4);
      if (type === 0) break;
      if (type === 0x23852875) dir = dv.getBigUint64(at + 24);
      at += 8 + ((len + 7) & ~7);
    }
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n);
    await f.seek(Number(dir) + 8, Deno.SeekMode.Start);
    await f.write(b);
  } finally {
    f.close();
  }
}

Deno.test({
  name: "a bitmap table sized for another image size: qemu's open failure, naming the bitmap",
  ignore: !ready,
}, async (t) => {
  await withTempDir("instar-bmtable-", async (root) => {
    await sh(root, "qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "1M");
    await sh(root, "qemu-img", "bitmap", "--add", "t.qcow2", "bm1");
    await sh(root, "sh", "-c", io("t.qcow2", "write -P 1 0 64k"));
    for (const n of [2, 0]) {
      await setTableSize(`${root}/t.qcow2`, n);
      for (const args of [["info", "t.qcow2"], ["bitmap", "--add", "t.qcow2", "c"], ["check", "t.qcow2"]]) {
        await t.step(`table size ${n}: ${args.join(" ")}`, async () => {
          const want = await qemuImg(args, root);
          assertEquals(await instarHere(args, root), asInstar(want));
          assertEquals(want.code !== 0, true);
        });
      }
    }
  });
});
