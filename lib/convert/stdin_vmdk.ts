// `convert -f vmdk - OUT` (OUT a raw or qcow2 file) for a streamOptimized
// stream: stdin read in one pass, never stored whole. Grains carry their own
// LBA, so the stream is decoded in order, window by window:
//
//   1. the host copies the next stream window into an unnamed file at the
//      bytes' own stream offsets (a hole before them), after the part of the
//      previous window the guest had not consumed (an item cut by the
//      window's end);
//   2. the vmdk_stream guest (guest/vmdk/stream.c) parses that part (header
//      and descriptor first, then markers), checks every size and LBA, and
//      writes the inflated grains into a disk window file at their disk
//      offsets; it reports where the next window's parse starts (`restart`)
//      and below which disk byte the disk is final (`frontier`: grains come
//      in disk order);
//   3. the convert guest converts [from, cut) of the disk window file into
//      the target exactly as for a raw stream (lib/convert/stdin_raw.ts),
//      `cut` being the frontier rounded down to the target's cluster; the
//      decoded bytes in [cut, frontier) are carried into the next disk window
//      (two disk windows in turn: window k converts while k + 1 decodes).
//
// The host only moves opaque bytes (stdin into a file, a file's tail into
// the next file) and reads the guests' records; it never looks at the
// stream. The header's capacity is known after the first window, so a qcow2
// target is planned for the real size. A stream whose header is not a
// streamOptimized one with markers (monolithicSparse, a descriptor, ...) is
// spooled instead: `openVmdkStdin` returns the first window for the spool.
import { formats, guestErrors, ops, records, vmdkStreamFlags as F } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { runGuest } from "../vmm/guest.ts";
import type { HostStdio } from "../host/stdio.ts";
import { StreamError } from "../host/stdio_stream.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import { alignUp } from "../formats/plan.ts";
import { vmdkErrorText } from "../formats/vmdk/errors.ts";
import { type ConvertJob, failOnError, GuestFailure, type Part } from "./pipeline.ts";
import { convertRange, type OnePassTarget } from "./stdin_raw.ts";

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;
/** Stream bytes per window; the first window must hold the header region (at most 64 MiB). */
const WINDOW = 128n << 20n;
/** A window may grow this far past its start to hold one item (a grain directory) before the stream is refused. */
const ITEM_MAX = 256n << 20n;
const CHUNK = 1 << 20;
/** The largest grain the stream guest inflates (guest/vmdk/vmdk.h VMDK_COMPRESSED_GRAIN_MAX). */
const GRAIN_MAX = 4n << 20n;

/** What the stream guest reported for one window (re-validated against the header's bounds). */
interface Decoded {
  flags: bigint;
  grains: bigint;
  tableGrains: bigint;
  head: bigint;
  capacity: bigint;
  grain: bigint;
  restart: bigint;
  frontier: bigint;
  prevEnd: bigint;
}

/** The start of a vmdk stream that is not streamOptimized: spool it, these bytes first. */
export interface NotAStream {
  kind: "spool";
  prefix: { path: string; len: bigint };
}

/** A streamOptimized stream whose first window is decoded. */
export interface VmdkStream {
  kind: "stream";
  /** The disk's size in bytes (the header's capacity). */
  size: bigint;
  state: StreamState;
}

interface StreamState {
  stdio: HostStdio;
  files: string[];
  /** The two disk windows (inflated grains at their disk offsets), used in turn. */
  disks: string[];
  cur: number;
  send: bigint;
  eof: boolean;
  dwin: bigint;
  w: bigint;
  d: Decoded;
  /** Disk byte where the next convert starts. */
  from: bigint;
  head: string;
  /** Grains decoded so far, and (TABLES) how many the header's grain tables name. */
  grains: bigint;
  tableGrains: bigint;
  /** The previous window's restart (a window that consumed nothing grows). */
  prevRestart?: bigint;
}

