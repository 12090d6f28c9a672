// Decodes the snapshot_scan guest's records (guest/qcow2/snapshot_scan.c)
// into the snapshot planner's input (snapshot_plan.ts). The records are
// untrusted: every count is checked against the summary, every index and
// length against fixed bounds, every L2 run against the L1 tables that name
// its table, and the bytes of each id, name and extra area must arrive whole
// and in order.
import { records, snapBytesKinds, snapRunKinds, snapSummaryFlags } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { GuestResultError, qcow2Model } from "./model.ts";
import type { RefRun } from "./refcounts.ts";

/** Records of one kind the guest may send (SNAP_MAX_EACH). */
export const SNAP_MAX_EACH = 1 << 20;
const MAX_SNAPSHOTS = 65536;
const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
const U64_MAX = (1n << 64n) - 1n;

/** One snapshot table entry as qemu's QCowSnapshot holds it. */
export interface SnapEntry {
  /** id_str and name: C strings (no NUL). */
  id: Uint8Array;
  name: Uint8Array;
  /** Extra data past the 24 bytes qemu knows, kept verbatim. */
  unknownExtra: Uint8Array;
  l1Offset: bigint;
  l1Size: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: bigint;
  diskSize: bigint;
  icount: bigint;
}

/** `count` L2 entries from file offset `entry` (snapRunKinds). */
export interface SnapL2Run {
  entry: bigint;
  value: bigint;
  bitmap: bigint;
  refFirst: bigint;
  count: number;
  kind: number;
  refClusters: number;
}

export interface Qcow2SnapshotScan {
  version: number;
  clusterBits: number;
  refcountOrder: number;
  extendedL2: boolean;
  virtualSize: bigint;
  /** Current length of the image file (host fact). */
  fileSize: bigint;
  l1Offset: bigint;
  l1Size: number;
  reftableOffset: bigint;
  reftableClusters: number;
  /** Refcount-table entries with an offset, raw values. */
  reftable: Map<number, bigint>;
  /** Non-zero refcounts, ascending. */
  runs: RefRun[];
  snapshotsOffset: bigint;
  /** Bytes the snapshot table fills (qemu's snapshots_size). */
  tableSize: bigint;
  snapshots: SnapEntry[];
  /** Non-zero active L1 entries (when the scan walked the active table). */
  activeL1: Map<number, bigint>;
  /** The snapshot whose L1 table the scan walked, and its non-zero entries. */
  picked?: { index: number; l1: Map<number, bigint> };
  /** Non-zero entries of every L2 table the walked L1 tables name, ascending by `entry`. */
  l2: SnapL2Run[];
}

