// Byte helpers the resize tests share: a SHA-256 hex digest and an all-zero test.

export async function digest(b: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", b.slice());
  return Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, "0")).join("");
}

export function isZero(b: Uint8Array): boolean {
  const words = Math.floor(b.length / 8);
  const w = new BigUint64Array(b.buffer.slice(b.byteOffset, b.byteOffset + words * 8));
  for (let i = 0; i < w.length; i++) if (w[i] !== 0n) return false;
  for (let i = words * 8; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
