// check -r leaks|all on qcow2 images whose OFLAG_COPIED flags are wrong
// (qemu's check_oflag_copied repairs them: with -r all always, with -r leaks
// only when no other error is left). Images are made by qemu-img / qemu-io,
// then one byte is poked: bit 63 of an L1 or L2 entry flipped (the top bit
// of the entry's first byte), sometimes with a refcount edited as well.
// Two copies of each image, one repaired by qemu-img, one by instar:
// stdout, stderr (program name aside), exit code and the repaired files
// must be the same, and `qemu-img check` must find instar's copy clean
// wherever it finds qemu's clean.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { setBitmapsInUse, setRefcount } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** Flips OFLAG_COPIED (bit 63) of active L1 entry `l1` or, with `l2` given, of that entry in its L2 table. */
function flipCopied(path: string, l1: number, l2?: number): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    const h = new Uint8Array(112);
    f.readSync(h);
    const dv = new DataView(h.buffer);
    const extL2 = dv.getUint32(4) >= 3 && (dv.getBigUint64(72) & 16n) !== 0n;
    const l1Offset = dv.getBigUint64(40);
    let at = l1Offset + BigInt(l1 * 8);
    if (l2 !== undefined) {
      const e = new Uint8Array(8);
      f.seekSync(Number(at), Deno.SeekMode.Start);
      f.readSync(e);
      const table = new DataView(e.buffer).getBigUint64(0) & 0x00fffffffffffe00n;
      if (table === 0n) throw new Error("no L2 table there");
      at = table + BigInt(l2 * (extL2 ? 16 : 8));
    }
    const b = new Uint8Array(1);
    f.seekSync(Number(at), Deno.SeekMode.Start);
    f.readSync(b);
    b[0] ^= 0x80;
    f.seekSync(Number(at), Deno.SeekMode.Start);
    f.writeSync(b);
  } finally {
    f.close();
  }
}

interface Case {
  name: string;
  create?: string[];
  snapshot?: boolean;
  /** [l1 index, l2 index?] flips */
  flips: [number, number?][];
  /** [cluster, refcount] edits */
  refcounts?: [number, bigint][];
  /** an external data file (img.data), compared too */
  dataFile?: boolean;
  /** a persistent bitmap with dirty bits (qemu's close stores it anew) */
  bitmap?: boolean;
  /** ... flagged in use (inconsistent: neither marked nor stored) */
  bitmapInUse?: boolean;
  args: string[];
}

const CASES: Case[] = [
  // an L1 entry without the flag its L2 table's refcount 1 asks for
  ...["leaks", "all"].map((m): Case => ({ name: `L1 flag cleared, -r ${m}`, flips: [[0]], args: ["-r", m] })),
  // data cluster entries without their flag, one table
  { name: "L2 flags cleared, -r leaks", flips: [[0, 0], [0, 3], [0, 15]], args: ["-r", "leaks"] },
  // after a snapshot every cluster is shared: a flag set on a refcount of 2
  {
    name: "snapshot, flags set on shared clusters, -r all",
    snapshot: true,
    flips: [[0], [0, 1]],
    args: ["-r", "all"],
  },
  {
    name: "snapshot, flags set on shared clusters, -r leaks, json",
    snapshot: true,
    flips: [[0], [0, 2]],
    args: ["-r", "leaks", "--output=json"],
  },
  // leaks fixed first, then the flags (no error left: -r leaks repairs them)
  {
    name: "leaks and a wrong flag, -r leaks",
    flips: [[0, 5]],
    refcounts: [[40, 1n], [41, 1n]],
    args: ["-r", "leaks"],
  },
  // a refcount below its references stays with -r leaks: the flags are only reported
  {
    name: "snapshot, a refcount too low and a wrong flag, -r leaks",
    snapshot: true,
    flips: [[0, 4]],
    refcounts: [[6, 1n]],
    args: ["-r", "leaks"],
  },
  // -r all raises the refcount to 2, and the flag is checked against it
  {
    name: "snapshot, a refcount too low and a wrong flag, -r all",
    snapshot: true,
    flips: [[0, 4]],
    refcounts: [[6, 1n]],
    args: ["-r", "all"],
  },
  { name: "compat=0.10", create: ["-o", "compat=0.10"], flips: [[0], [0, 2]], args: ["-r", "all"] },
  {
    name: "extended L2, refcount_bits=1",
    create: ["-o", "extended_l2=on,cluster_size=128k,refcount_bits=1"],
    flips: [[0, 1], [0, 6]],
    args: ["-r", "leaks"],
  },
  // an external data file: data clusters count as refcount 1 (only the qcow2 file is written)
  {
    name: "data file, leaks and wrong flags, -r leaks -q",
    dataFile: true,
    flips: [[0], [0, 1]],
    refcounts: [[6, 1n], [7, 1n]],
    args: ["-r", "leaks", "-q"],
  },
  // persistent bitmaps: marked in use at open, stored anew at close
  { name: "bitmap, leaks, -r leaks", bitmap: true, flips: [], refcounts: [[40, 1n]], args: ["-r", "leaks"] },
  { name: "bitmap, a wrong flag, -r all", bitmap: true, flips: [[0, 2]], args: ["-r", "all"] },
  {
    name: "bitmap in use, a wrong flag, -r all",
    bitmap: true,
    bitmapInUse: true,
    flips: [[0, 2]],
    args: ["-r", "all"],
  },
];

