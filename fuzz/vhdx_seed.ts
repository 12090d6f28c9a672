// Turns VHDX image files into the compact input of fuzz/targets/vhdx.c (see
// its header for the layout): the identifier, both headers, the region
// table, the metadata table and its first eight items, the BAT start and the
// log start. usage: deno run -A fuzz/vhdx_seed.ts OUT_DIR IMAGE...
const MD_GUID = "06a27c8b90479a4bb8fe575f050f886e";
const BAT_GUID = "6677c22d23f600429d64115e9bfd4a08";

export function vhdxSeed(img: Uint8Array, flags = 0): Uint8Array<ArrayBuffer> {
  const dv = new DataView(img.buffer, img.byteOffset, img.byteLength);
  const at = (off: number, n: number) => {
    const out = new Uint8Array(n);
    if (off < img.length) out.set(img.subarray(off, Math.min(img.length, off + n)));
    return out;
  };
  const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  const rt = at(0x30000, 512);
  const rdv = new DataView(rt.buffer);
  let M = -1, B = -1;
  for (let i = 0; i < 15; i++) {
    const g = hex(rt.subarray(16 + 32 * i, 32 + 32 * i));
    const off = Number(rdv.getBigUint64(16 + 32 * i + 16, true));
    if (g === MD_GUID && M < 0) M = off;
    if (g === BAT_GUID && B < 0) B = off;
  }
  const md = M >= 0 ? at(M, 512) : new Uint8Array(512);
  const items = new Uint8Array(64);
  if (M >= 0) {
    const mdv = new DataView(md.buffer);
    for (let i = 0; i < 8; i++) items.set(at(M + mdv.getUint32(32 + 32 * i + 16, true), 8), 8 * i);
  }
  const L = img.length >= 0x10000 + 80 ? Number(dv.getBigUint64(0x10000 + 72, true)) : 0;
  const out = new Uint8Array(2640 + 4096);
  const odv = new DataView(out.buffer);
  odv.setUint32(0, Math.ceil(img.length / 512), true);
  out[4] = flags;
  out.set(at(0, 8), 8);
  out.set(at(0x10000, 256), 16);
  out.set(at(0x20000, 256), 272);
  out.set(rt, 528);
  out.set(md, 1040);
  out.set(items, 1552);
  out.set(B >= 0 ? at(B, 1024) : new Uint8Array(1024), 1616);
  out.set(at(L, 4096), 2640);
  return out;
}

if (import.meta.main) {
  const [dir, ...files] = Deno.args;
  Deno.mkdirSync(dir, { recursive: true });
  for (const f of files) {
    for (const flags of [0, 7]) {
      const seed = vhdxSeed(Deno.readFileSync(f), flags);
      const h = new Uint8Array(await crypto.subtle.digest("SHA-1", seed));
      Deno.writeFileSync(`${dir}/${[...h].map((x) => x.toString(16).padStart(2, "0")).join("")}`, seed);
    }
  }
}
