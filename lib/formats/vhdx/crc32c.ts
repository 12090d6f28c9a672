// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum VHDX
// uses for its headers, region tables and log entries.

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32C of `b` with the standard initial value and final inversion. */
export function crc32c(b: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < b.length; i++) crc = TABLE[(crc ^ b[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** Zeroes the 4-byte LE checksum at `at`, computes CRC-32C over `b`, stores it there. */
export function storeCrc32c(b: Uint8Array, at: number): void {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  dv.setUint32(at, 0, true);
  dv.setUint32(at, crc32c(b), true);
}
