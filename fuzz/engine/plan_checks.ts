// Helpers shared by the TypeScript fuzz targets: plan invariants (seed 003's
// list over lib/formats/plan.ts's FilePlan) and optional planner modules
// (planners land at different times; a target wires whatever exists).
import {
  type FilePlan,
  I64_MAX,
  MAX_PATCHES,
  type PlanResult,
  planViolation,
} from "../../lib/formats/plan.ts";
import { type Cov, invariant, sizeClass } from "./ts_target.ts";

const KINDS = new Set(["overflow", "invalid_option", "invalid_size", "unsupported"]);

/**
 * Checks a FilePlan independently of planViolation and then with it:
 * patch count <= MAX_PATCHES, offsets >= 0, offset + length <= fileSize <=
 * INT64_MAX (no overflow, every write inside the file), no two patches
 * overlapping, write lengths > 0.
 */
export function checkPlan(plan: FilePlan, what: string, cov: Cov): void {
  invariant(plan.patches.length <= MAX_PATCHES, `${what}: ${plan.patches.length} patches`);
  invariant(plan.fileSize >= 0n && plan.fileSize <= I64_MAX, `${what}: file size ${plan.fileSize}`);
  const spans: [bigint, bigint][] = [];
  for (const p of plan.patches) {
    const len = p.kind === "write" ? BigInt(p.bytes.length) : p.length;
    invariant(p.offset >= 0n && len >= 0n, `${what}: patch at ${p.offset} length ${len}`);
    const end = p.offset + len;
    invariant(end <= plan.fileSize, `${what}: patch [${p.offset}, ${end}) passes file size ${plan.fileSize}`);
    spans.push([p.offset, end]);
    cov.hit(`${what}:patch:${p.kind}:${sizeClass(len)}`);
  }
  spans.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  for (let i = 1; i < spans.length; i++) {
    invariant(spans[i - 1][1] <= spans[i][0], `${what}: patches [${spans[i - 1]}) and [${spans[i]}) overlap`);
  }
  const v = planViolation(plan);
  invariant(v === undefined, `${what}: planViolation: ${v}`);
  cov.hit(`${what}:patches:${sizeClass(BigInt(plan.patches.length))}`);
  cov.hit(`${what}:file:${sizeClass(plan.fileSize)}`);
}

/** A refusal must be a typed PlanError with a message; its text is a coverage feature. */
export function checkResult<T>(r: PlanResult<T>, what: string, cov: Cov): r is { ok: true; value: T } {
  if (r.ok) {
    cov.hit(`${what}:ok`);
    return true;
  }
  invariant(KINDS.has(r.error.kind), `${what}: unknown error kind ${r.error.kind}`);
  invariant(
    typeof r.error.message === "string" && r.error.message.length > 0,
    `${what}: empty error message`,
  );
  cov.hit(`${what}:err:${r.error.kind}:${r.error.message.replace(/\d+/g, "N").slice(0, 80)}`);
  return false;
}

/** Imports a planner module when it exists (undefined when not there yet). */
export async function optional<T>(path: string): Promise<T | undefined> {
  const url = new URL(path, import.meta.url);
  try {
    Deno.statSync(url);
  } catch {
    return undefined;
  }
  return await import(url.href) as T;
}
