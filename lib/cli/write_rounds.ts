// Applies an in-place write plan (lib/formats/qcow2/write_plan.ts) to the
// target: per round, the data first, moved by the copy_runs guest from the
// source chain straight into the planned host offsets of the target (one
// guest run per round, nothing decoded on the host), synced, then the
// round's metadata steps through applySteps (each synced). Also the raw
// target's writer (the same guest writing guest byte x at offset x).
import { formats, limits, ops, records } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { CliError } from "./messages.ts";
import { errnoText, type OpenedImage } from "./image.ts";
import { applySteps } from "./apply_steps.ts";
import type { WritePlan } from "../formats/qcow2/write_plan.ts";
import { hostEnv, hostPath } from "../host/context.ts";

const RAM = 128 * 1024 * 1024;
const TIMEOUT_MS = 7 * 24 * 3600 * 1000;

/** One data move: source bytes [from, to) to target offset `at`. */
export interface Move {
  from: bigint;
  to: bigint;
  at: bigint;
}

/** From this many bytes on, two copy_runs guests share the moves (one per core). */
const SPLIT_MIN = 64n << 20n;

/**
 * The move list a copying guest reads (copy_runs, qcow2_encrypt's INTO
 * mode): per move three u64 LE {from, to, at}; and the bytes it moves.
 */
export function encodeMoves(moves: Move[]): { bytes: Uint8Array; total: bigint } {
  const bytes = new Uint8Array(moves.length * 24);
  const dv = new DataView(bytes.buffer);
  let total = 0n;
  moves.forEach((m, i) => {
    dv.setBigUint64(i * 24, m.from, true);
    dv.setBigUint64(i * 24 + 8, m.to, true);
    dv.setBigUint64(i * 24 + 16, m.at, true);
    total += m.to - m.from;
  });
  return { bytes, total };
}

/**
 * The moves cut in two lists of about equal bytes, for two guests at once
 * (or one list: fewer than SPLIT_MIN bytes, INSTAR_GUESTS=1). A move may be
 * cut inside; the cut lies on a multiple of `align` in guest offsets
 * (copy_runs' sparse blocks are aligned there). The lists are disjoint in
 * guest and in target bytes, as the moves are, so neither guest reads what
 * the other writes: a move rewrites in place only the clusters it reads.
 */
export function splitMoves(moves: Move[], align: bigint, forced?: string): Move[][] {
  const total = moves.reduce((t, m) => t + (m.to - m.from), 0n);
  if (forced === "1" || (forced !== "2" && total < SPLIT_MIN)) return [moves];
  const half = total / 2n;
  let seen = 0n;
  for (let i = 0; i < moves.length; i++) {
    const m = moves[i], len = m.to - m.from;
    if (seen + len <= half) {
      seen += len;
      continue;
    }
    // The cut falls in move i: at an aligned guest offset in (from, to), else at a move's edge.
    let cut = ((m.from + (half - seen)) / align) * align;
    if (cut <= m.from) cut = m.from;
    if (cut >= m.to) cut = m.to;
    const a = moves.slice(0, i), b = moves.slice(i + 1);
    if (cut > m.from) a.push({ from: m.from, to: cut, at: m.at });
    if (cut < m.to) b.unshift({ from: cut, to: m.to, at: m.at + (cut - m.from) });
    return a.length > 0 && b.length > 0 ? [a, b] : [moves];
  }
  return [moves];
}

/**
 * Copies each move's bytes of the source chain (`source`, top first) to the
 * target file through the copy_runs guest: the moves go to it as a list in
 * a private temporary file (its last input); from SPLIT_MIN bytes on two
 * guests run at once, each with half (splitMoves). `cap` bounds every write
 * offset. Then syncs the target.
 */