/** The error text for a stream guest's ERROR record, qemu's words where qemu has them. */
function failureText(e: GuestFailure): string {
  const f = e.record.fields;
  const a0 = f.a0 as bigint, a1 = f.a1 as bigint, a2 = f.a2 as bigint;
  if (Number(f.code) === guestErrors.FORMAT) {
    switch (Number(a0)) {
      case 40:
        return `the vmdk stream ended inside a grain or marker at byte ${a1}; did the stream end early?`;
      case 41:
        return `the vmdk stream ended at byte ${a1} without an end-of-stream marker; did the stream end early?`;
      case 42:
        return `a grain marker names sector ${a1}, which is not a grain of the ${a2}-sector disk`;
      case 43:
        return `a grain marker names sector ${a1}, before the previous grain's end (sector ${a2}); ` +
          "a stream must hold its grains in disk order";
      case 44:
        return `a compressed grain of ${a1} bytes at byte ${a2} is larger than a grain allows`;
      case 45:
        return `the grain at byte ${a1} does not inflate to a whole grain`;
      case 46:
        return `unknown or malformed marker (type ${a1}) at byte ${a2}`;
      case 47:
        return "Invalid footer";
      case 48:
        return `the header region (${a1} bytes) is larger than a stream window`;
      case 49:
        return "an image read from stdin may not name a backing file";
      case 50:
        return `the vmdk stream's grain directory or a grain table (sector ${a1}) lies outside its header region`;
      case 51:
        return `the grain for sector ${a1} lies at stream sector ${a2}, not where the grain tables say`;
    }
    return vmdkErrorText(a0, a1, a2, undefined, "-");
  }
  if (Number(f.code) === guestErrors.IO) return "Input/output error";
  return `the vmdk stream could not be read (guest error ${f.code})`;
}

async function stream<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof GuestFailure) throw new StreamError(`Could not open '-': ${failureText(e)}`);
    throw e;
  }
}

