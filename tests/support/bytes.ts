// Byte helpers the tests share: SHA-256 hex digests (of bytes, of a file) and an all-zero test.

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

/**
 * The SHA-256 hex digest of a file's first `limit` bytes (all of it by
 * default), computed by coreutils' sha256sum: test images reach 1 GB, which
 * read into the JS heap and hashed there took ~15 s each.
 */
export async function fileSha256(path: string, limit = Infinity): Promise<string> {
  const args = limit === Infinity
    ? ["-c", 'exec sha256sum -b -- "$1"', "sh", path]
    : ["-c", 'head -c "$2" -- "$1" | sha256sum -b', "sh", path, String(limit)];
  const o = await new Deno.Command("sh", { args, stdout: "piped", stderr: "piped" }).output();
  const err = new TextDecoder().decode(o.stderr);
  if (!o.success || err) throw new Error(`sha256sum ${path}: ${err.trim() || `exit ${o.code}`}`);
  const hex = new TextDecoder().decode(o.stdout).slice(0, 64);
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`sha256sum ${path}: unexpected output`);
  return hex;
}

/**
 * Whether two files hold the same bytes: equal sizes and `qemu-img compare`
 * of the two as raw, which skips holes (SEEK_DATA) where hashing a 1 GB
 * sparse file reads every zero of it.
 */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  if ((await Deno.stat(a)).size !== (await Deno.stat(b)).size) return false;
  const o = await new Deno.Command("qemu-img", {
    args: ["compare", "-q", "-f", "raw", "-F", "raw", "--", a, b],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (o.code > 1) throw new Error(`qemu-img compare ${a} ${b}: ${new TextDecoder().decode(o.stderr).trim()}`);
  return o.code === 0;
}
