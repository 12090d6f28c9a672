// convert -n into an existing encrypted qcow2 (LUKS, method 2, or the legacy
// AES, method 1), as nova and cinder run it (`qemu-img convert -n --object
// secret,... --target-image-opts driver=qcow2,encrypt.key-secret=ID,
// file.filename=DST SRC`). qemu opens the target (the passphrase must unlock
// a key slot of the LUKS header in its crypto header clusters), checks its
// size, and writes the source as into a plain qcow2 (zero clusters as zero
// writes, data clusters allocated in guest order), each data cluster
// encrypted for its host offset (LUKS) or guest offset (AES). The in-place
// writes are planned exactly as for a plain target (lib/formats/qcow2/
// write_plan.ts); the data moves go to the qcow2_encrypt guest's INTO mode
// (guest/ops/qcow2_crypt_into.c; qcow2_encrypt_luks2 for a LUKS2 source), which parses the target's LUKS header,
// unlocks it and encrypts: the host hands it the passphrase only and never
// sees a key or decodes a byte of the header.
// The same machinery writes an encrypted source (a LUKS-encrypted or AES
// qcow2, LUKS1, LUKS2) into an existing plain qcow2 (the guest's PLAIN flag:
// no target key, the clusters written as they read), as qemu-img converts
// it; only the source's passphrase reaches the guest.
import { formats, mapFlags, mapOpFlags, ops, qcow2EncryptFlags, records } from "../abi/spec.ts";
import { type GuestInput, runGuest } from "../vmm/guest.ts";
import type { SecretStore } from "../secrets/objects.ts";
import { GuestFailure } from "../convert/pipeline.ts";
import { CliError } from "./messages.ts";
import { type OpenedImage, OpenError, openFailure, unlockForRead } from "./image.ts";
import { COMPRESSED_ENTRIES, scanQcow2 } from "./scan_qcow2.ts";
import { type MapRun, mapRuns, MapRunsError } from "../chain/map_runs.ts";
import { applySteps } from "./apply_steps.ts";
import { encodeMoves, syncFile } from "./write_rounds.ts";
import type { IntoQcow2Job } from "./convert_into_qcow2.ts";
import { existingRuns } from "../formats/qcow2/commit_plan.ts";
import {
  type ExistingRun,
  planQcow2Writes,
  type WriteOp,
  type WritePlan,
} from "../formats/qcow2/write_plan.ts";
import { hostPath } from "../host/context.ts";

export interface IntoQcryptJob extends IntoQcow2Job {
  /** What qemu names in "Could not open '...'" (the operand as given). */
  display: string;
  /** --target-image-opts encrypt.key-secret= (and the option's name, for qemu's message). */
  keySecret?: string;
  keySecretOption?: string;
  secrets: SecretStore;
  kdfMaxIters: bigint;
  /** The source chain, opened (and unlocked) by the caller. */
  chain: OpenedImage[];
}

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;

function refuse(job: IntoQcryptJob, why: string): CliError {
  return new CliError([
    `Writing into '${job.display}' is not supported by instar convert: ${why}; nothing was written`,
  ]);
}

const RAM = 128 * 1024 * 1024;

/**
 * The qcow2_encrypt program for the job's source: qcow2_encrypt_luks2 (the
 * LUKS2 reader and Argon2 in place of the other readers, with the guest RAM
 * the source's Argon2 key slot needs) for a LUKS2 source.
 */
function encryptGuest(job: IntoQcryptJob): { op: string; ramBytes: number } {
  const luks2Ram = job.chain.some((x) => x.luks?.luks2) ? job.chain[0]?.luks2Ram : undefined;
  if (luks2Ram === undefined) return { op: "qcow2_encrypt", ramBytes: RAM };
  return { op: "qcow2_encrypt_luks2", ramBytes: luks2Ram > RAM ? luks2Ram : RAM };
}

/**
 * Unlocks the target as qemu's open does (its errors first, in qemu's
 * words), then checks its size: call before convertIntoQcrypt.
 */
