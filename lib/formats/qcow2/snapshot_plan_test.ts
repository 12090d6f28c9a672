// Unit tests of the snapshot planner's qemu/glibc details that no qemu-made
// image reaches: strtoul's parsing of odd ids (find_new_snapshot_id), the
// table layout of qcow2_write_snapshots, and refusals of scans no image
// should give.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { encodeSnapshotTable, newSnapshotId, planSnapshotGoto, strtoul } from "./snapshot_plan.ts";
import type { Qcow2SnapshotScan, SnapEntry } from "./snapshot_scan.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const U64 = (1n << 64n) - 1n;

function entry(id: string, name = "n", unknown = 0): SnapEntry {
  return {
    id: enc(id),
    name: enc(name),
    unknownExtra: new Uint8Array(unknown).fill(7),
    l1Offset: 0x30000n,
    l1Size: 1,
    dateSec: 1,
    dateNsec: 2,
    vmClockNsec: 3n,
    vmStateSize: 1n << 33n,
    diskSize: 1n << 20n,
    icount: U64,
  };
}

Deno.test("strtoul as glibc reads snapshot ids", () => {
  assertEquals(strtoul(enc("12")), 12n);
  assertEquals(strtoul(enc("  \t+7x")), 7n);
  assertEquals(strtoul(enc("abc")), 0n);
  assertEquals(strtoul(enc("-1")), U64);
  assertEquals(strtoul(enc("-")), 0n);
  assertEquals(strtoul(enc("99999999999999999999999")), U64);
});

Deno.test("find_new_snapshot_id: one past the largest, wrapping at 2^64", () => {
  assertEquals(new TextDecoder().decode(newSnapshotId([])), "1");
  assertEquals(new TextDecoder().decode(newSnapshotId([entry("3"), entry("x"), entry("10")])), "11");
  assertEquals(new TextDecoder().decode(newSnapshotId([entry("-1")])), "0");
});

Deno.test("qcow2_write_snapshots layout: 8-aligned entries, padding unwritten, big VM state", () => {
  const t = encodeSnapshotTable([entry("1", "abc", 5), entry("22")], 4096n);
  assertEquals(t.patches.length, 2);
  const [a, b] = t.patches.map((p) => (p.kind === "write" ? p : undefined)!);
  assertEquals(a.offset, 4096n);
  assertEquals(a.bytes.length, 40 + 29 + 1 + 3);
  const dv = new DataView(a.bytes.buffer);
  assertEquals(dv.getUint32(32), 0); // a VM state over 4 GiB: 0 in the 32-bit field
  assertEquals(dv.getUint32(36), 29); // 24 known + 5 unknown extra bytes
  assertEquals(dv.getBigUint64(40), 1n << 33n);
  assertEquals(a.bytes.subarray(64, 69), new Uint8Array(5).fill(7));
  assertEquals(b.offset, 4096n + 80n); // 73 rounded up to 80
  assertEquals(t.size, 80n + 40n + 24n + 2n + 1n);
});

Deno.test("goto refuses what it does not replay", () => {
  const scan: Qcow2SnapshotScan = {
    version: 3,
    clusterBits: 16,
    refcountOrder: 4,
    extendedL2: false,
    virtualSize: 2n << 20n,
    fileSize: 5n << 16n,
    l1Offset: 0x30000n,
    l1Size: 1,
    reftableOffset: 0x10000n,
    reftableClusters: 1,
    reftable: new Map([[0, 0x20000n]]),
    runs: [{ start: 0n, count: 5n, refcount: 1n }],
    snapshotsOffset: 0x40000n,
    tableSize: 67n,
    snapshots: [entry("1")],
    activeL1: new Map(),
    picked: { index: 0, l1: new Map() },
    l2: [],
  };
  const r = planSnapshotGoto(scan, 0);
  assert(!r.ok && r.failure.kind === "refuse" && /virtual size/.test(r.failure.message));
});
