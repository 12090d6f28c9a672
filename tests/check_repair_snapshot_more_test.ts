// check on snapshot table entries with more than 1024 bytes of extra data
// (QCOW_MAX_SNAPSHOT_EXTRA_DATA): without -r and with -r leaks qemu 7.2
// fails ("Too much extra metadata in snapshot table entry N"); with -r all
// qcow2_do_read_snapshots drops the unknown extra data ("Discarding too
// much extra metadata ...") and qcow2_check_fix_snapshot_table writes the
// table anew. Both table fixes (this and an incomplete entry) beside the
// other repairs, in qemu's order: the refcount rebuild or the file grown to
// a refcount block past its end first, the table written anew after; with
// persistent bitmaps qemu-img drops every snapshot (instar refuses), unless
// every bitmap is in use. Images are made by qemu-img / qemu-io, entries
// rewritten with longer or shorter extra areas; qemu-img checks one copy,
// instar another: stdout, stderr (program name aside), exit code and the
// files must match.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { makeSnapshotImage, refusedAsQemu, repairBoth } from "./support/check_repair.ts";
import {
  resizeSnapshotExtras,
  setBitmapsInUse,
  setRefcount,
  setReftableEntry,
} from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  snapshots: number;
  poke: (path: string) => void;
  args: string[];
  /** A persistent bitmap added after the snapshots, every bitmap then marked in use. */
  bitmapInUse?: boolean;
}

const big = (p: string) => resizeSnapshotExtras(p, new Map([[0, 2000]]));
const incomplete = (p: string) => resizeSnapshotExtras(p, new Map([[0, 8]]));
const all = (...fs: ((p: string) => void)[]) => (p: string) => fs.forEach((f) => f(p));

const CASES: Case[] = [
  ...[["-r", "all"], ["-r", "all", "--output=json"]].map((args): Case => ({
    name: `one entry with 2000 bytes of extra data, ${args.join(" ") || "no -r"}`,
    snapshots: 2,
    poke: big,
    args,
  })),
  {
    name: "just past the limit, the last of three entries",
    snapshots: 3,
    poke: (p) => resizeSnapshotExtras(p, new Map([[2, 1025]])),
    args: ["-r", "all"],
  },
  {
    name: "two entries with too much, one with unknown extra data kept, one incomplete",
    snapshots: 4,
    poke: (p) => resizeSnapshotExtras(p, new Map([[0, 5000], [1, 100], [2, 8], [3, 40000]])),
    args: ["-r", "all"],
  },
  {
    name: "too much extra data and a leaked cluster",
    snapshots: 2,
    poke: (p) => {
      big(p);
      setRefcount(p, 30, 1n);
    },
    args: ["-r", "all"],
  },
  // qemu's order: the refcount structures rebuilt (the file grown first to a
  // refcount block past its end), then the table written anew
  {
    name: "an incomplete entry beside a refcount rebuild",
    snapshots: 2,
    poke: all(incomplete, (p) => setRefcount(p, 5, 0n)),
    args: ["-r", "all"],
  },
  {
    name: "too much extra data beside a refcount rebuild and a leak",
    snapshots: 2,
    poke: all(big, (p) => setRefcount(p, 5, 0n), (p) => setRefcount(p, 40, 1n)),
    args: ["-r", "all"],
  },
  {
    name: "an incomplete entry, refcount block 1 past the end: the file grows",
    snapshots: 2,
    poke: all(incomplete, (p) => setReftableEntry(p, 1, () => 0x400000n)),
    args: ["-r", "all"],
  },
  {
    name: "too much extra data, refcount block 0 past the end, json",
    snapshots: 2,
    poke: all(big, (p) => setReftableEntry(p, 0, () => 0x300000n)),
    args: ["-r", "all", "--output=json"],
  },
  // bitmaps already in use: qemu neither marks nor stores them, the snapshots stay
  {
    name: "an incomplete entry and too much extra data, bitmaps in use",
    snapshots: 2,
    poke: (p) => resizeSnapshotExtras(p, new Map([[0, 8], [1, 3000]])),
    args: ["-r", "all"],
    bitmapInUse: true,
  },
  {
    name: "too much extra data, compat=0.10",
    snapshots: 2,
    poke: big,
    args: ["-r", "all"],
  },
];

