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
import { setRefcount } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** Rewrites snapshot table entry `index` with `extra` bytes of extra data (less than it had). */
function shortenExtra(path: string, index: number, extra: number): void {
  const b = Deno.readFileSync(path);
  const dv = new DataView(b.buffer);
  const nb = dv.getUint32(60), table = Number(dv.getBigUint64(64));
  const entries: Uint8Array[] = [];
  let at = table;
  for (let i = 0; i < nb; i++) {
    at = (at + 7) & ~7;
    const idLen = dv.getUint16(at + 12), nameLen = dv.getUint16(at + 14), ext = dv.getUint32(at + 36);
    const len = 40 + ext + idLen + nameLen;
    let e = b.slice(at, at + len);
    if (i === index) {
      const n = new Uint8Array(40 + extra + idLen + nameLen);
      n.set(e.subarray(0, 40 + extra));
      n.set(e.subarray(40 + ext), 40 + extra);
      new DataView(n.buffer).setUint32(36, extra);
      e = n;
    }
    entries.push(e);
    at += len;
  }
  const out = new Uint8Array(at - table);
  let o = 0;
  for (const e of entries) {
    o = (o + 7) & ~7;
    out.set(e, o);
    o += e.length;
  }
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    f.seekSync(table, Deno.SeekMode.Start);
    f.writeSync(out);
  } finally {
    f.close();
  }
}

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
    poke: (p) => shortenExtra(p, 0, 8),
    args: ["-r", m],
  })),
  {
    name: "the second of three entries without extra data",
    snapshots: 3,
    poke: (p) => shortenExtra(p, 1, 0),
    args: ["-r", "all"],
  },
  // the leak is repaired first: the new table may take its cluster
  {
    name: "an incomplete entry and a leaked cluster",
    snapshots: 2,
    poke: (p) => {
      shortenExtra(p, 0, 8);
      setRefcount(p, 30, 1n);
    },
    args: ["-r", "all"],
  },
  {
    name: "an incomplete entry, json",
    snapshots: 1,
    poke: (p) => shortenExtra(p, 0, 12),
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
