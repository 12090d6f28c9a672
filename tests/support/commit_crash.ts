// Shared scaffolding of the in-place qcow2 writer's crash tests
// (write_crash_test, snapshot_cow_crash_test): the commit of `ov.qcow2` into
// its base planned as commit plans it, the plan applied and stopped after a
// given number of actions (a round's data copy, each metadata step), and the
// check that a stopped plan left at most leaked clusters.
import { ok as assert } from "node:assert/strict";
import type { Outcome } from "../cli_helpers.ts";
import { chainInputs, openChain, type OpenedImage, openImage } from "../../lib/cli/image.ts";
import { makePolicy } from "../../lib/chain/policy.ts";
import { scanQcow2 } from "../../lib/cli/scan_qcow2.ts";
import { mapRuns } from "../../lib/chain/map_runs.ts";
import { moveData } from "../../lib/cli/write_rounds.ts";
import { applySteps } from "../../lib/cli/apply_steps.ts";
import { commitOps, existingRuns } from "../../lib/formats/qcow2/commit_plan.ts";
import { planQcow2Writes, type WritePlan } from "../../lib/formats/qcow2/write_plan.ts";
import { formats } from "../../lib/abi/spec.ts";

/** A shell line running qemu-io's commands on `file`, its output dropped. */
export { io } from "./convert_compare.ts";

export interface CommitJob {
  chain: OpenedImage[];
  base: OpenedImage;
  clusterBits: number;
  plan: WritePlan;
}

/** Opens `dir`/ov.qcow2 and its base and plans the commit into the base. */
export async function planCommitIntoBase(dir: string): Promise<CommitJob> {
  const top = await openImage(`${dir}/ov.qcow2`, {});
  const chain = await openChain(top, await makePolicy(`${dir}/ov.qcow2`, []), false);
  const base = chain[1];
  const size = top.virtualSize;
  const cb = base.qcow2!.clusterBits;
  const plan = planQcow2Writes({
    scan: await scanQcow2(base, "test"),
    version: base.qcow2!.version,
    existing: existingRuns(
      await mapRuns([{ path: base.openPath, format: formats.QCOW2, nofollow: false }], "test"),
      cb,
    ),
    ops: commitOps(await mapRuns(chainInputs(chain), "test"), 1, cb, size),
    sourceSize: size,
  });
  assert(plan.ok, plan.ok ? "" : plan.error.message);
  return { chain, base, clusterBits: cb, plan: plan.value };
}

/** Applies the plan to the base at `path`, stopped after `stopAfter` actions: how many ran, or -1 when all did. */
export async function applyCommitUntil(job: CommitJob, path: string, stopAfter: number): Promise<number> {
  const { chain, base, plan } = job;
  const cb = BigInt(job.clusterBits);
  let done = 0;
  for (const round of plan.rounds) {
    if (done++ === stopAfter) return done;
    const moves = round.copies.map((c) => ({
      from: c.cluster << cb,
      to: (c.cluster + c.count) << cb,
      at: c.host,
    }));
    await moveData(chainInputs(chain), base, moves, plan.fileSize, "test");
    for (const step of round.steps) {
      if (done++ === stopAfter) return done;
      const st = await Deno.stat(path);
      await applySteps({ ...base, fileSize: BigInt(st.size) }, [step], "test", "off", "discard");
    }
  }
  return -1;
}

/** `qemu-img check` after a stopped plan: clean (0) or leaked clusters only (3), no corruption. */
export function assertLeaksAtMost(chk: Outcome, k: number): void {
  assert(chk.code === 0 || chk.code === 3, `after ${k} actions: ${chk.stdout}${chk.stderr}`);
  assert(!/ERROR/.test(chk.stdout + chk.stderr), `after ${k} actions: ${chk.stdout}${chk.stderr}`);
}