export async function unlockQcryptTarget(job: IntoQcryptJob, img: OpenedImage): Promise<void> {
  try {
    await unlockForRead(img, job.keySecret, job.keySecretOption, job.secrets, [img]);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(job.display, e);
    throw e;
  }
  if (img.virtualSize < job.size) throw new CliError(["output file is smaller than input file"]);
}

/**
 * Writes the source into the unlocked encrypted qcow2 target `img`, or (an
 * encrypted source) into the plain qcow2 `img`. Returns the data bytes written.
 */
export async function convertIntoQcrypt(job: IntoQcryptJob, img: OpenedImage): Promise<bigint> {
  const q = img.qcow2!;
  const what = `error while writing into '${job.target}'`;
  const cb = BigInt(q.clusterBits);
  const plain = q.layout.cryptMethod === 0;
  if (!plain && img.secret === undefined) {
    throw new CliError(["Sandbox failure: the target was not unlocked"]);
  }
  if (job.size % q.clusterSize !== 0n && job.size < q.virtualSize) {
    throw refuse(job, "the source ends inside a cluster of the target");
  }
  // The target's runs with their host offsets (map's CRYPT_OFFSETS: qemu's
  // block status gives none for an encrypted image): data is rewritten in place.
  const targetMap = await cryptMap(img, what);
  const clusters = (job.size + q.clusterSize - 1n) >> cb;
  const existing = existingRuns(targetMap, q.clusterBits);
  const writes: WriteOp[] = job.minSparse === 0n
    ? (clusters > 0n ? [{ cluster: 0n, count: clusters, kind: "data" }] : [])
    : await classifyRequests(job, cb, clusters, existing);
  // A plain target may hold compressed clusters: the planner frees those it overwrites.
  const scan = await scanQcow2(img, what, plain ? COMPRESSED_ENTRIES : 0n);
  const plan = planQcow2Writes({
    scan,
    version: q.version,
    existing,
    ops: writes,
    sourceSize: job.size,
    discardFreed: true,
  });
  if (!plan.ok) throw refuse(job, plan.error.message);
  const total = writes.reduce((t, w) => t + (w.kind === "data" ? w.count << cb : 0n), 0n);
  // --target-is-zero with -S: in clusters the target maps, qemu skips the zero blocks.
  const sparse = job.targetIsZero ? job.minSparse : 0n;
  const mapped = existingRuns(targetMap, q.clusterBits).filter((r) =>
    r.kind === "normal" && r.host !== undefined
  )
    .map((r) => ({ from: r.host!, to: r.host! + (r.count << cb) }));
  let before = 0n;
  await applyCrypt(job, img, plan.value, sparse, mapped, (d, finished) => {
    if (finished) before += d;
    else job.onProgress?.(before + d, total);
  });
  return total;
}

/**
 * The source's clusters as qemu-img convert's requests touch them (-S > 0),
 * from the qcow2_encrypt guest's CLASSIFY mode (it reads encrypted sources
 * too): data, zeroes one write-zeroes request covers whole (a zero cluster),
 * and all-zero clusters split between requests, for which qemu's
 * qcow2_co_pwrite_zeroes asks whether the target cluster reads as zeroes:
 * a data cluster never does, encrypted or plain (its zeroes are then written,
 * encrypted), an unallocated or zero cluster does (a zero cluster).
 */
