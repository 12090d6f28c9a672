// qemu-img rebase in safe mode (img_rebase without -u): every cluster the
// overlay does not allocate and where the old and the new backing file
// differ gets the old backing file's contents (zeroes past its end), so the
// overlay reads the same afterwards; then the header names the new backing
// file (the -u header rewrite, lib/formats/qcow2/rebase_plan.ts), last.
// The rebase_diff guest finds the clusters, the write planner
// (lib/formats/qcow2/write_plan.ts) places them, the copy_runs guest moves
// the old backing file's bytes into the overlay. The old chain and the new
// backing file pass the backing allowlist; only the overlay is written.
import { ops, records } from "../abi/spec.ts";
import { checkBacking, fileKey, makePolicy, PolicyError } from "../chain/policy.ts";
import { runGuest } from "../vmm/guest.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { CliError } from "./messages.ts";
import {
  chainInputs,
  chainNeedsNoKey,
  chainOpenMessage,
  needsNoKey,
  openChain,
  type OpenedImage,
  OpenError,
  openImage,
} from "./image.ts";
import { scanQcow2 } from "./scan_qcow2.ts";
import { applyWritePlan } from "./write_rounds.ts";
import { planQcow2Writes, type WriteOp } from "../formats/qcow2/write_plan.ts";
import { diffFlags, limits } from "../abi/spec.ts";
import { hostEnv, hostPath } from "../host/context.ts";

/** From this disk size on, two rebase_diff guests compare one half each. */
const DIFF_SPLIT_MIN = 64n << 20n;

export interface SafeRebaseJob {
  filename: string;
  /** What "Could not open '...'" names (--image-opts: the operand as given). */
  display?: string;
  fmt?: string;
  /** The new backing file name as given ("" = none). */
  backing: string;
  backingFmt?: string;
  unsafeQuirks: boolean;
  backingDirs: string[];
  /** Unlocks an encrypted overlay with the --image-opts key-secret (else refused as qemu's open refuses it). */
  unlock?: (img: OpenedImage) => Promise<void>;
}

