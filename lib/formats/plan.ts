// Shared shapes of the pure planners (create, measure, resize, convert
// output). Planners do no I/O: they take typed options and sizes (bigint)
// and return either a value or a typed error. Deep arithmetic never throws;
// an overflow becomes { kind: "overflow" }. The CLI turns a PlanError into
// qemu-img's message, which is why `message` holds qemu-img's exact text.

export type PlanErrorKind = "overflow" | "invalid_option" | "invalid_size" | "unsupported";

export interface PlanError {
  kind: PlanErrorKind;
  /** qemu-img's text for this refusal, without the "instar: " prefix. */
  message: string;
}

export type PlanResult<T> = { ok: true; value: T } | { ok: false; error: PlanError };

export function ok<T>(value: T): PlanResult<T> {
  return { ok: true, value };
}

export function fail<T = never>(kind: PlanErrorKind, message: string): PlanResult<T> {
  return { ok: false, error: { kind, message } };
}

/** Write `bytes` at `offset`. */
export interface WritePatch {
  kind: "write";
  offset: bigint;
  bytes: Uint8Array;
}

/** Make [offset, offset+length) read as zeroes (a hole or explicit zeroes). */
export interface ZeroPatch {
  kind: "zero";
  offset: bigint;
  length: bigint;
}

/**
 * Copy [from, from+length) of the file, as it was before the plan, to
 * offset: a structure the image already holds (a VHD or VHDX BAT) moved
 * verbatim to a place with room for it. The bytes are never interpreted on
 * the host; the guest checked them when it scanned the image.
 */
export interface CopyPatch {
  kind: "copy";
  offset: bigint;
  from: bigint;
  length: bigint;
}

export type Patch = WritePatch | ZeroPatch | CopyPatch;

/** A planner's output: patches to apply, then the file is set to fileSize. */
export interface FilePlan {
  patches: Patch[];
  fileSize: bigint;
}

/** The most patches any planner may return; the applier refuses more. */
export const MAX_PATCHES = 4096;

export const U64_MAX = (1n << 64n) - 1n;
export const I64_MAX = (1n << 63n) - 1n;

function patchEnd(p: Patch): bigint {
  return p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
}

/**
 * The invariants every plan keeps: at most MAX_PATCHES patches, no negative
 * offsets, every patch ends within fileSize, no two patches overlap.
 * Returns a description of the first broken one, or undefined. The applier
 * and the planner tests and fuzz targets all call this.
 */
export function planViolation(plan: FilePlan): string | undefined {
  if (plan.patches.length > MAX_PATCHES) return `${plan.patches.length} patches > ${MAX_PATCHES}`;
  if (plan.fileSize < 0n || plan.fileSize > I64_MAX) return `file size ${plan.fileSize} out of range`;
  const sorted = [...plan.patches].sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  let prevEnd = 0n;
  for (const p of sorted) {
    if (p.offset < 0n) return `patch at negative offset ${p.offset}`;
    if (p.kind !== "write" && p.length < 0n) return `${p.kind} patch of negative length at ${p.offset}`;
    const end = patchEnd(p);
    if (end > plan.fileSize) return `patch [${p.offset}, ${end}) passes the file size ${plan.fileSize}`;
    if (p.offset < prevEnd) return `patch at ${p.offset} overlaps one ending at ${prevEnd}`;
    prevEnd = end;
  }
  // A copy reads the file as it was before the plan: no patch of the plan
  // may write into its source, whatever order the patches are applied in.
  for (const c of plan.patches) {
    if (c.kind !== "copy") continue;
    if (c.from < 0n) return `copy from negative offset ${c.from}`;
    for (const p of plan.patches) {
      if (p.offset < c.from + c.length && c.from < patchEnd(p)) {
        return `patch at ${p.offset} writes into the source of the copy from ${c.from}`;
      }
    }
  }
  return undefined;
}

/** Rounds up to a multiple of `align` (> 0). */
export function alignUp(n: bigint, align: bigint): bigint {
  return ((n + align - 1n) / align) * align;
}

export function divRoundUp(n: bigint, d: bigint): bigint {
  return (n + d - 1n) / d;
}