async function classifyRequests(
  job: IntoQcryptJob,
  cb: bigint,
  clusters: bigint,
  existing: ExistingRun[],
): Promise<WriteOp[]> {
  const r = await runGuest({
    ...encryptGuest(job),
    opCode: ops.QCOW2_ENCRYPT,
    inputs: job.source,
    flags: qcow2EncryptFlags.CLASSIFY,
    args: [0n, 0n, 0n, 0n, 0n, cb, job.minSparse, 0n],
    kdfMaxIters: job.kdfMaxIters,
    timeoutMs: TIMEOUT_MS,
  });
  const err = r.records.find((x) => x.type === records.ERROR);
  if (err) throw new GuestFailure(err, r.records);
  if (r.guestStatus !== 0n) throw new CliError(["Sandbox failure: guest reported an error without a reason"]);
  const mapped = (c: bigint) =>
    existing.some((e) =>
      (e.kind === "normal" || e.kind === "compressed") && c >= e.cluster && c < e.cluster + e.count
    );
  const runs: WriteOp[] = [];
  for (const x of r.records) {
    const f = x.fields;
    if (x.type !== records.DATA_RUN && x.type !== records.ZERO_RUN) continue;
    const first = f.guest_cluster as bigint, count = f.count as bigint;
    if (count < 1n || first + count > clusters) {
      throw new CliError(["Sandbox failure: inconsistent cluster runs"]);
    }
    if (x.type === records.DATA_RUN || f.host_offset === 0n) {
      runs.push({ cluster: first, count, kind: x.type === records.DATA_RUN ? "data" : "zero" });
    } else if (f.host_offset === 1n) {
      // Split zero clusters (few: where requests meet inside a cluster), one by one.
      for (let c = first; c < first + count; c++) {
        runs.push({ cluster: c, count: 1n, kind: mapped(c) && !job.targetIsZero ? "data" : "zero" });
      }
    } else {
      throw new CliError(["Sandbox failure: inconsistent cluster runs"]);
    }
  }
  runs.sort((a, b) => (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0));
  const writes: WriteOp[] = [];
  let next = 0n;
  for (const w of runs) {
    if (w.cluster !== next) throw new CliError(["Sandbox failure: the cluster runs do not cover the source"]);
    next = w.cluster + w.count;
    if (w.kind === "zero" && job.targetIsZero) continue;
    const last = writes[writes.length - 1];
    if (last && last.kind === w.kind && last.cluster + last.count === w.cluster) last.count += w.count;
    else writes.push({ ...w });
  }
  if (next !== clusters) throw new CliError(["Sandbox failure: the cluster runs do not cover the source"]);
  return writes;
}

