// Preallocation of a file range as zeroes, as qemu's file-posix does for
// preallocation=falloc (posix_fallocate, through the VMM library) and full
// (zeroes written). Used by create and by convert's created targets.
import { fileRange } from "../vmm/guest.ts";
import { hostPath } from "./context.ts";

/**
 * Allocates [offset, offset+length) as zeroes: posix_fallocate for
 * preallocation=falloc (as qemu's file-posix does, through the VMM library),
 * real zeroes written for full.
 */
export async function allocate(
  filename: string,
  offset: bigint,
  length: bigint,
  mode: string,
): Promise<void> {
  if (length <= 0n) return;
  if (mode === "falloc") {
    const st = await Deno.stat(hostPath(filename));
    const why = await fileRange("allocate", filename, offset, length, BigInt(st.dev), BigInt(st.ino ?? 0));
    if (why !== undefined) throw new Error(`Could not preallocate new data: ${why}`);
    return;
  }
  const f = await Deno.open(hostPath(filename), { write: true });
  try {
    const chunk = new Uint8Array(1 << 20);
    const end = offset + length;
    await f.seek(offset, Deno.SeekMode.Start);
    for (let at = offset; at < end;) {
      const n = end - at < BigInt(chunk.length) ? Number(end - at) : chunk.length;
      let done = 0;
      while (done < n) done += await f.write(chunk.subarray(done, n));
      at += BigInt(n);
    }
  } finally {
    f.close();
  }
}