export async function moveData(
  source: GuestInput[],
  target: Pick<OpenedImage, "openPath" | "dev" | "ino">,
  moves: Move[],
  cap: bigint,
  what: string,
  /** Bytes moved so far in this call; `finished` once, at its end. */
  onMoved?: (done: bigint, finished: boolean) => void,
  /** Blocks of this many bytes that read as zeroes are not written (0: everything is). */
  sparse = 0n,
): Promise<void> {
  const list = moves.filter((m) => m.to > m.from);
  if (list.length > 0) {
    if (source.length + 1 > limits.MAX_INPUTS) throw new CliError([`${what}: the backing chain is too long`]);
    const parts = splitMoves(list, sparse > 0n ? sparse : 1n << 20n, hostEnv("INSTAR_GUESTS"));
    // Write-behind (the VMM starts writeback as the guests write; syncFile
    // below then waits for less): from SPLIT_MIN bytes, where the final
    // flush is long. Not below: early writeback allocates blocks in write
    // order instead of file order, and a small out-of-order output (a
    // preallocated qcow2) then gets an extent block qemu's file has not
    // (4 KiB more `disk size`, tests/convert_prealloc_test.ts). Large
    // outputs get more extents than qemu-img's (17-36 against 6 for a 512
    // MiB commit, measured 2026-12-07) at the same allocated size.
    const writeBehind = list.reduce((t, m) => t + (m.to - m.from), 0n) >= SPLIT_MIN;
    const done = parts.map(() => 0n);
    let total = 0n;
    const dir = await Deno.makeTempDir({ prefix: "instar-moves-" });
    try {
      // allSettled: a failing guest must not leave the other writing after we return.
      const settled = await Promise.allSettled(parts.map(async (part, k) => {
        const { bytes, total: bytesOf } = encodeMoves(part);
        total += bytesOf;
        const path = `${dir}/moves${k}`;
        await Deno.writeFile(path, bytes, { mode: 0o600 });
        try {
          return await runGuest({
            op: "copy_runs",
            opCode: ops.COPY_RUNS,
            inputs: [...source, { path, format: formats.RAW, nofollow: true }],
            args: [BigInt(part.length), bytesOf, sparse],
            ramBytes: RAM,
            timeoutMs: TIMEOUT_MS,
            output: { path: target.openPath, cap },
            writeBehind,
            onProgress: (d) => {
              done[k] = d;
              onMoved?.(done.reduce((t, x) => t + x, 0n), false);
            },
          });
        } catch (e) {
          throw new CliError([`${what}: ${e instanceof Error ? e.message : String(e)}`]);
        }
      }));
      for (const r of settled) if (r.status === "rejected") throw r.reason;
      for (const r of settled) {
        const result = (r as PromiseFulfilledResult<Awaited<ReturnType<typeof runGuest>>>).value;
        if (result.records.some((r) => r.type === records.ERROR) || result.guestStatus !== 0n) {
          throw new CliError([`${what}: Input/output error`]);
        }
      }
      onMoved?.(total, true);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  await syncFile(target, what);
}

export async function syncFile(img: Pick<OpenedImage, "openPath" | "dev" | "ino">, what: string) {
  let f: Deno.FsFile | undefined;
  try {
    f = await Deno.open(hostPath(img.openPath), { read: true, write: true });
    const st = await f.stat();
    if (BigInt(st.dev) !== img.dev || BigInt(st.ino ?? 0) !== img.ino) {
      throw new CliError([`${what}: the file changed while it was being written`]);
    }
    await f.syncData();
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError([`${what}: ${errnoText(e)}`]);
  } finally {
    f?.close();
  }
}

async function currentSize(img: OpenedImage): Promise<bigint> {
  const st = await Deno.stat(hostPath(img.openPath));
  return BigInt(st.size);
}

/**
 * Applies the plan's rounds in order. `sourceSize` is the source's virtual
 * size: copies stop there (the planner wrote zero tails past it).
 */
export async function applyWritePlan(
  plan: WritePlan,
  source: GuestInput[],
  target: OpenedImage,
  sourceSize: bigint,
  what: string,
  onMoved?: (done: bigint, finished: boolean) => void,
  /** moveData's `sparse`: zero blocks not written (a target known to read as zeroes). */
  sparse = 0n,
  /** Clusters written only in part (convert -n -B): just these source byte ranges of each are copied. */
  pieces?: Map<bigint, [bigint, bigint][]>,
  /** The target's chain as guest inputs (top first), for the plan's selfCopies; default the target alone. */
  self: GuestInput[] = [{ path: target.openPath, format: formats.QCOW2, nofollow: false }],
): Promise<void> {
  const cap = plan.fileSize;
  const cb = BigInt(target.qcow2!.clusterBits);
  for (const round of plan.rounds) {
    const moves: Move[] = [];
    const whole = (cluster: bigint, count: bigint, host: bigint) => {
      const from = cluster << cb;
      let to = (cluster + count) << cb;
      if (to > sourceSize) to = sourceSize;
      moves.push({ from, to, at: host });
    };
    for (const c of round.copies) {
      if (!pieces) {
        whole(c.cluster, c.count, c.host);
        continue;
      }
      // Runs of whole clusters between the partly written ones.
      let start = c.cluster;
      for (let k = c.cluster; k < c.cluster + c.count; k++) {
        const list = pieces.get(k);
        if (!list) continue;
        if (k > start) whole(start, k - start, c.host + ((start - c.cluster) << cb));
        for (const [from, to] of list) {
          moves.push({
            from,
            to: to > sourceSize ? sourceSize : to,
            at: c.host + ((k - c.cluster) << cb) + (from - (k << cb)),
          });
        }
        start = k + 1n;
      }
      if (c.cluster + c.count > start) {
        whole(start, c.cluster + c.count - start, c.host + ((start - c.cluster) << cb));
      }
    }
    await moveData(source, target, moves, cap, what, onMoved, sparse);
    // The rest of compressed or unallocated clusters written in part: the
    // target's own bytes as it reads now (nothing points at the new clusters yet).
    if (round.selfCopies) await moveData(self, target, round.selfCopies, cap, what);
    // The guest may have extended the file: the steps start from its length now.
    const size = await currentSize(target);
    // Zero patches are freed clusters qemu discards (punched, best effort).
    await applySteps({ ...target, fileSize: size }, round.steps, what, "off", "discard");
  }
}
