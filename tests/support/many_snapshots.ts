// A qcow2 with many internal snapshots, made from one qemu-img made: the
// snapshot table is copied out n times (ids, names, dates and clocks made
// distinct) and appended at the end of the file. Used by the 65,536-snapshot
// listing test (tests/qcow2_snapshots_test.ts) and scripts/bench_snapshots.ts.

/**
 * The same image with `n` snapshots: the one snapshot qemu-img made, copied
 * with its own id, name, date and clock into a table appended at the end.
 */
export async function manySnapshots(src: string, dst: string, n: number): Promise<void> {
  const f = await Deno.readFile(src);
  const v = new DataView(f.buffer);
  if (v.getUint32(60) !== 1) throw new Error("expected one snapshot");
  const off = Number(v.getBigUint64(64));
  const extra = v.getUint32(off + 36);
  const entry = f.subarray(off, off + 40 + extra);
  const parts: Uint8Array[] = [];
  let size = 0;
  const enc = new TextEncoder();
  for (let i = 0; i < n; i++) {
    const id = enc.encode(String(i + 1));
    const name = enc.encode(`snapshot-${i}`);
    const len = (40 + extra + id.length + name.length + 7) & ~7;
    const e = new Uint8Array(len);
    e.set(entry);
    const ev = new DataView(e.buffer);
    ev.setUint16(12, id.length);
    ev.setUint16(14, name.length);
    ev.setUint32(16, ev.getUint32(16) + i);
    ev.setBigUint64(24, BigInt(i) * 1000003n);
    e.set(id, 40 + extra);
    e.set(name, 40 + extra + id.length);
    parts.push(e);
    size += len;
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
}
