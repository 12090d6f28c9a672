// `instar inspect -`: a stream is read once, in chunks, and never stored
// whole. Its first PREFIX bytes and its last TAIL bytes go into a sparse,
// unnamed temporary file of the stream's full length (the rest is a hole);
// everything in between is only counted. The guest is told which bytes are
// real (inspectOpFlags.STREAM) and reports a check that needed a byte in the
// hole as incomplete instead of reading zeros. The host never looks at the
// bytes it moves.
import { UnnamedFile } from "../vmm/unnamed_file.ts";
import { hostEnv } from "../host/context.ts";
import { hostStdio } from "../host/stdio.ts";

/** Bytes of a stream's start the guest may read (vhdx metadata sits at 1-3 MiB). */
export const STREAM_PREFIX = 16 * 1024 * 1024;
/** Bytes of its end (a vmdk stream's footer, a VHD footer, a GPT backup header). */
export const STREAM_TAIL = 64 * 1024;
const CHUNK = 1024 * 1024;

export interface StreamWindow {
  /** The path the guest opens. */
  path: string;
  /** The stream's length. */
  size: bigint;
  /** Real bytes: [0, prefix) and [tailStart, size). */
  prefix: bigint;
  tailStart: bigint;
  close(): Promise<void>;
}

interface Reader {
  read(p: Uint8Array): Promise<number | null>;
}

/** Reads `source` to its end into a window file (see the module comment). */
export async function readStreamWindow(source: Reader = hostStdio()): Promise<StreamWindow> {
  const dir = hostEnv("TMPDIR") || "/tmp";
  const unnamed = await UnnamedFile.create(dir);
  let path: string;
  let cleanup: () => Promise<void>;
  if (unnamed) {
    path = unnamed.path;
    cleanup = () => Promise.resolve(unnamed.close());
  } else {
    path = await Deno.makeTempFile({ dir, prefix: "instar-inspect-" });
    cleanup = () => Deno.remove(path).catch(() => {});
  }
  try {
    const file = await Deno.open(path, { write: true });
    try {
      let size = 0;
      const tail = new Uint8Array(STREAM_TAIL);
      let tailFill = 0; // bytes of the ring in use (the last min(size - prefix, TAIL) past the prefix)
      let tailAt = 0; // next write position in the ring
      const buf = new Uint8Array(CHUNK);
      for (;;) {
        const n = await source.read(buf);
        if (n === null) break;
        let chunk = buf.subarray(0, n);
        if (size < STREAM_PREFIX) {
          const take = Math.min(n, STREAM_PREFIX - size);
          await writeAll(file, chunk.subarray(0, take), size);
          size += take;
          chunk = chunk.subarray(take);
        }
        for (let i = 0; i < chunk.length;) {
          const k = Math.min(chunk.length - i, STREAM_TAIL - tailAt);
          tail.set(chunk.subarray(i, i + k), tailAt);
          tailAt = (tailAt + k) % STREAM_TAIL;
          tailFill = Math.min(STREAM_TAIL, tailFill + k);
          i += k;
        }
        size += chunk.length;
      }
      const prefix = Math.min(size, STREAM_PREFIX);
      const tailStart = size - tailFill;
      if (tailFill) {
        const start = (tailAt - tailFill + STREAM_TAIL) % STREAM_TAIL;
        const ordered = new Uint8Array(tailFill);
        const first = Math.min(tailFill, STREAM_TAIL - start);
        ordered.set(tail.subarray(start, start + first), 0);
        ordered.set(tail.subarray(0, tailFill - first), first);
        await writeAll(file, ordered, tailStart);
      }
      await file.truncate(size);
      return {
        path,
        size: BigInt(size),
        prefix: BigInt(prefix),
        tailStart: BigInt(tailStart),
        close: cleanup,
      };
    } finally {
      file.close();
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array, at: number): Promise<void> {
  await file.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}
