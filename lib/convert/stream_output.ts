// `convert ... -` (the output on stdout): every byte goes out once, in file
// order. Raw output streams through a bounded buffer: the disk is cut into
// windows, a guest writes one window into an unnamed file (raw mode with an
// origin: guest byte `from` at file offset 0; holes stay holes and read as
// zeroes), and the host copies that file to stdout while the next window's
// guest runs into a second file. Other formats need their whole layout
// before the first byte (qcow2's header names tables placed after the data,
// a compressed cluster's size is known only once it is compressed): they are
// built whole in an unnamed file by the usable pipeline, then copied out.
// The host never interprets what it copies.
import { ops, records } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import { hostEnv } from "../host/context.ts";
import type { StdoutSink } from "../host/stdio_stream.ts";
import { type ConvertJob, GuestFailure } from "./pipeline.ts";

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;
/** The window one guest writes and the host then copies (two exist at once). */
const WINDOW = 128n << 20n;

function windowSize(): bigint {
  const mib = Number(hostEnv("INSTAR_STREAM_WINDOW_MIB") ?? "");
  return Number.isSafeInteger(mib) && mib >= 1 ? BigInt(mib) << 20n : WINDOW;
}

/**
 * Raw output to `sink`, window by window (see the module comment). `scratch`
 * makes an unnamed file and returns the path guests write it through.
 * Returns the data bytes the guests wrote.
 */
export async function convertRawToStream(
  job: ConvertJob,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  const w = windowSize();
  const files = [await scratch(), await scratch()];
  let written = 0n;
  let copying: Promise<void> = Promise.resolve();
  for (let from = 0n, k = 0; from < job.size; from += w, k++) {
    const to = from + w < job.size ? from + w : job.size;
    const path = files[k % 2];
    {
      using f = await Deno.open(path, { write: true });
      await f.truncate(0);
      await f.truncate(Number(to - from));
    }
    const guest = runGuest({
      op: "convert",
      opCode: ops.CONVERT,
      inputs: job.layers.map((l) => ({
        path: l.path,
        format: l.formatCode,
        nofollow: l.nofollow,
        snapshot: l.snapshot,
      })),
      args: [0n, 0n, job.minSparse, 0n, from, from, to],
      ramBytes: RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path, cap: to - from },
      onProgress: (d) => job.onProgress?.(from + d, job.size),
    });
    // The previous window goes out while this one is written; both settle
    // before either file is reused (a closed reader stops after this window).
    const [g, c] = await Promise.allSettled([guest, copying]);
    if (c.status === "rejected") throw c.reason;
    if (g.status === "rejected") throw g.reason;
    const recs = g.value.records;
    const err = recs.find((r) => r.type === records.ERROR);
    if (err) throw new GuestFailure(err);
    const done = recs.filter((r) => r.type === records.CONVERT_DONE);
    if (done.length !== 1) throw new Error("the guest did not report the end of its range");
    written += done[0].fields.bytes_written as bigint;
    copying = sink.copyFile(path, to - from);
    copying.catch(() => {}); // awaited in the next round; not an unhandled rejection meanwhile
  }
  await copying;
  return written;
}
