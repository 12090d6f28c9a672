// Edits qcow2 images that qemu-img made, as a crash or another writer would
// leave them: refcounts set by hand (leaks, refcounts too low or high) and
// the header's incompatible-feature bits. Used by tests/check_repair_test.ts
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
