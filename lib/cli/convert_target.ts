// What `instar convert` does to a new qcow2 target beyond writing its data:
// opening the backing file -B names (qemu-img opens the new target with its
// backing chain, so a missing or unreadable backing file fails the command
// there; the size it finds bounds where zeroes are written), and creating a
// preallocated target as `create` makes it before the data is written into
// it in place (qemu-img's bdrv_create with `-o preallocation`, then its copy
// with has_zero_init: nothing is written where the source reads as zeroes).
import { CliError } from "./messages.ts";
import { errnoText, openChain, type OpenedImage, OpenError, openFailure, openImage } from "./image.ts";
import { fullBackingFilename, makePolicy, PolicyError } from "../chain/policy.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { hostPath } from "../host/context.ts";
import type { InstarOptions } from "./common.ts";
import { type Qcow2CreateOptions, qcow2CreatePlan } from "../formats/qcow2/create_plan.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import { allocate } from "../host/allocate.ts";
import { convertIntoQcow2, openQcow2Target } from "./convert_into_qcow2.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { formats } from "../abi/spec.ts";
import { chainInputs } from "./extents.ts";

/**
 * Opens the backing file `name` of the new target `target` (relative names
 * resolve against the target's directory, as qemu resolves them) with its
 * own chain (names inside images pass the allowlist), read-only. Returns its
 * length in whole sectors (qemu's bdrv_nb_sectors * 512). Errors are qemu's
 * "Could not open 'TARGET': Could not open backing file: ...".
 */
export async function openTargetBacking(
  target: string,
  name: string,
  format: string | undefined,
  o: InstarOptions,
): Promise<bigint> {
  return (await openTargetBackingChain(target, name, format, o)).size;
}

/** The target's backing file as openTargetBacking opens it. */
export interface TargetBacking {
  /** Its length in whole sectors. */
  size: bigint;
  /** Its chain as guest inputs (each file opened through the allowlist);
   * undefined when a layer is encrypted (no key is asked for it). */
  inputs?: GuestInput[];
}

/** openTargetBacking, also handing back the opened chain for the convert guest. */
export async function openTargetBackingChain(
  target: string,
  name: string,
  format: string | undefined,
  o: InstarOptions,
): Promise<TargetBacking> {
  if (name === "") {
    throw new CliError([
      `${target}: error while converting qcow2: Expected backing file name, got empty string`,
    ]);
  }
  const full = fullBackingFilename(target, name);
  if (full === null) throw new CliError([`Cannot use relative backing file names for '${target}'`]);
  const nested = (e: OpenError) => new OpenError(e.filename, e.inner, e.depth + 1, e.bare, e.preface);
  // The target itself as its own backing file: qemu's open of the new image
  // meets its own write lock.
  const real = (p: string) => Deno.realPath(hostPath(p)).catch(() => undefined);
  const [backingReal, targetReal] = await Promise.all([real(full), real(target)]);
  if (backingReal !== undefined && backingReal === targetReal) {
    throw new CliError([
      `Could not open '${target}': Could not open backing file: Failed to get shared "write" lock\n` +
      `Is another process using the image [${full}]?`,
    ]);
  }
  let img: OpenedImage;
  let chain: OpenedImage[];
  try {
    img = await openImage(full, { format, unsafeQuirks: true, lock: LOCKS.read, noLists: true });
    chain = await openChain(img, await makePolicy(full, o.backingDirs), o.unsafeQuirks, LOCKS.read);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(target, nested(e));
    if (e instanceof PolicyError) throw openFailure(target, new OpenError(full, e.message, 1, true));
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
      throw openFailure(target, new OpenError(full, `Could not open '${full}': ${errnoText(e)}`, 1));
    }
    throw e;
  }
  const size = (img.length + 511n) / 512n * 512n;
  const encrypted = chain.some((l) =>
    l.formatCode === formats.LUKS || (l.qcow2 !== undefined && l.qcow2.layout.cryptMethod !== 0)
  );
  return { size, inputs: encrypted ? undefined : chainInputs(chain) };
}

export interface PreallocatedJob {
  unsafeQuirks: boolean;
  source: GuestInput[];
  size: bigint;
  minSparse: bigint;
  onProgress?: (done: bigint, total: bigint) => void;
}

/**
 * `convert -O qcow2 -o preallocation=metadata|falloc|full`: the output file
 * `out` (written under a temporary name) is first made exactly as `create`
 * makes it, then the source is written into it in place as `convert -n
 * --target-is-zero` writes (the data into the clusters the preallocation
 * mapped; zeroes are not written, the new image reads as zeroes). qemu-img's
 * own convert gives the same bytes (tests/convert_prealloc_test.ts). Returns
 * the data bytes written.
 */
export async function convertPreallocatedQcow2(
  display: string,
  out: string,
  create: Qcow2CreateOptions,
  job: PreallocatedJob,
): Promise<bigint> {
  const prefix = `${display}: error while converting qcow2: `;
  const plan = qcow2CreatePlan(create);
  if (!plan.ok) throw new CliError([prefix + plan.error.message]);
  try {
    for (const step of plan.value.steps) await applyPlan(out, step);
    const range = plan.value.allocate;
    if (range) await allocate(out, range.offset, range.length, create.preallocation);
  } catch (e) {
    throw new CliError([
      `${prefix}Could not write qcow2 image: ${e instanceof Error ? e.message : errnoText(e)}`,
    ]);
  }
  const img = await openQcow2Target(out, job.unsafeQuirks);
  return await convertIntoQcow2({ ...job, target: display, targetIsZero: true }, img);
}
