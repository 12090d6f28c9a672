// resize and commit of qcow2 images whose bitmaps have all-ones table
// entries (value 1) or bits set past their end, against qemu-img 7.2: qemu
// loads them (all-ones entries as ones up to the end of the word holding the
// end, the bits past the end in that word too), truncates or dirties them,
// and stores them anew as data clusters (lib/formats/qcow2/bitmap_tail.ts,
// resize_bitmaps.ts, bitmaps_reopen.ts). qemu never writes either itself:
// each image is made by qemu-img/qemu-io, then edited byte-wise
// (tests/support/qcow2_edit.ts). resize: qemu-img on one copy, instar on
// the other, the files compared byte for byte; commit: as
// tests/support/commit_bitmaps.ts compares (contents, info, check, dirty maps).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { haveNbd } from "./support/dirty_map.ts";
import { type BitmapEdit as Edit, editBitmap as edit } from "./support/qcow2_edit.ts";
import { io, runCommitBitmapCase } from "./support/commit_bitmaps.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface ResizeCase {
  name: string;
  make: string[];
  edits: Edit[];
  /** Each resize runs on fresh copies of the edited image. */
  sizes: string[];
  /** A shrink instar refuses (nothing written). */
  refused?: string;
}

const RESIZE: ResizeCase[] = [
  {
    // 1000 KiB at 8 KiB granularity: 125 bits, the end inside the second word.
    name: "bits past the end (data cluster) and an all-ones entry holding the end",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1000k",
      "qemu-img bitmap --add -g 8k t.qcow2 a",
      io("t.qcow2", "write -P 1 0 8k", "write -P 1 992k 8k"),
      "qemu-img bitmap --add -g 8k t.qcow2 ones",
      "qemu-img bitmap --add -g 8k t.qcow2 c",
      io("t.qcow2", "write -P 2 64k 8k"),
    ],
    edits: [{ bm: 0, k: 0, set: [126, 200] }, { bm: 1, k: 0, allOnes: true }, { bm: 2, k: 0, set: [127] }],
    // grow inside the end's word, past it, shrink to another word
    sizes: ["1024k", "+1M", "400k", "8k"],
    refused: "600k",
  },
  {
    // 4 KiB clusters, 512 B granularity: 40004 bits over two table entries.
    name: "all-ones entries before and holding the end, with data clusters",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4k t.qcow2 20002k",
      "qemu-img bitmap --add -g 512 t.qcow2 ones",
      "qemu-img bitmap --add -g 512 t.qcow2 mix",
      io("t.qcow2", "write -P 1 1M 4k"),
      "qemu-img bitmap --add -g 512 t.qcow2 last",
      io("t.qcow2", "write -P 1 19M 4k"),
      "qemu-img bitmap --disable t.qcow2 last",
    ],
    edits: [
      { bm: 0, k: 0, allOnes: true },
      { bm: 0, k: 1, allOnes: true },
      { bm: 1, k: 1, allOnes: true },
      { bm: 2, k: 0, allOnes: true },
      { bm: 2, k: 1, set: [40004 - 32768, 7300] },
    ],
    sizes: ["+1M", "16000k", "18001k", "17000k"],
  },
];

for (const c of RESIZE) {
  Deno.test({ name: `resize with ${c.name} as qemu-img does, byte for byte`, ignore: !ready }, async () => {
    await withTempDir("instar-bmtail-rs-", async (dir) => {
      for (const line of c.make) await sh(dir, "sh", "-c", line);
      for (const e of c.edits) await edit(`${dir}/t.qcow2`, e);
      for (const size of c.sizes) {
        const args = [
          "resize",
          ...(size.startsWith("1") || size.startsWith("4") || size.startsWith("8") ? ["--shrink"] : []),
          "x.qcow2",
          size,
        ];
        await Deno.copyFile(`${dir}/t.qcow2`, `${dir}/x.qcow2`);
        const q = await qemuImg(args, dir);
        await Deno.rename(`${dir}/x.qcow2`, `${dir}/q.qcow2`);
        await Deno.copyFile(`${dir}/t.qcow2`, `${dir}/x.qcow2`);
        const i = await instarHere(args, dir);
        assertEquals(q.code, 0, q.stderr);
        assertEquals(i, asInstar(q), size);
        const cmp = await exec("cmp", ["q.qcow2", "x.qcow2"], dir);
        assertEquals(cmp.code, 0, `${c.name} ${size}: files differ: ${cmp.stdout}`);
      }
      if (c.refused) {
        // A shrink keeping the end in the old end's word keeps the bits past the old end
        // (hbitmap_truncate): instar refuses it and writes nothing.
        await Deno.copyFile(`${dir}/t.qcow2`, `${dir}/x.qcow2`);
        const i = await instarHere(["resize", "--shrink", "x.qcow2", c.refused], dir);
        assertEquals(i.code, 1, i.stderr);
        assertEquals((await exec("cmp", ["t.qcow2", "x.qcow2"], dir)).code, 0, "refused, yet written");
      }
    });
  });
}

const BASE = [
  "qemu-img create -q -f qcow2 base.qcow2 1000k",
  "qemu-img bitmap --add -g 8k base.qcow2 on",
  "qemu-img bitmap --add -g 8k base.qcow2 off",
  io("base.qcow2", "write -P 1 0 8k", "write -P 1 992k 8k"),
  "qemu-img bitmap --disable base.qcow2 off",
  "qemu-img bitmap --add -g 8k base.qcow2 ones",
  "qemu-img bitmap --add -g 16k base.qcow2 ones_off",
  "qemu-img bitmap --disable base.qcow2 ones_off",
  "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 1000k",
  io("ov.qcow2", "write -P 3 128k 64k", "write -P 5 984k 16k"),
];

Deno.test({
  name: "commit into a base whose bitmaps have all-ones entries and bits past the end, as qemu-img does",
  ignore: !ready || !haveNbd,
}, async () => {
  await runCommitBitmapCase({
    name: "tail bits and all-ones entries, enabled and disabled",
    make: BASE,
    prepare: async (dir) => {
      for (
        const e of [
          { bm: 0, k: 0, set: [126, 127] },
          { bm: 1, k: 0, set: [125, 300] },
          { bm: 2, k: 0, allOnes: true },
          { bm: 3, k: 0, allOnes: true },
        ]
      ) await edit(`${dir}/base.qcow2`, e);
    },
    runs: [["commit", "-d", "ov.qcow2"], ["commit", "ov.qcow2"]],
    bitmaps: ["on", "off", "ones", "ones_off"],
  });
});