/** Opens the overlay (read-write) with its old chain and the new backing chain. */
export async function openForSafeRebase(
  job: SafeRebaseJob,
): Promise<{ old: OpenedImage[]; neu: OpenedImage[] }> {
  let old: OpenedImage[];
  let policy;
  try {
    const top = await openImage(job.filename, {
      format: job.fmt,
      unsafeQuirks: job.unsafeQuirks,
      lock: LOCKS.write,
      noLists: true,
    });
    // After the open: a missing file fails as qemu's open does, not in realpath.
    policy = await makePolicy(job.filename, job.backingDirs);
    if (job.unlock) await job.unlock(top);
    else needsNoKey(top);
    old = await openChain(top, policy, job.unsafeQuirks, LOCKS.read);
    chainNeedsNoKey(old, 1);
  } catch (e) {
    if (e instanceof OpenError) throw new CliError([chainOpenMessage(job.display ?? job.filename, e)]);
    throw e;
  }
  if (job.backing === "") return { old, neu: [] };
  const newFailed = (inner: string) =>
    new CliError([`Could not open new backing file '${job.backing}': ${inner}`]);
  try {
    const seen = new Set([fileKey(old[0].dev, old[0].ino)]);
    const link = await checkBacking(policy, old[0].filename, job.backing, 0, seen);
    const img = await openImage(link.filename, {
      format: job.backingFmt,
      unsafeQuirks: job.unsafeQuirks,
      openPath: link.realPath,
      nofollow: true,
      lock: LOCKS.read,
    });
    needsNoKey(img);
    const neu = await openChain(img, policy, job.unsafeQuirks, LOCKS.read);
    chainNeedsNoKey(neu);
    return { old, neu };
  } catch (e) {
    if (e instanceof OpenError) {
      throw newFailed(chainOpenMessage(e.filename, e).replace(/^Could not open '[^']*': /, ""));
    }
    if (e instanceof PolicyError) throw newFailed(e.message);
    if (e instanceof Deno.errors.NotFound) {
      throw newFailed(`Could not open '${job.backing}': No such file or directory`);
    }
    throw e;
  }
}

/** Copies the clusters that differ into the overlay `old[0]`. */
export async function copyDifferences(old: OpenedImage[], neu: OpenedImage[], what: string): Promise<void> {
  const top = old[0], q = top.qcow2!;
  const overlayInput = { path: top.openPath, format: top.formatCode, nofollow: false };
  const oldInputs = chainInputs(old.slice(1)).map((x) => ({ ...x, nofollow: true }));
  const newInputs = chainInputs(neu).map((x) => ({ ...x, nofollow: true }));
  if (1 + oldInputs.length + newInputs.length > limits.MAX_INPUTS) {
    throw new CliError([
      `${what}: the old and new backing chains together are too long (at most ${limits.MAX_INPUTS} images)`,
    ]);
  }
  // Two guests compare the two halves of the disk at once (one per core),
  // from DIFF_SPLIT_MIN on; their runs come back in disk order.
  const size = q.virtualSize;
  const forced = hostEnv("INSTAR_GUESTS");
  const half = ((size / 2n) >> 22n) << 22n; // a multiple of 4 MiB, so of every cluster size
  const cuts = forced === "1" || half === 0n || (forced !== "2" && size < DIFF_SPLIT_MIN)
    ? [[0n, 0n]]
    : [[0n, half], [half, 0n]];
  const settled = await Promise.allSettled(cuts.map(([from, to]) =>
    runGuest({
      op: "rebase_diff",
      opCode: ops.REBASE_DIFF,
      inputs: [overlayInput, ...oldInputs, ...newInputs],
      args: [BigInt(1 + oldInputs.length), BigInt(q.clusterBits), 0n, 0n, from, to],
      ramBytes: 64 * 1024 * 1024,
      timeoutMs: 7 * 24 * 3600 * 1000,
    })
  ));
  const writes: WriteOp[] = [];
  const clusters = (size + q.clusterSize - 1n) / q.clusterSize;
  let prev = 0n;
  for (const s of settled) {
    if (s.status === "rejected") {
      const e = s.reason;
      throw new CliError([`${what}: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
    }
    const result = s.value;
    if (result.records.some((r) => r.type === records.ERROR) || result.guestStatus !== 0n) {
      throw new CliError([`${what}: Input/output error`]);
    }
    for (const r of result.records) {
      if (r.type !== records.DIFF_RUN) continue;
      const cluster = r.fields.cluster as bigint, count = r.fields.count as bigint;
      const flags = r.fields.flags as number;
      if (count < 1n || cluster < prev || cluster + count > clusters || (flags & ~diffFlags.OLD_ZERO) !== 0) {
        throw new CliError([`${what}: sandbox failure: inconsistent cluster runs`]);
      }
      prev = cluster + count;
      const kind = flags & diffFlags.OLD_ZERO ? "zero" : "data";
      // A run the cut between the halves split is one run again, as one guest reports it.
      const last = writes[writes.length - 1];
      if (last && last.kind === kind && last.cluster + last.count === cluster) last.count += count;
      else writes.push({ cluster, count, kind });
    }
  }
  if (writes.length === 0) return;
  // Without the compressed entries: as img_rebase, the writes go only where
  // the overlay allocates nothing (existing: [] below), so its compressed
  // clusters are never overwritten; the refcounts place the new clusters
  // around them (tests/compressed_targets_test.ts).
  const scan = await scanQcow2(top, what);
  const sourceSize = old.length > 1 ? old[1].virtualSize : 0n;
  const plan = planQcow2Writes({ scan, version: q.version, existing: [], ops: writes, sourceSize });
  if (!plan.ok) throw new CliError([`${what}: ${plan.error.message}`]);
  await applyWritePlan(plan.value, oldInputs, top, sourceSize, what);
  // The header rewrite that follows starts from the file as it now is.
  const st = await Deno.stat(hostPath(top.openPath));
  top.fileSize = BigInt(st.size);
}
