// check -r all on an incomplete snapshot table entry (a compat=1.1 entry
// with less than 16 bytes of extra data): qemu 7.2's
// qcow2_check_fix_snapshot_table writes the table anew after the refcount
// repairs. Images are made by qemu-img / qemu-io, one entry rewritten with
// a short extra area; qemu-img repairs one copy, instar another: stdout,
// stderr (program name aside), exit code and the repaired files must be
// the same.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, haveQemuImg, qemuImg } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { makeSnapshotImage, repairBoth } from "./support/check_repair.ts";
import { resizeSnapshotExtras, setRefcount } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  snapshots: number;
  poke: (path: string) => void;
  args: string[];
}

const CASES: Case[] = [
  ...["all", "leaks"].map((m): Case => ({
    name: `one entry with 8 bytes of extra data, -r ${m}`,
    snapshots: 1,
    poke: (p) => resizeSnapshotExtras(p, new Map([[0, 8]])),
    args: ["-r", m],
  })),
  {
    name: "the second of three entries without extra data",
    snapshots: 3,
    poke: (p) => resizeSnapshotExtras(p, new Map([[1, 0]])),
    args: ["-r", "all"],
  },
  // the leak is repaired first: the new table may take its cluster
  {
    name: "an incomplete entry and a leaked cluster",
    snapshots: 2,
    poke: (p) => {
      resizeSnapshotExtras(p, new Map([[0, 8]]));
      setRefcount(p, 30, 1n);
    },
    args: ["-r", "all"],
  },
  {
    name: "an incomplete entry, json",
    snapshots: 1,
    poke: (p) => resizeSnapshotExtras(p, new Map([[0, 12]])),
    args: ["-r", "all", "--output=json"],
  },
];

function makeImage(dir: string, c: Case): Promise<void> {
  return makeSnapshotImage(dir, c.snapshots, c.poke);
}

Deno.test(
  { name: "check -r all writes an incomplete snapshot table anew as qemu-img does", ignore: !ready },
  async (t) => {
    for (const c of CASES) {
      await t.step(c.name, async () => {
        await repairBoth("instar-snaptable-", c.args, (dir) => makeImage(dir, c), async (_q, qd, id) => {
          assertEquals(
            await qemuImg(["snapshot", "-l", "img.qcow2"], id),
            await qemuImg(["snapshot", "-l", "img.qcow2"], qd),
          );
        });
      });
    }
  },
);
