// The snapshot_scan guest's records and their decoder
// (lib/formats/qcow2/snapshot_scan.ts): on a qemu-made image the decoded
// scan says what qemu-img says (snapshots, ids, names, the table's size), and
// a hostile guest's records (counts that disagree with the summary, runs
// outside the walked L2 tables, unaligned L1 entries, out-of-order bytes,
// NULs in names, a stream cut short) are refused before any planner runs.
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { built, haveQemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { formats, ops, records, snapScanFlags } from "../lib/abi/spec.ts";
import type { Rec } from "../lib/abi/records.ts";
import { runGuest } from "../lib/vmm/guest.ts";
import { decodeSnapshotScan } from "../lib/formats/qcow2/snapshot_scan.ts";
import { GuestResultError } from "../lib/formats/qcow2/model.ts";

await useHostedGuestsWithoutKvm();
const ready = built() && haveQemuImg();

async function scan(path: string, pick?: number): Promise<{ recs: Rec[]; size: bigint }> {
  const r = await runGuest({
    op: "snapshot_scan",
    opCode: ops.SNAPSHOT_SCAN,
    inputs: [{ path, format: formats.QCOW2 }],
    args: [pick === undefined ? 0n : BigInt(pick) + 1n, BigInt(snapScanFlags.ACTIVE_L1)],
  });
  assertEquals(r.guestStatus, 0n);
  return { recs: r.records, size: r.inputs[0].size };
}

/** A copy of the records with record `i` of `type` changed by `f`. */
function edit(recs: Rec[], type: number, f: (fields: Rec["fields"]) => void, i = 0): Rec[] {
  let k = 0;
  return recs.map((r) => {
    if (r.type !== type || k++ !== i) return r;
    const fields = { ...r.fields };
    f(fields);
    return { type: r.type, fields };
  });
}

Deno.test({
  name: "snapshot_scan: a qemu-made image decodes; hostile records are refused",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-snapscan-", async (dir) => {
      const p = `${dir}/s.qcow2`;
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", p, "4M");
      await sh(dir, "qemu-io", "-c", "write -P 1 0 256k", "-c", "write -c -P 2 1M 64k", p);
      await sh(dir, "qemu-img", "snapshot", "-c", "first", p);
      await sh(dir, "qemu-img", "snapshot", "-c", "second", p);
      const { recs, size } = await scan(p, 1);
      const s = decodeSnapshotScan(recs, size, 1);
      assertEquals(s.snapshots.map((e) => new TextDecoder().decode(e.name)), ["first", "second"]);
      assertEquals(s.snapshots.map((e) => new TextDecoder().decode(e.id)), ["1", "2"]);
      assertEquals(s.picked?.index, 1);
      assert(s.activeL1.size === 1 && s.picked!.l1.size === 1 && s.l2.length >= 2);
      // Two entries of 40 + 24 + 1 + 5/6 bytes, the first padded to 8.
      assertEquals(s.tableSize, 72n + 71n);
      const refuse = (bad: Rec[], why: RegExp) =>
        throws(() => decodeSnapshotScan(bad, size, 1), (e) =>
          e instanceof GuestResultError && why.test(e.message));
      refuse(recs.slice(0, -1), /incomplete/);
      refuse(
        edit(recs, records.SNAP_SUMMARY, (f) => (f.n_runs = (f.n_runs as bigint) + 1n)),
        /n_runs mismatch/,
      );
      refuse(edit(recs, records.SNAP_L1, (f) => (f.value = (f.value as bigint) + 512n)), /aligned L2 table/);
      refuse(edit(recs, records.SNAP_L2RUN, (f) => (f.entry = 1n << 40n)), /L2 run/);
      refuse(edit(recs, records.SNAP_L2RUN, (f) => (f.kind = 9)), /L2 run kind/);
      refuse(edit(recs, records.SNAP_BYTES, (f) => (f.offset = 1)), /snapshot bytes/);
      // The first SNAP_BYTES is snapshot 0's id ("1"): a NUL in its place.
      refuse(edit(recs, records.SNAP_BYTES, (f) => (f.bytes = new Uint8Array(2048))), /NUL/);
      refuse(edit(recs, records.SNAP_ENTRY, (f) => (f.index = 5)), /out of order/);
      refuse(edit(recs, records.RESIZE_REFRUN, (f) => (f.refcount = 0n)), /refcount run/);
      throws(() =>
        decodeSnapshotScan(recs, size, undefined), GuestResultError);
    }),
});