/** The plan's rounds: the encrypted data through the guest, then the round's metadata steps. */
async function applyCrypt(
  job: IntoQcryptJob,
  img: OpenedImage,
  plan: WritePlan,
  sparse: bigint,
  mapped: { from: bigint; to: bigint }[],
  onMoved: (done: bigint, finished: boolean) => void,
): Promise<void> {
  const what = `error while writing into '${job.target}'`;
  const cb = BigInt(img.qcow2!.clusterBits);
  const IN_PLACE = 1n << 63n;
  const sorted = [...mapped].sort((x, y) => (x.from < y.from ? -1 : x.from > y.from ? 1 : 0));
  const inPlace = (h: bigint) => {
    if (sparse === 0n) return false;
    // The last mapped range starting at or before h (binary search).
    let lo = 0, hi = sorted.length - 1, best = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (sorted[mid].from <= h) {
        best = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return best >= 0 && h < sorted[best].to;
  };
  for (const round of plan.rounds) {
    // (Partial writes, which alone copy the target's own bytes, never come here.)
    if (round.selfCopies) throw new Error("the encrypted writer copies no target bytes");
    // One move per cluster run, marked where it rewrites clusters the target maps.
    const moves: { from: bigint; to: bigint; at: bigint }[] = [];
    for (const c of round.copies) {
      if (sparse === 0n) {
        // Nothing marked: the copy as one move.
        const from = c.cluster << cb;
        let to = (c.cluster + c.count) << cb;
        if (to > job.size) to = job.size;
        if (to > from) moves.push({ from, to, at: c.host });
        continue;
      }
      for (let i = 0n; i < c.count; i++) {
        const from = (c.cluster + i) << cb, host = c.host + (i << cb);
        let to = from + (1n << cb);
        if (to > job.size) to = job.size;
        if (to <= from) continue;
        const at = inPlace(host) ? host | IN_PLACE : host;
        const last = moves[moves.length - 1];
        if (last && last.to === from && last.at + (last.to - last.from) === at) last.to = to;
        else moves.push({ from, to, at });
      }
    }
    if (moves.length > 0) await encryptMoves(job, img, moves, plan.fileSize, sparse, onMoved);
    await syncFile(img, what);
    const st = await Deno.stat(hostPath(img.openPath));
    // The guest wrote whole clusters (the tails past the source encrypted zeroes):
    // the planner's plain zero tails are left out (they would overwrite them).
    const steps = dropTails(round.steps, round.copies, cb);
    await applySteps({ ...img, fileSize: BigInt(st.size) }, steps, what, "off", "discard");
  }
}

/** The steps without the plain zero tails the planner adds inside the round's data clusters. */
function dropTails(
  steps: WritePlan["rounds"][number]["steps"],
  copies: WritePlan["rounds"][number]["copies"],
  cb: bigint,
) {
  const inData = (off: bigint, len: bigint) =>
    copies.some((c) => off >= c.host && off + len <= c.host + (c.count << cb));
  return steps.map((s) => ({
    ...s,
    patches: s.patches.filter((p) => !(p.kind === "write" && inData(p.offset, BigInt(p.bytes.length)))),
  }));
}

/** One qcow2_encrypt INTO run: the moves' source bytes encrypted into the target (a plain one: as they read). */
async function encryptMoves(
  job: IntoQcryptJob,
  img: OpenedImage,
  moves: { from: bigint; to: bigint; at: bigint }[],
  cap: bigint,
  sparse: bigint,
  onMoved: (done: bigint, finished: boolean) => void,
): Promise<void> {
  const { bytes, total } = encodeMoves(moves);
  const dir = await Deno.makeTempDir({ prefix: "instar-moves-" });
  try {
    const path = `${dir}/moves`;
    await Deno.writeFile(path, bytes, { mode: 0o600 });
    const plain = img.qcow2!.layout.cryptMethod === 0;
    const inputs: GuestInput[] = [
      ...job.source,
      { path: img.openPath, format: formats.QCOW2, nofollow: false, secret: plain ? undefined : img.secret },
      { path, format: formats.RAW, nofollow: true },
    ];
    const r = await runGuest({
      ...encryptGuest(job),
      opCode: ops.QCOW2_ENCRYPT,
      inputs,
      flags: qcow2EncryptFlags.INTO | (plain ? qcow2EncryptFlags.PLAIN : 0),
      args: [BigInt(moves.length), total, BigInt(img.qcow2!.clusterBits), sparse],
      kdfMaxIters: job.kdfMaxIters,
      output: { path: img.openPath, cap },
      timeoutMs: TIMEOUT_MS,
      onProgress: (d) => onMoved(d, false),
    });
    const t = r.inputs[job.source.length];
    if (!t || t.dev !== img.dev || t.ino !== img.ino) {
      throw new CliError([`Could not open '${job.display}': File changed while it was being opened`]);
    }
    const err = r.records.find((x) => x.type === records.ERROR);
    if (err) throw new GuestFailure(err);
    if (r.guestStatus !== 0n) {
      throw new CliError(["Sandbox failure: guest reported an error without a reason"]);
    }
    onMoved(total, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The map guest's runs of the encrypted target, host offsets included (lib/chain/map_runs.ts
 * with CRYPT_OFFSETS); any failure the guest reports is an I/O error, as qemu words it. */
async function cryptMap(img: OpenedImage, what: string): Promise<MapRun[]> {
  let runs: MapRun[];
  try {
    runs = await mapRuns(
      [{ path: img.openPath, format: formats.QCOW2, nofollow: false }],
      what,
      mapOpFlags.CRYPT_OFFSETS,
    );
  } catch (e) {
    if (e instanceof MapRunsError) {
      throw new CliError([e.imageError ? `${what}: Input/output error` : e.message]);
    }
    throw e;
  }
  // A data run without its offset could not be placed: refused rather than guessed.
  for (const x of runs) {
    if ((x.flags & mapFlags.DATA) !== 0 && (x.flags & (mapFlags.OFFSET_VALID | mapFlags.COMPRESSED)) === 0) {
      throw new CliError([`${what}: sandbox failure: a data run without its offset`]);
    }
  }
  return runs;
}
