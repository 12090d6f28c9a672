// `-` as an image name: stdin spooled into a private unnamed file, stdout as
// a sequential byte sink. The host moves opaque bytes here and never looks
// at them: a spooled stdin is parsed only by the guests, as any file is, and
// what goes to stdout is a file a guest (and the planner) already wrote.
// Spool and stream files are O_TMPFILE files (lib/vmm/unnamed_file.ts) in
// TMPDIR: they have no name, so nothing is left behind by an error, a
// cancel or a SIGKILL.
import { UnnamedFile } from "../vmm/unnamed_file.ts";
import { hostEnv } from "./context.ts";
import { type HostStdio, hostStdio } from "./stdio.ts";

/** Default bound of a spooled stdin (`--max-spool`). */
export const DEFAULT_MAX_SPOOL = 4n << 30n;

/** A refusal or failure of a `-` stream, worded for the CLI's one-line error. */
export class StreamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StreamError";
  }
}

/** The reader of stdout went away (EPIPE) after `offset` bytes. */
export class StreamClosed extends Error {
  constructor(readonly offset: bigint) {
    super(`error while writing at byte ${offset}: Broken pipe`);
    this.name = "StreamClosed";
  }
}

/** The directory spool and stream files are made in. */
export function spoolDir(): string {
  return hostEnv("TMPDIR") || "/tmp";
}

/** Creates an unnamed file in the spool directory. */
export async function unnamedSpool(): Promise<UnnamedFile> {
  const dir = spoolDir();
  const u = await UnnamedFile.create(dir);
  if (!u) {
    throw new StreamError(`cannot create an unnamed temporary file (O_TMPFILE) in '${dir}'; set TMPDIR`);
  }
  return u;
}

/**
 * Copies stdin into an unnamed file of at most `max` bytes and returns it
 * (its `path` is what guests open; close() discards it). A stream longer
 * than `max`, a terminal, or a read error is a StreamError (the file is
 * discarded first).
 */
export async function spoolStdin(max: bigint, prefix?: { path: string; len: bigint }): Promise<UnnamedFile> {
  const stdio = hostStdio();
  if (!prefix && stdio.isTerminal(0)) {
    throw new StreamError("stdin is a terminal; pipe or redirect an image into it");
  }
  const u = await unnamedSpool();
  try {
    using f = await Deno.open(u.path, { write: true });
    const buf = new Uint8Array(1 << 20);
    let total = 0n;
    // The stream's first bytes, already read into `prefix` (a vmdk stream that is not streamOptimized).
    if (prefix) {
      if (prefix.len > max) {
        throw new StreamError(`stdin holds more than the spool limit of ${max} bytes (--max-spool)`);
      }
      using src = await Deno.open(prefix.path, { read: true });
      for (let left = prefix.len; left > 0n;) {
        const n = await src.read(buf.subarray(0, left < BigInt(buf.length) ? Number(left) : buf.length));
        if (n === null) throw new StreamError("error while reading stdin: the spooled start ended early");
        let at = 0;
        while (at < n) at += await f.write(buf.subarray(at, n));
        left -= BigInt(n);
      }
      total = prefix.len;
    }
    for (;;) {
      const n = await stdio.read(buf);
      if (n === null) break;
      total += BigInt(n);
      if (total > max) {
        throw new StreamError(`stdin holds more than the spool limit of ${max} bytes (--max-spool)`);
      }
      let at = 0;
      while (at < n) at += await f.write(buf.subarray(at, n));
    }
    return u;
  } catch (e) {
    u.close();
    if (e instanceof StreamError) throw e;
    throw new StreamError(`error while reading stdin: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Sequential writes to stdout; a closed reader becomes StreamClosed. */
export class StdoutSink {
  written = 0n;
  private constructor(private stdio: HostStdio) {}

  /** Checks that stdout can take an image (a pipe, a FIFO, a socket or a regular file; never a terminal). */
  static open(): StdoutSink {
    const stdio = hostStdio();
    if (stdio.isTerminal(1)) {
      throw new StreamError("stdout is a terminal; redirect the image to a file or a pipe");
    }
    let st: Deno.FileInfo;
    try {
      st = Deno.statSync(stdio.statPath(1));
    } catch {
      throw new StreamError("stdout is closed");
    }
    if (!st.isFile && !st.isFifo && !st.isSocket) {
      throw new StreamError("stdout must be a pipe, a FIFO or a regular file");
    }
    return new StdoutSink(stdio);
  }

  async write(bytes: Uint8Array): Promise<void> {
    let at = 0;
    try {
      while (at < bytes.length) {
        const n = await this.stdio.write(bytes.subarray(at));
        at += n;
        this.written += BigInt(n);
      }
    } catch (e) {
      if (e instanceof Deno.errors.BrokenPipe) throw new StreamClosed(this.written);
      throw e;
    }
  }

  /** Copies [from, from + len) of the file at `path` (holes read as zeroes), in order. */
  async copyFile(path: string, len: bigint, from = 0n): Promise<void> {
    using f = await Deno.open(path, { read: true });
    if (from > 0n) await f.seek(from, Deno.SeekMode.Start);
    const buf = new Uint8Array(4 << 20);
    for (let left = len; left > 0n;) {
      const want = left < BigInt(buf.length) ? Number(left) : buf.length;
      const n = await f.read(buf.subarray(0, want));
      if (n === null) throw new Error("a stream file ended early");
      await this.write(buf.subarray(0, n));
      left -= BigInt(n);
    }
  }
}
