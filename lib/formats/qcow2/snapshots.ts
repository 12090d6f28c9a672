// Internal snapshots and persistent bitmaps of a qcow2 image, decoded from the
// info guest's SNAPSHOT and BITMAP records. The records are untrusted: counts
// must match the header's, lengths stay inside their buffers (qemu's 127/255
// and 1023 byte cuts), no NUL inside a name, granularity inside qemu's bounds.
import { records } from "../../abi/spec.ts";
import { type Rec, structSpec } from "../../abi/records.ts";
import { GuestResultError } from "./model.ts";

/** One internal snapshot as qemu's QEMUSnapshotInfo holds it. */
export interface Qcow2Snapshot {
  /** id_str and name as C strings (bytes, no NUL). */
  id: Uint8Array;
  name: Uint8Array;
  vmStateSize: bigint;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  /** undefined where qemu keeps -1 (the image does not record it). */
  icount?: bigint;
}

/** One persistent dirty bitmap as qemu's Qcow2BitmapInfo holds it. */
export interface Qcow2Bitmap {
  name: Uint8Array;
  granularity: bigint;
  inUse: boolean;
  auto: boolean;
}

const UINT64_MAX = (1n << 64n) - 1n;

function cstr(bytes: Uint8Array, len: number, max: number, what: string): Uint8Array {
  if (len > max) throw new GuestResultError(`${what} length ${len} > ${max}`);
  const b = bytes.subarray(0, len);
  if (b.includes(0)) throw new GuestResultError(`${what} contains a NUL byte`);
  return b;
}

/**
 * The snapshots of one image, kept packed as the guest sent them (65,536
 * snapshots must not cost 65,536 objects): entry i is decoded on demand.
 */
export class SnapshotList {
  constructor(readonly bytes: Uint8Array, readonly offsets: Uint32Array) {}

  get length(): number {
    return this.offsets.length;
  }

  at(i: number): Qcow2Snapshot {
    const at = this.offsets[i];
    const v = new DataView(this.bytes.buffer, this.bytes.byteOffset + at);
    const idLen = v.getUint16(E.id_len, true);
    const nameLen = v.getUint16(E.name_len, true);
    const icount = v.getBigUint64(E.icount, true);
    const text = at + ENTRY.size;
    return {
      id: this.bytes.subarray(text, text + idLen),
      name: this.bytes.subarray(text + idLen, text + idLen + nameLen),
      vmStateSize: v.getBigUint64(E.vm_state_size, true),
      dateSec: v.getUint32(E.date_sec, true),
      dateNsec: v.getUint32(E.date_nsec, true),
      vmClockNsec: v.getBigUint64(E.vm_clock_nsec, true),
      icount: icount === UINT64_MAX ? undefined : icount,
    };
  }

  *[Symbol.iterator](): IterableIterator<Qcow2Snapshot> {
    for (let i = 0; i < this.length; i++) yield this.at(i);
  }
}

const ENTRY = structSpec("snapshot_entry");
const E = Object.fromEntries(ENTRY.fields.map((f) => [f.name, f.offset])) as Record<string, number>;

/**
 * The snapshots of input `input`, in table order; exactly `expected` of them.
 * Each SNAPSHOT record packs entries [first, first+count) into `used` bytes of
 * data: every entry, id and name is checked to lie inside them.
 */
export function qcow2Snapshots(recs: Rec[], input: number, expected: number): SnapshotList {
  const mine = recs.filter((r) => r.type === records.SNAPSHOT && r.fields.input === input);
  let total = 0;
  for (const r of mine) total += r.fields.used as number;
  const bytes = new Uint8Array(total);
  const offsets = new Uint32Array(expected);
  let n = 0;
  let base = 0;
  for (const r of mine) {
    const f = r.fields;
    const data = f.data as Uint8Array;
    const used = f.used as number;
    const count = f.count as number;
    if (f.first !== n) throw new GuestResultError(`snapshot record ${f.first} out of order`);
    if (count < 1 || count > expected - n) throw new GuestResultError("more snapshot records than snapshots");
    if (used > data.length) throw new GuestResultError(`snapshot record uses ${used} bytes`);
    bytes.set(data.subarray(0, used), base);
    const view = new DataView(data.buffer, data.byteOffset, used);
    let at = 0;
    for (let k = 0; k < count; k++) {
      if (at + ENTRY.size > used) throw new GuestResultError("snapshot entry runs past its record");
      const idLen = view.getUint16(at + E.id_len, true);
      const nameLen = view.getUint16(at + E.name_len, true);
      const text = at + ENTRY.size;
      cstr(data.subarray(text), idLen, 127, "snapshot id");
      cstr(data.subarray(text + idLen), nameLen, 255, "snapshot name");
      if (text + idLen + nameLen > used) throw new GuestResultError("snapshot entry runs past its record");
      offsets[n++] = base + at;
      at = (text + idLen + nameLen + 7) & ~7;
    }
    if (at !== used) throw new GuestResultError("snapshot record has bytes after its entries");
    base += used;
  }
  if (n !== expected) throw new GuestResultError(`expected ${expected} snapshot records, got ${n}`);
  return new SnapshotList(bytes, offsets);
}

/** The persistent bitmaps of input `input`, in directory order; exactly `expected` of them. */
export function qcow2Bitmaps(recs: Rec[], input: number, expected: number): Qcow2Bitmap[] {
  const out: Qcow2Bitmap[] = [];
  for (const r of recs) {
    if (r.type !== records.BITMAP || r.fields.input !== input) continue;
    const f = r.fields;
    if (out.length >= expected) throw new GuestResultError("more bitmap records than bitmaps");
    const flags = f.flags as number;
    const bits = f.granularity_bits as number;
    if (flags & ~3) throw new GuestResultError(`bitmap flags ${flags} out of range`);
    if (bits < 9 || bits > 31) throw new GuestResultError(`bitmap granularity bits ${bits} out of range`);
    out.push({
      name: cstr(f.name as Uint8Array, f.name_len as number, 1023, "bitmap name"),
      granularity: 1n << BigInt(bits),
      inUse: (flags & 1) !== 0,
      auto: (flags & 2) !== 0,
    });
  }
  if (out.length !== expected) {
    throw new GuestResultError(`expected ${expected} bitmap records, got ${out.length}`);
  }
  return out;
}
