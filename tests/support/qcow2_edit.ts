// Edits qcow2 images that qemu-img made, as a crash or another writer would
// leave them: refcounts set by hand (leaks, refcounts too low or high) and
// the header's incompatible-feature bits, refcount table entries, persistent
// bitmaps' bits, in-use flags and table entries (the bitmap tail tests),
// snapshot entries' extra data (the snapshot-table repair tests). Used by tests/check_repair_test.ts
// and fuzz:diff's repair operation to make inputs for check -r.

/** Sets the refcount of `cluster` in the qcow2 at `path` (growing the file to hold the cluster). */
export function setRefcount(path: string, cluster: number, value: bigint): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    const h = new Uint8Array(104);
    f.readSync(h);
    const dv = new DataView(h.buffer);
    const cs = 1 << dv.getUint32(20);
    const version = dv.getUint32(4);
    const bits = 1 << (version >= 3 ? dv.getUint32(96) : 4);
    const per = (cs * 8) / bits;
    const e = new Uint8Array(8);
    f.seekSync(Number(dv.getBigUint64(48)) + 8 * Math.floor(cluster / per), Deno.SeekMode.Start);
    f.readSync(e);
    const block = Number(new DataView(e.buffer).getBigUint64(0));
    if (block === 0) throw new Error("no refcount block for that cluster");
    if (f.statSync().size < (cluster + 1) * cs) f.truncateSync((cluster + 1) * cs);
    const bit = (cluster % per) * bits;
    const b = new Uint8Array(Math.max(1, bits / 8));
    f.seekSync(block + Math.floor(bit / 8), Deno.SeekMode.Start);
    f.readSync(b);
    if (bits >= 8) {
      for (let i = b.length - 1, v = value; i >= 0; i--, v >>= 8n) b[i] = Number(v & 0xffn);
    } else {
      const shift = bit % 8, mask = ((1 << bits) - 1) << shift;
      b[0] = (b[0] & ~mask) | ((Number(value) << shift) & mask);
    }
    f.seekSync(block + Math.floor(bit / 8), Deno.SeekMode.Start);
    f.writeSync(b);
  } finally {
    f.close();
  }
}

/** Sets the incompatible-features bits of a version 3 header. */
export function setIncompat(path: string, bits: bigint): void {
  const f = Deno.openSync(path, { write: true });
  try {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, bits);
    f.seekSync(72, Deno.SeekMode.Start);
    f.writeSync(b);
  } finally {
    f.close();
  }
}

/** An edit of bitmap `bm` (directory order) of a qcow2 file: bits of table entry k's cluster, or the entry set to 1. */
export type BitmapEdit = { bm: number; k: number; set?: number[]; clear?: number[]; allOnes?: boolean };

/** Applies `e` to the qcow2 at `path` (a bitmap written as another writer might leave it). */
export async function editBitmap(path: string, e: BitmapEdit): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const read = async (at: bigint, n: number) => {
      const b = new Uint8Array(n);
      await f.seek(Number(at), Deno.SeekMode.Start);
      for (let o = 0; o < n;) o += (await f.read(b.subarray(o)))!;
      return b;
    };
    const write = async (at: bigint, b: Uint8Array) => {
      await f.seek(Number(at), Deno.SeekMode.Start);
      for (let o = 0; o < b.length;) o += await f.write(b.subarray(o));
    };
    const h = new DataView((await read(0n, 4096)).buffer);
    let dir = -1n;
    for (let at = h.getUint32(100); at + 8 <= 4096;) {
      const type = h.getUint32(at), len = h.getUint32(at + 4);
      if (type === 0) break;
      if (type === 0x23852875) dir = h.getBigUint64(at + 24);
      at += 8 + ((len + 7) & ~7);
    }
    if (dir < 0n) throw new Error("no bitmaps extension");
    for (let i = 0; i < e.bm; i++) {
      const nameLen = new DataView((await read(dir + 18n, 2)).buffer).getUint16(0);
      dir += BigInt((24 + nameLen + 7) & ~7);
    }
    const table = new DataView((await read(dir, 8)).buffer).getBigUint64(0);
    const at = table + BigInt(e.k) * 8n;
    if (e.allOnes) {
      const one = new Uint8Array(8);
      one[7] = 1;
      await write(at, one);
      return;
    }
    const entry = new DataView((await read(at, 8)).buffer).getBigUint64(0) & 0x00fffffffffffe00n;
    if (entry === 0n) throw new Error("the entry has no data cluster");
    const top = Math.max(...e.set!, ...(e.clear ?? []));
    const bytes = await read(entry, (top >> 3) + 1);
    for (const i of e.set!) bytes[i >> 3] |= 1 << (i & 7);
    for (const i of e.clear ?? []) bytes[i >> 3] &= ~(1 << (i & 7));
    await write(entry, bytes);
  } finally {
    f.close();
  }
}