async function makeImage(dir: string, c: Case): Promise<void> {
  const data = c.dataFile ? ["-o", "data_file=img.data"] : [];
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...(c.create ?? []), ...data, "img.qcow2", "64M");
  await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "img.qcow2");
  if (c.snapshot) await sh(dir, "qemu-img", "snapshot", "-c", "s1", "img.qcow2");
  if (c.bitmap) {
    await sh(dir, "qemu-img", "bitmap", "--add", "img.qcow2", "b0");
    await sh(dir, "qemu-io", "-c", "write -P 2 0 192k", "img.qcow2");
    if (c.bitmapInUse) setBitmapsInUse(`${dir}/img.qcow2`);
  }
  for (const [l1, l2] of c.flips) flipCopied(`${dir}/img.qcow2`, l1, l2);
  for (const [cluster, v] of c.refcounts ?? []) setRefcount(`${dir}/img.qcow2`, cluster, v);
}

Deno.test(
  { name: "check -r repairs OFLAG_COPIED as qemu-img does, byte for byte", ignore: !ready },
  async (t) => {
    for (const c of CASES) {
      await t.step(c.name, async () => {
        const root = await Deno.makeTempDir({ prefix: "instar-oflag-" });
        try {
          const [qd, id] = [`${root}/q`, `${root}/i`];
          await Deno.mkdir(qd);
          await makeImage(qd, c);
          await Deno.mkdir(id);
          const files = c.dataFile ? ["img.qcow2", "img.data"] : ["img.qcow2"];
          for (const f of files) await Deno.copyFile(`${qd}/${f}`, `${id}/${f}`);
          const before = await qemuImg(["check", "img.qcow2"], qd);
          assert(before.code !== 0, `the edit made no error: ${before.stdout}`);
          const args = ["check", ...c.args, "img.qcow2"];
          const q = await qemuImg(args, qd);
          const i = await instarHere(args, id);
          assertEquals(i, asInstar(q), `instar ${args.join(" ")}`);
          for (const f of files) {
            const [qb, ib] = [await Deno.readFile(`${qd}/${f}`), await Deno.readFile(`${id}/${f}`)];
            assert(qb.length === ib.length && qb.every((b, k) => b === ib[k]), `the repaired ${f} differ`);
          }
          const [ic, qc] = [
            await qemuImg(["check", "img.qcow2"], id),
            await qemuImg(["check", "img.qcow2"], qd),
          ];
          // The messages too: a hosted run under load once gave 1 against 0 on identical files.
          assertEquals(ic.code, qc.code, `qemu-img check of instar's repair: ${ic.stdout}${ic.stderr}`);
        } finally {
          await Deno.remove(root, { recursive: true });
        }
      });
    }
  },
);