async function makeImage(dir: string, c: Case): Promise<void> {
  const compat = c.name.includes("compat=0.10") ? ["-o", "compat=0.10"] : [];
  await makeSnapshotImage(dir, c.snapshots, c.bitmapInUse ? () => {} : c.poke, compat);
  if (c.bitmapInUse) {
    await sh(dir, "qemu-img", "bitmap", "--add", "img.qcow2", "b0");
    await sh(dir, "qemu-io", "-c", "write -P 7 1M 64k", "img.qcow2");
    setBitmapsInUse(`${dir}/img.qcow2`);
    c.poke(`${dir}/img.qcow2`);
  }
}

Deno.test(
  { name: "check handles snapshot entries with too much extra data as qemu-img does", ignore: !ready },
  async (t) => {
    for (const c of CASES) {
      await t.step(c.name, async () => {
        await repairBoth("instar-snapextra-", c.args, (dir) => makeImage(dir, c), async (_q, qd, id) => {
          assertEquals(
            await qemuImg(["check", "img.qcow2"], id),
            await qemuImg(["check", "img.qcow2"], qd),
          );
        });
      });
    }
  },
);

// Without -r and with -r leaks qemu fails with its hint naming qemu-img
// (instar prints the hint as qemu does); the file stays as it was.
Deno.test(
  { name: "check without -r all refuses too much snapshot extra data as qemu-img does", ignore: !ready },
  async (t) => {
    for (const args of [[], ["-r", "leaks"]]) {
      await t.step(args.join(" ") || "no -r", async () => {
        const dir = await Deno.makeTempDir({ prefix: "instar-snapextra-" });
        try {
          await makeImage(dir, { name: "", snapshots: 2, poke: big, args });
          await refusedAsQemu(dir, args);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      });
    }
  },
);

// qemu's check-mode open does not read the snapshot table, and marking the
// bitmaps in use rewrites the header from that state: qemu-img 7.2's
// `check -r` of an image with persistent bitmaps drops every internal
// snapshot (then repairs their clusters as leaks), even when nothing is
// wrong. instar refuses before anything is written.
Deno.test(
  {
    name: "check -r of an image with bitmaps and snapshots: qemu-img drops the snapshots, instar refuses",
    ignore: !ready,
  },
  async (t) => {
    for (const args of [["-r", "leaks"], ["-r", "all"]]) {
      await t.step(args.join(" "), async () => {
        const dir = await Deno.makeTempDir({ prefix: "instar-snapbitmap-" });
        try {
          await makeSnapshotImage(dir, 2, () => {});
          await sh(dir, "qemu-img", "bitmap", "--add", "img.qcow2", "b0");
          await Deno.copyFile(`${dir}/img.qcow2`, `${dir}/q.qcow2`);
          const before = await Deno.readFile(`${dir}/img.qcow2`);
          const q = await qemuImg(["check", ...args, "q.qcow2"], dir);
          assertEquals(q.code, 0);
          assertEquals((await qemuImg(["snapshot", "-l", "q.qcow2"], dir)).stdout, "");
          assertEquals(await instarHere(["check", ...args, "img.qcow2"], dir), {
            code: 1,
            stdout: "",
            stderr: "instar: Could not repair 'img.qcow2': qemu-img would drop every internal snapshot " +
              "of an image with persistent bitmaps here; instar does not; nothing was written\n",
          });
          const after = await Deno.readFile(`${dir}/img.qcow2`);
          assertEquals(after.length === before.length && after.every((b, k) => b === before[k]), true);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      });
    }
  },
);