/** The scan's records as the planner's input, every count and bound re-checked. */
export function decodeSnapshotScan(recs: Rec[], fileSize: bigint, picked?: number): Qcow2SnapshotScan {
  const model = qcow2Model(recs, 0);
  const info = recs.find((r) => r.type === records.QCOW2_INFO)!.fields;
  const last = recs[recs.length - 1];
  if (!last || last.type !== records.SNAP_SUMMARY) throw new GuestResultError("snapshot scan incomplete");
  if (recs.filter((r) => r.type === records.SNAP_SUMMARY).length !== 1) {
    throw new GuestResultError("snapshot scan summary repeated");
  }
  const s = last.fields;
  if (((s.flags as number) & snapSummaryFlags.TOO_BIG) !== 0) {
    throw new GuestResultError(
      `the image has too much metadata for instar to snapshot (more than ${SNAP_MAX_EACH} records of one kind)`,
    );
  }
  const cb = BigInt(model.clusterBits), cs = 1n << cb;
  const entryBytes = model.extendedL2 ? 16n : 8n;
  const reftable = new Map<number, bigint>();
  const runs: RefRun[] = [];
  const entries: SnapEntry[] = [];
  const pending: { want: number[]; got: number[] }[] = [];
  const activeL1 = new Map<number, bigint>(), pickedL1 = new Map<number, bigint>();
  const l2: SnapL2Run[] = [];
  let nBytes = 0;
  let prevRunEnd = -1n;
  for (const r of recs) {
    const f = r.fields;
    switch (r.type) {
      case records.RESIZE_REFTABLE: {
        const idx = f.index as bigint;
        if (idx >= 1n << 32n || reftable.has(Number(idx))) {
          throw new GuestResultError("refcount table index bad");
        }
        reftable.set(Number(idx), f.value as bigint);
        break;
      }
      case records.RESIZE_REFRUN: {
        const run = { start: f.start as bigint, count: f.count as bigint, refcount: f.refcount as bigint };
        if (
          run.count <= 0n || run.refcount <= 0n || run.start < prevRunEnd || run.start + run.count > 1n << 56n
        ) {
          throw new GuestResultError("refcount run out of order");
        }
        prevRunEnd = run.start + run.count;
        runs.push(run);
        break;
      }
      case records.SNAP_ENTRY: {
        const i = f.index as number;
        if (i !== entries.length || i >= MAX_SNAPSHOTS) {
          throw new GuestResultError("snapshot entry out of order");
        }
        const idLen = f.id_len as number, nameLen = f.name_len as number, unk = f.unknown_len as number;
        const extra = f.extra_size as number;
        if (idLen > 65535 || nameLen > 65535 || extra > 1024 || unk !== (extra > 24 ? extra - 24 : 0)) {
          throw new GuestResultError("snapshot entry lengths out of range");
        }
        entries.push({
          id: new Uint8Array(idLen),
          name: new Uint8Array(nameLen),
          unknownExtra: new Uint8Array(unk),
          l1Offset: f.l1_offset as bigint,
          l1Size: f.l1_size as number,
          dateSec: f.date_sec as number,
          dateNsec: f.date_nsec as number,
          vmClockNsec: f.vm_clock_nsec as bigint,
          vmStateSize: f.vm_state_size as bigint,
          diskSize: f.disk_size as bigint,
          icount: f.icount as bigint,
        });
        pending.push({ want: [idLen, nameLen, unk], got: [0, 0, 0] });
        break;
      }
      case records.SNAP_BYTES: {
        const i = f.index as number,
          what = f.what as number,
          len = f.length as number,
          off = f.offset as number;
        const e = entries[i];
        if (!e || i !== entries.length - 1) throw new GuestResultError("snapshot bytes out of order");
        const k = what === snapBytesKinds.ID
          ? 0
          : what === snapBytesKinds.NAME
          ? 1
          : what === snapBytesKinds.EXTRA
          ? 2
          : -1;
        if (k < 0 || len === 0 || len > 256) throw new GuestResultError("snapshot bytes kind bad");
        const p = pending[i];
        // In order: all of the id, then the name, then the extra data.
        for (let j = 0; j < k; j++) {
          if (p.got[j] !== p.want[j]) throw new GuestResultError("snapshot bytes out of order");
        }
        if (off !== p.got[k] || off + len > p.want[k]) {
          throw new GuestResultError("snapshot bytes out of range");
        }
        const dst = k === 0 ? e.id : k === 1 ? e.name : e.unknownExtra;
        const src = (f.bytes as Uint8Array).subarray(0, len);
        if (k < 2 && src.includes(0)) throw new GuestResultError("snapshot id or name contains a NUL byte");
        dst.set(src, off);
        p.got[k] += len;
        nBytes++;
        break;
      }
      case records.SNAP_L1: {
        const t = f.table as number, idx = f.index as bigint, v = f.value as bigint;
        const m = t === 0 ? activeL1 : t === 1 ? pickedL1 : undefined;
        if (!m || idx >= 1n << 32n || m.has(Number(idx)) || v === 0n) {
          throw new GuestResultError("L1 entry bad");
        }
        const off = v & L1E_OFFSET_MASK;
        if (off === 0n || off % cs !== 0n) throw new GuestResultError("L1 entry names no aligned L2 table");
        m.set(Number(idx), v);
        break;
      }
      case records.SNAP_L2RUN: {
        const run: SnapL2Run = {
          entry: f.entry as bigint,
          value: f.value as bigint,
          bitmap: f.bitmap as bigint,
          refFirst: f.ref_first as bigint,
          count: f.count as number,
          kind: f.kind as number,
          refClusters: f.ref_clusters as number,
        };
        const prev = l2[l2.length - 1];
        const end = run.entry + BigInt(run.count) * entryBytes;
        const table = run.entry & ~(cs - 1n);
        if (
          run.count <= 0 || run.entry % entryBytes !== 0n || end > table + cs ||
          (prev && run.entry < prev.entry + BigInt(prev.count) * entryBytes) ||
          (run.value === 0n && run.bitmap === 0n)
        ) throw new GuestResultError("L2 run out of range");
        if (run.kind === snapRunKinds.DATA) {
          if (run.refClusters !== 1 || run.refFirst <= 0n || run.refFirst + BigInt(run.count) > 1n << 47n) {
            throw new GuestResultError("L2 data run out of range");
          }
          if ((run.value & L1E_OFFSET_MASK) >> cb !== run.refFirst) {
            throw new GuestResultError("L2 run offset bad");
          }
        } else if (run.kind === snapRunKinds.COMPRESSED) {
          if (run.count !== 1 || run.refClusters < 1 || run.refClusters > 3 || run.refFirst >= 1n << 56n) {
            throw new GuestResultError("L2 compressed run out of range");
          }
        } else if (run.kind !== snapRunKinds.NONE || run.refClusters !== 1) {
          throw new GuestResultError("L2 run kind bad");
        }
        if (run.value > U64_MAX) throw new GuestResultError("L2 value out of range");
        l2.push(run);
        break;
      }
    }
  }
  // Every L2 run lies in a table one of the walked L1 tables names.
  const tables = new Set<bigint>();
  for (const m of [activeL1, pickedL1]) for (const v of m.values()) tables.add(v & L1E_OFFSET_MASK);
  for (const run of l2) {
    if (!tables.has(run.entry & ~(cs - 1n))) throw new GuestResultError("L2 run outside the walked tables");
  }
  for (const p of pending) {
    if (p.got.some((g, j) => g !== p.want[j])) throw new GuestResultError("snapshot bytes incomplete");
  }
  const counts: [string, number][] = [
    ["n_entries", entries.length],
    ["n_bytes", nBytes],
    ["n_l1", activeL1.size + pickedL1.size],
    ["n_runs", l2.length],
    ["n_reftable", reftable.size],
    ["n_refruns", runs.length],
  ];
  for (const [k, v] of counts) {
    if (s[k] !== BigInt(v) || v > SNAP_MAX_EACH) throw new GuestResultError(`snapshot scan ${k} mismatch`);
  }
  if (entries.length !== model.nbSnapshots) throw new GuestResultError("snapshot count mismatch");
  const tableSize = s.table_size as bigint;
  if (tableSize > 0x7fffffffn) throw new GuestResultError("snapshot table size out of range");
  if (pickedL1.size > 0 && picked === undefined) throw new GuestResultError("unasked snapshot L1 entries");
  return {
    version: model.version,
    clusterBits: model.clusterBits,
    refcountOrder: Math.log2(model.refcountBits),
    extendedL2: model.extendedL2,
    virtualSize: model.virtualSize,
    fileSize,
    l1Offset: info.l1_table_offset as bigint,
    l1Size: info.l1_size as number,
    reftableOffset: info.refcount_table_offset as bigint,
    reftableClusters: info.refcount_table_clusters as number,
    reftable,
    runs,
    snapshotsOffset: info.snapshots_offset as bigint,
    tableSize,
    snapshots: entries,
    activeL1,
    picked: picked === undefined ? undefined : { index: picked, l1: pickedL1 },
    l2,
  };
}