/** Appends stdin to `path` from stream byte `at` until `to` or the end: the new end. */
async function fill(
  stdio: HostStdio,
  path: string,
  at: bigint,
  to: bigint,
): Promise<{ end: bigint; eof: boolean }> {
  using f = await Deno.open(path, { write: true });
  await f.seek(at, Deno.SeekMode.Start);
  const buf = new Uint8Array(CHUNK);
  let end = at;
  while (end < to) {
    const want = to - end < BigInt(CHUNK) ? Number(to - end) : CHUNK;
    let n: number | null;
    try {
      n = await stdio.read(buf.subarray(0, want));
    } catch (e) {
      throw new StreamError(
        `Could not open '-': error while reading stdin: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    if (n === null) return { end, eof: true };
    for (let k = 0; k < n;) k += await f.write(buf.subarray(k, n));
    end += BigInt(n);
  }
  return { end, eof: false };
}

/** Copies [from, to) of file `src` to the same offsets of `dst` (opaque bytes; holes read as zeroes). */
async function copyRange(src: string, dst: string, from: bigint, to: bigint): Promise<void> {
  if (to <= from) return;
  using s = await Deno.open(src, { read: true });
  using d = await Deno.open(dst, { write: true });
  await s.seek(from, Deno.SeekMode.Start);
  await d.seek(from, Deno.SeekMode.Start);
  const buf = new Uint8Array(CHUNK);
  for (let left = to - from; left > 0n;) {
    const n = await s.read(buf.subarray(0, left < BigInt(CHUNK) ? Number(left) : CHUNK));
    if (n === null) {
      // Past the source's end: zeroes (a hole).
      if (BigInt((await d.stat()).size) < to) await d.truncate(Number(to));
      return;
    }
    for (let k = 0; k < n;) k += await d.write(buf.subarray(k, n));
    left -= BigInt(n);
  }
}

async function truncate(path: string, size: bigint): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.truncate(Number(size));
}

async function sizeOf(path: string): Promise<bigint> {
  return BigInt((await Deno.stat(path)).size);
}

function decoded(recs: Rec[], first: boolean, prev?: Decoded): Decoded {
  const rs = recs.filter((r) => r.type === records.VMDK_STREAM);
  if (rs.length !== 1) throw new Error("the vmdk stream guest did not report its window");
  const f = rs[0].fields;
  const d: Decoded = {
    flags: f.flags as bigint,
    grains: f.grains as bigint,
    tableGrains: f.table_grains as bigint,
    head: f.head as bigint,
    capacity: f.capacity as bigint,
    grain: f.grain as bigint,
    restart: f.restart as bigint,
    frontier: f.frontier as bigint,
    prevEnd: f.prev_end as bigint,
  };
  if (d.flags & BigInt(F.NOT_STREAM)) return d;
  // Fixed bounds (the guest checked the header; these keep the host's arithmetic sane).
  const cap = d.capacity * 512n;
  if (d.capacity >= 1n << 54n || d.frontier > cap || (!first && prev && d.capacity !== prev.capacity)) {
    throw new Error("the vmdk stream guest reported an impossible window");
  }
  return d;
}

/** The most a stream guest may write into its disk window file. */
function outputCap(from: bigint, dwin: bigint, prev?: Decoded): bigint {
  const cap = from + dwin + GRAIN_MAX;
  return prev && prev.capacity * 512n < cap ? prev.capacity * 512n : cap;
}

async function decode(
  s: { head?: string },
  disk: string,
  file: string,
  first: boolean,
  start: bigint,
  send: bigint,
  eof: boolean,
  from: bigint,
  dwin: bigint,
  prev?: Decoded,
): Promise<Decoded> {
  let flags = (first ? F.FIRST : 0) | (eof ? F.FINAL : 0);
  if (prev) flags |= Number(prev.flags & BigInt(F.FOOTER));
  const r = await runGuest({
    op: "vmdk_stream",
    opCode: ops.VMDK_STREAM,
    inputs: [file, ...(first ? [] : [s.head!])].map((path) => ({
      path,
      format: formats.RAW,
      nofollow: false,
      snapshot: 0,
    })),
    args: [
      BigInt(flags),
      start,
      send,
      from,
      dwin,
      prev?.capacity ?? 0n,
      prev?.grain ?? 0n,
      prev?.prevEnd ?? 0n,
    ],
    ramBytes: RAM,
    timeoutMs: TIMEOUT_MS,
    // The decoded disk: a window decodes grains that start below from + dwin (each at most 4 MiB,
    // guest/vmdk/vmdk.h VMDK_COMPRESSED_GRAIN_MAX), inside the header's capacity.
    output: { path: disk, cap: outputCap(from, dwin, prev) },
  });
  failOnError(r.records);
  const d = decoded(r.records, first, prev);
  if (!(d.flags & BigInt(F.NOT_STREAM)) && (d.restart < start || d.restart > send)) {
    throw new Error("the vmdk stream guest reported a restart outside its window");
  }
  return d;
}

/**
 * Reads the first window of a vmdk stream on `stdio` and decodes it. `scratch`
 * makes an unnamed file and returns its path. A stream that is not
 * streamOptimized comes back as the bytes read so far, for the spool.
 */
export async function openVmdkStdin(
  stdio: HostStdio,
  scratch: () => Promise<string>,
  windowBytes = WINDOW,
): Promise<VmdkStream | NotAStream> {
  if (stdio.isTerminal(0)) {
    throw new StreamError("Could not open '-': stdin is a terminal; pipe or redirect an image into it");
  }
  const w = alignUp(windowBytes < 1n << 20n ? 1n << 20n : windowBytes, 512n);
  const files = [await scratch(), await scratch()];
  const disks = [await scratch(), await scratch()];
  const { end, eof } = await fill(stdio, files[0], 0n, w);
  const base = { stdio, files, disks };
  const d = await stream(() => decode({}, disks[0], files[0], true, 0n, end, eof, 0n, w));
  if (d.flags & BigInt(F.NOT_STREAM)) return { kind: "spool", prefix: { path: files[0], len: end } };
  // The header region stays readable for every later window (the guest checks each grain against the
  // header's grain tables there): its bytes, copied as they are.
  if (d.head > end) throw new Error("the vmdk stream guest reported a header region past its window");
  const head = await scratch();
  await copyRange(files[0], head, 0n, d.head);
  const state: StreamState = {
    ...base,
    head,
    cur: 0,
    send: end,
    eof,
    dwin: w,
    w,
    d,
    from: 0n,
    grains: d.grains,
    tableGrains: d.tableGrains,
  };
  return { kind: "stream", size: d.capacity * 512n, state };
}

/**
 * Converts the stream opened by openVmdkStdin into `out`. `job.size` is the
 * disk's size (VmdkStream.size). Returns the data bytes written.
 */
export async function convertVmdkStdin(
  job: ConvertJob,
  target: OnePassTarget,
  out: string,
  opened: VmdkStream,
): Promise<bigint> {
  const s = opened.state;
  const size = opened.size;
  const packing = target.kind === "qcow2" ? target.packed.packing : undefined;
  const unit = packing ? (packing.clusterSize > 512n ? packing.clusterSize : 512n) : 512n;
  if (s.dwin < 2n * unit) s.dwin = 2n * unit;
  const parts: Part[] = [];
  let written = 0n;
  let prevData = packing?.dataStart ?? 0n;
  let d = s.d;
  // Two disk windows: window k's convert (one guest) runs while window k + 1 is read from stdin and
  // decoded (another guest) into the other disk window file. Converts run in order (a qcow2 window's
  // data starts where the previous one's ended).
  let k = 0;
  let converting: Promise<void> = Promise.resolve();
  const convertWindow = async (disk: string, from: bigint, cut: bigint) => {
    const r = await convertRange(job, disk, from, cut, packing, prevData, out);
    written += r.written;
    if (r.part) {
      parts.push(r.part);
      if (r.part.dataEnd > prevData) prevData = r.part.dataEnd;
    }
    job.onProgress?.(cut, size);
  };
  try {
    for (;;) {
      const disk = s.disks[k % 2];
      const eos = (d.flags & BigInt(F.EOS)) !== 0n;
      const cut = eos ? size : (d.frontier / unit) * unit;
      const from = s.from;
      const before = converting;
      if (cut > from) {
        if ((await sizeOf(disk)) < cut) await truncate(disk, cut);
        converting = before.then(() => convertWindow(disk, from, cut));
      }
      converting.catch(() => {}); // awaited below
      if (eos) {
        await converting;
        // Every grain decoded was where its table says; the tables must name no other.
        if ((d.flags & BigInt(F.TABLES)) && s.grains !== s.tableGrains) {
          throw new StreamError(
            `Could not open '-': the vmdk stream's grain tables name ${s.tableGrains} grains, the stream holds ${s.grains}; did the stream end early?`,
          );
        }
        await finishStream(s, d);
        break;
      }
      // The other disk window is free once the previous window's convert is done; it starts with the
      // decoded bytes past this window's cut.
      await before;
      const nextDisk = s.disks[(k + 1) % 2];
      await truncate(nextDisk, 0n);
      if (cut < d.frontier) await writeAt(nextDisk, cut, await readRange(disk, cut, d.frontier));
      s.from = cut > from ? cut : from;
      // The next stream window: the part not consumed, then more of stdin.
      const next = s.files[(s.cur + 1) % 2];
      await truncate(next, 0n);
      await copyRange(s.files[s.cur], next, d.restart, s.send);
      const progressed = d.restart > (s.prevRestart ?? -1n);
      let want = d.restart + s.w;
      if (!progressed) want = s.send + s.w; // one item larger than a window: grow it
      if (want - d.restart > s.w + ITEM_MAX) {
        throw new StreamError("Could not open '-': a vmdk stream item is too large");
      }
      let send = s.send, eof = s.eof;
      if (!eof && want > send) ({ end: send, eof } = await fill(s.stdio, next, send, want));
      s.prevRestart = d.restart;
      s.cur = (s.cur + 1) % 2;
      s.send = send;
      s.eof = eof;
      const prev = d;
      d = await stream(() => decode(s, nextDisk, next, false, prev.restart, send, eof, s.from, s.dwin, prev));
      s.grains += d.grains;
      k++;
    }
  } catch (e) {
    await converting.catch(() => {}); // no guest left writing the output
    throw e;
  }
  if (target.kind === "raw") {
    await truncate(out, size);
  } else {
    await applyPlan(out, target.packed.finish(parts));
  }
  return written;
}

