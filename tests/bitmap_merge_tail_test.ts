// `bitmap --merge` with bitmaps that have bits set past the image's end, and
// bitmaps whose table has all-ones entries (entry value 1), against qemu-img
// 7.2. qemu's hbitmap_merge ORs whole 64-bit words when the granularities
// match, so the bits past the end in the word holding the end come along
// (lib/formats/qcow2/bitmap_tail.ts); an all-ones entry loads as every bit of
// its range set, whole words (hbitmap_deserialize_ones), and is stored as a
// data cluster. qemu never makes either itself: each image is made by
// qemu-img/qemu-io, then one bitmap's data cluster or table entry is edited.
// qemu-img runs on one copy, instar on the other: stdout, stderr, exit code,
// the file byte for byte, then `qemu-img check` and `info` of instar's file.
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { type BitmapEdit, editBitmap } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

type Edit = BitmapEdit & { file?: string };

interface Case {
  name: string;
  make: string[];
  edits: Edit[];
  /** Each command runs in turn on both copies. */
  runs: string[][];
}

// 1000 KiB with 8 KiB granularity: 125 bits, the end inside the second word.
const ODD = [
  "qemu-img create -q -f qcow2 t.qcow2 1000k",
  "qemu-img bitmap --add -g 8k t.qcow2 a",
  "qemu-img bitmap --add -g 8k t.qcow2 b",
];

const CASES: Case[] = [
  {
    name: "tail bits in both bitmaps, same granularity (whole-word OR)",
    make: [...ODD, io("t.qcow2", "write -P 1 0 8k", "write -P 1 992k 8k")],
    edits: [{ bm: 0, k: 0, set: [126, 200] }, { bm: 1, k: 0, set: [125, 127, 1000] }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name: "tail bits in the source only, destination empty",
    make: [
      ...ODD,
      io("t.qcow2", "write -P 1 0 8k"),
      "qemu-img bitmap --clear t.qcow2 b",
    ],
    edits: [{ bm: 0, k: 0, set: [126] }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name: "tail bits in an empty destination, source without",
    make: [...ODD, io("t.qcow2", "write -P 1 0 8k")],
    edits: [{ bm: 1, k: 0, set: [125], clear: [0] }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name: "source with only tail bits (nothing to merge)",
    make: [...ODD, io("t.qcow2", "write -P 1 0 8k")],
    edits: [{ bm: 0, k: 0, set: [126, 127], clear: [0] }, { bm: 1, k: 0, set: [125] }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name: "different granularities: the source's tail bits stay out",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1000k",
      "qemu-img bitmap --add -g 8k t.qcow2 a",
      "qemu-img bitmap --add -g 16k t.qcow2 b",
      io("t.qcow2", "write -P 1 0 8k", "write -P 1 992k 8k"),
    ],
    edits: [{ bm: 0, k: 0, set: [126, 127] }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name:
      "another granularity into a destination with tail bits (dropped), source set or set past its end only",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 1000k",
      "qemu-img bitmap --add -g 8k t.qcow2 a",
      "qemu-img bitmap --add -g 16k t.qcow2 b",
      "qemu-img bitmap --add -g 8k t.qcow2 c",
      io("t.qcow2", "write -P 1 0 8k"),
    ],
    edits: [{ bm: 1, k: 0, set: [63] }, { bm: 2, k: 0, set: [126], clear: [0] }],
    runs: [["bitmap", "--merge", "c", "t.qcow2", "b"], ["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name: "all-ones entry: --merge from it, then --enable",
    make: [...ODD, io("t.qcow2", "write -P 1 0 8k"), "qemu-img bitmap --clear t.qcow2 b"],
    edits: [{ bm: 0, k: 0, allOnes: true }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"], ["bitmap", "--disable", "t.qcow2", "a"]],
  },
  {
    name: "all-ones entries, 512 B clusters: first and last of several, --add",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=512 t.qcow2 2100000",
      "qemu-img bitmap --add -g 512 t.qcow2 a",
      io("t.qcow2", "write -P 1 0 4k", "write -P 1 1m 4k", "write -P 1 2099200 512"),
    ],
    edits: [{ bm: 0, k: 0, allOnes: true }, { bm: 0, k: 1, allOnes: true }],
    runs: [["info", "t.qcow2"], ["bitmap", "--add", "t.qcow2", "c"], [
      "bitmap",
      "--merge",
      "a",
      "t.qcow2",
      "c",
    ]],
  },
  {
    name: "all-ones destination (its last word whole), merged into from the same granularity",
    make: [...ODD, io("t.qcow2", "write -P 1 0 8k")],
    edits: [{ bm: 1, k: 0, allOnes: true }, { bm: 0, k: 0, set: [127] }],
    runs: [["bitmap", "--merge", "a", "t.qcow2", "b"]],
  },
  {
    name: "-b source with tail bits, then one with an all-ones entry",
    make: [
      ...ODD,
      io("t.qcow2", "write -P 1 0 8k"),
      "qemu-img create -q -f qcow2 s.qcow2 1000k",
      "qemu-img bitmap --add -g 8k s.qcow2 x",
      "qemu-img bitmap --add -g 8k s.qcow2 y",
      io("s.qcow2", "write -P 1 64k 8k"),
    ],
    edits: [{ bm: 0, k: 0, set: [126], file: "s.qcow2" }, { bm: 1, k: 0, allOnes: true, file: "s.qcow2" }],
    runs: [
      ["bitmap", "--merge", "x", "-b", "s.qcow2", "-F", "qcow2", "t.qcow2", "b"],
      ["bitmap", "--merge", "y", "-b", "s.qcow2", "-F", "qcow2", "t.qcow2", "a"],
    ],
  },
];

for (const c of CASES) {
  Deno.test({
    name: `bitmap --merge past the end / all ones: ${c.name}`,
    ignore: !ready,
  }, async () => {
    await withTempDir("instar-bmmt-", async (root) => {
      await Deno.mkdir(`${root}/q`);
      for (const l of c.make) await sh(`${root}/q`, "sh", "-c", l);
      for (const e of c.edits) await editBitmap(`${root}/q/${e.file ?? "t.qcow2"}`, e);
      await sh(root, "cp", "-a", "q", "i");
      if (Deno.env.get("BMMT_KEEP")) await sh(root, "cp", "-a", "q", `${Deno.env.get("BMMT_KEEP")}`);
      for (const args of c.runs) {
        const want = await qemuImg(args, `${root}/q`);
        const got = await instarHere(args, `${root}/i`);
        assertEquals(got, asInstar(want));
        assertEquals(want.code, 0, want.stderr);
        const r = await exec("cmp", ["q/t.qcow2", "i/t.qcow2"], root);
        assertEquals(r.code, 0, `${args.join(" ")}: t.qcow2 differs from qemu-img's: ${r.stdout}`);
      }
      // The edit to all ones leaks the entry's old data cluster (qemu's copy too): check's code 3.
      const check = await qemuImg(["check", "t.qcow2"], `${root}/i`);
      assertEquals(check.code, c.edits.some((e) => e.allOnes && !e.file) ? 3 : 0, check.stdout);
      assertEquals(await instarHere(["check", "t.qcow2"], `${root}/i`), asInstar(check));
      const info = ["info", "--output=json", "t.qcow2"];
      assertEquals(await instarHere(info, `${root}/i`), asInstar(await qemuImg(info, `${root}/i`)));
    });
  });
}
