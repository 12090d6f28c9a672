// Byte edits of a qemu-made qcow2's bitmap data, for tests of what qemu
// never writes itself: bits set in a bitmap's data cluster (past its end
// too), or a table entry set to 1 (all ones).
/** An edit of bitmap `bm` (directory order) of a qcow2 file: bits of table entry k's cluster, or the entry set to 1. */
export type Edit = {
  bm: number;
  k: number;
  set?: number[];
  clear?: number[];
  allOnes?: boolean;
  file?: string;
};

export async function edit(path: string, e: Edit) {
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