/** After the end-of-stream marker: a footer-at-end stream must end there (qemu reads its footer 1536 bytes before the end); any other stream's trailing bytes are drained and ignored. */
async function finishStream(s: StreamState, d: Decoded): Promise<void> {
  const strict = (d.flags & BigInt(F.GD_AT_END)) !== 0n;
  let extra = s.send > d.restart;
  const buf = new Uint8Array(CHUNK);
  while (!s.eof) {
    let n: number | null;
    try {
      n = await s.stdio.read(buf);
    } catch (e) {
      throw new StreamError(
        `Could not open '-': error while reading stdin: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    if (n === null) break;
    if (n > 0) extra = true;
    if (strict && extra) break;
  }
  if (strict && extra) {
    throw new StreamError(
      "Could not open '-': Invalid footer (the vmdk stream goes on after its end-of-stream marker)",
    );
  }
}

async function readRange(path: string, from: bigint, to: bigint): Promise<Uint8Array> {
  const buf = new Uint8Array(Number(to - from));
  using f = await Deno.open(path, { read: true });
  await f.seek(from, Deno.SeekMode.Start);
  let at = 0;
  while (at < buf.length) {
    const n = await f.read(buf.subarray(at));
    if (n === null) break; // past the end: zeroes
    at += n;
  }
  return buf;
}

async function writeAt(path: string, at: bigint, bytes: Uint8Array): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.seek(at, Deno.SeekMode.Start);
  for (let k = 0; k < bytes.length;) k += await f.write(bytes.subarray(k));
}