/**
 * Rewrites the snapshot table with entry i's extra area resized to
 * sizes[i] bytes (cut, or grown with bytes 0xa0 + i); the table stays in
 * its cluster. A table that gets shorter has its old tail zeroed.
 */
export function resizeSnapshotExtras(path: string, sizes: Map<number, number>): void {
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
    const extra = sizes.get(i);
    if (extra !== undefined) {
      const n = new Uint8Array(40 + extra + idLen + nameLen).fill(0xa0 + i);
      n.set(e.subarray(0, 40 + Math.min(ext, extra)));
      n.set(e.subarray(40 + ext), 40 + extra);
      new DataView(n.buffer).setUint32(36, extra);
      e = n;
    }
    entries.push(e);
    at += len;
  }
  const out = new Uint8Array(Math.max(entries.reduce((s, e) => s + e.length + 8, 0), at - table));
  let o = 0;
  for (const e of entries) {
    o = (o + 7) & ~7;
    out.set(e, o);
    o += e.length;
  }
  if (o > 60000) throw new Error("the table would leave its cluster");
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    f.seekSync(table, Deno.SeekMode.Start);
    f.writeSync(out.subarray(0, Math.max(o, at - table)));
  } finally {
    f.close();
  }
}

/** Sets refcount table entry `index` to `value` (big-endian u64). */
export function setReftableEntry(path: string, index: number, value: (old: bigint) => bigint): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    const h = new Uint8Array(64);
    f.readSync(h);
    const at = Number(new DataView(h.buffer).getBigUint64(48)) + index * 8;
    const e = new Uint8Array(8);
    f.seekSync(at, Deno.SeekMode.Start);
    f.readSync(e);
    new DataView(e.buffer).setBigUint64(0, value(new DataView(e.buffer).getBigUint64(0)));
    f.seekSync(at, Deno.SeekMode.Start);
    f.writeSync(e);
  } finally {
    f.close();
  }
}

/** Sets the in-use flag of every bitmap directory entry (a writer that never closed the image). */
export function setBitmapsInUse(path: string): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    const h = new Uint8Array(4096);
    f.readSync(h);
    const dv = new DataView(h.buffer);
    for (let o = dv.getUint32(100); o + 8 <= h.length;) {
      const type = dv.getUint32(o), len = dv.getUint32(o + 4);
      if (type === 0) break;
      if (type === 0x23852875) {
        const n = dv.getUint32(o + 8), dir = Number(dv.getBigUint64(o + 24));
        const e = new Uint8Array(24);
        for (let k = 0, at = dir; k < n; k++) {
          f.seekSync(at, Deno.SeekMode.Start);
          f.readSync(e);
          const ev = new DataView(e.buffer);
          ev.setUint32(12, ev.getUint32(12) | 1);
          f.seekSync(at, Deno.SeekMode.Start);
          f.writeSync(e);
          at += (24 + ev.getUint32(16) + ev.getUint16(20) + ev.getUint16(22) + 7) & ~7;
        }
      }
      o += 8 + ((len + 7) & ~7);
    }
  } finally {
    f.close();
  }
}
