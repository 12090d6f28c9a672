// A qcow2 with many internal snapshots, made from one qemu-img made: the
// snapshot table is copied out n times (ids, names, dates and clocks made
// distinct) and appended at the end of the file. Used by the 65,536-snapshot
// listing test (tests/qcow2_snapshots_test.ts), scripts/bench_snapshots.ts
// and the overhanging-snapshot repairs (tests/check_repair_snapshot_overhang_test.ts).
import { setRefcount } from "./qcow2_edit.ts";

export interface ManyOptions {
  /**
   * Keeps the refcounts consistent: the copies of entry 0 carry no L1 table
   * (l1_size 0), the source's own snapshots keep theirs and sit at the start
   * or the end of the table, the new table's clusters are counted and the
   * old table's freed. Without it every copy shares entry 0's L1 table.
   */
  realAt?: "start" | "end";
  /**
   * Pads each copy's name so the copy takes exactly this many bytes (a
   * multiple of 8; names up to 65535 bytes): a large table with few entries.
   * With `realAt`, the copies keep at most 24 bytes of entry 0's extra data.
   */
  entryLength?: number;
  /** With `realAt`: the copies' extra data grown to this many bytes (0xa5 past entry 0's first 24). */
  extraLength?: number;
}

/**
 * The same image with `n` snapshots: the snapshot qemu-img made, copied
 * with its own id, name, date and clock into a table appended at the end.
 */
export async function manySnapshots(src: string, dst: string, n: number, o: ManyOptions = {}): Promise<void> {
  const f = await Deno.readFile(src);
  const v = new DataView(f.buffer);
  const nb = v.getUint32(60);
  if (o.realAt === undefined ? nb !== 1 : nb < 1 || nb > n) throw new Error("unexpected snapshot count");
  const off = Number(v.getBigUint64(64));
  // The source's entries, as they are.
  const real: Uint8Array[] = [];
  let end = off;
  for (let i = 0; i < nb; i++) {
    end = (end + 7) & ~7;
    const len = 40 + v.getUint32(end + 36) + v.getUint16(end + 12) + v.getUint16(end + 14);
    real.push(f.subarray(end, end + len));
    end += len;
  }
  const extra0 = v.getUint32(off + 36);
  const kept = o.realAt === undefined ? extra0 : Math.min(extra0, 24);
  const extra = o.realAt === undefined ? extra0 : o.extraLength ?? kept;
  const entry = new Uint8Array(40 + extra).fill(0xa5);
  entry.set(f.subarray(off, off + 40 + Math.min(kept, extra)));
  new DataView(entry.buffer).setUint32(36, extra);
  const parts: Uint8Array[] = [];
  let size = 0;
  const enc = new TextEncoder();
  const copies = o.realAt === undefined ? n : n - nb;
  const first = o.realAt === "start" ? nb : 0;
  for (let i = first; i < first + copies; i++) {
    const id = enc.encode(String(i + 1));
    const pad = o.entryLength === undefined ? 0 : o.entryLength - 40 - extra - id.length;
    const name = enc.encode(`snapshot-${i}`.padEnd(pad, "x"));
    const len = (40 + extra + id.length + name.length + 7) & ~7;
    if (o.entryLength !== undefined && (len !== o.entryLength || name.length > 65535)) {
      throw new Error("no name makes an entry that long");
    }
    const e = new Uint8Array(len);
    e.set(entry);
    const ev = new DataView(e.buffer);
    if (o.realAt !== undefined) {
      ev.setBigUint64(0, 0n);
      ev.setUint32(8, 0);
    }
    ev.setUint16(12, id.length);
    ev.setUint16(14, name.length);
    ev.setUint32(16, ev.getUint32(16) + i);
    ev.setBigUint64(24, BigInt(i) * 1000003n);
    e.set(id, 40 + extra);
    e.set(name, 40 + extra + id.length);
    parts.push(e);
    size += len;
  }
  if (o.realAt !== undefined) {
    const padded = real.map((e) => {
      const p = new Uint8Array((e.length + 7) & ~7);
      p.set(e);
      return p;
    });
    parts.splice(o.realAt === "start" ? 0 : parts.length, 0, ...padded);
    size += padded.reduce((s, e) => s + e.length, 0);
  }
  const cluster = 1 << v.getUint32(20);
  const at = Math.ceil(f.length / cluster) * cluster;
  const out = new Uint8Array(Math.ceil((at + size) / cluster) * cluster);
  out.set(f);
  let p = at;
  for (const e of parts) {
    out.set(e, p);
    p += e.length;
  }
  const ov = new DataView(out.buffer);
  ov.setUint32(60, n);
  ov.setBigUint64(64, BigInt(at));
  await Deno.writeFile(dst, out);
  if (o.realAt !== undefined) {
    for (let c = Math.floor(off / cluster); c < Math.ceil(end / cluster); c++) setRefcount(dst, c, 0n);
    for (let c = at / cluster; c < out.length / cluster; c++) setRefcount(dst, c, 1n);
  }
}
