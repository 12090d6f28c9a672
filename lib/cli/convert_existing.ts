// convert -n into an existing qcow2 (plain or encrypted) or LUKS target:
// which in-place writer takes it (lib/cli/convert_into_qcow2.ts;
// convert_into_qcrypt.ts for an encrypted target or an encrypted source;
// convert_into_luks.ts), with img_convert's checks
// in its order around them. The caller has opened (and unlocked) the
// source chain; nothing here creates a file.
import { CliError } from "./messages.ts";
import { CACHE_MODES, type InstarOptions } from "./common.ts";
import { chainInputs, kdfMaxIters, openChain, type OpenedImage, OpenError, openFailure } from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import type { ImageRef } from "./image_ref.ts";
import type { Progress, ProgressMode } from "./progress.ts";
import { convertIntoQcow2, openQcow2Target } from "./convert_into_qcow2.ts";
import { convertIntoQcrypt, unlockQcryptTarget } from "./convert_into_qcrypt.ts";
import { convertIntoLuks } from "./convert_into_luks.ts";
import { GuestFailure } from "../convert/pipeline.ts";
import { guestFailureMessage } from "../convert/errors.ts";
import { statusLayers } from "../convert/status_layers.ts";

/** The -n target and what the command line says of the write. */
export interface ExistingTarget {
  /** The target's file, and the operand as given (--target-image-opts). */
  target: string;
  display: string;
  /** --target-image-opts: key-secret= and encrypt.format= for the target. */
  ref?: ImageRef;
  /** The source chain (top first), its -l snapshot and disk size. */
  chain: OpenedImage[];
  snapshot: number;
  size: bigint;
  /** -S in bytes, --target-is-zero, -c, -t */
  minSparse: bigint;
  targetIsZero: boolean;
  compress: boolean;
  cache: string;
  /** -n -B: only these byte ranges of the source are written (lib/convert/top_source.ts). */
  top?: [bigint, bigint][];
  /** -n -B: the top's L2 table reach (lib/convert/top_source.ts topSpan). */
  topSpan?: bigint;
  progress: Progress;
  progressMode: ProgressMode;
  o: InstarOptions;
}

function sourceInputs(t: ExistingTarget) {
  return chainInputs(t.chain).map((x, i) => ({ ...x, snapshot: i === 0 ? t.snapshot : 0 }));
}

function checkCache(t: ExistingTarget) {
  if (!CACHE_MODES.includes(t.cache)) throw new CliError([`Invalid cache option: ${t.cache}`]);
}

/** Whether a layer of the source chain is encrypted (LUKS, or a qcow2 with an encryption method). */
function encryptedSource(chain: OpenedImage[]): boolean {
  return chain.some((l) =>
    l.format === "luks" || (l.qcow2 !== undefined && l.qcow2.layout.cryptMethod !== 0)
  );
}

/**
 * An encrypted source into a plain qcow2 target: its size as qemu checks
 * it; a target with a backing file (whose partly written clusters read the
 * backing's bytes, which the encrypting writer does not model) refused
 * before anything is written.
 */
function plainTargetChecks(t: ExistingTarget, img: OpenedImage): void {
  if (img.qcow2!.backingFile !== undefined) {
    throw new CliError([
      `Writing an encrypted source into '${t.display}' is not supported by instar convert: the target has a backing file; nothing was written`,
    ]);
  }
  if (img.virtualSize < t.size) throw new CliError(["output file is smaller than input file"]);
}

/** -n -O qcow2: written in place by the in-place qcow2 writer (encrypted: unlocked and encrypted in the guest). */
export async function convertIntoExistingQcow2(t: ExistingTarget): Promise<void> {
  const { o, progress } = t;
  const img = await openQcow2Target(
    t.target,
    o.unsafeQuirks,
    t.ref?.keySecret !== undefined,
    t.display,
    t.ref?.encryptFormat,
    true,
  );
  if (t.chain.some((x) => x.dev === img.dev && x.ino === img.ino)) {
    throw new CliError([`${t.target}: Refusing to overwrite an image this command reads`]);
  }
  const encryptedTarget = img.qcow2!.layout.cryptMethod !== 0;
  if (encryptedTarget || encryptedSource(t.chain)) {
    // Encrypted target, or an encrypted source into a plain one: the
    // qcow2_encrypt guest's classify and INTO modes, which read (decrypt) the
    // source and encrypt for the target, or with a plain target write the
    // clusters as they read (lib/cli/convert_into_qcrypt.ts).
    const job = {
      target: t.target,
      display: t.display,
      keySecret: t.ref?.keySecret,
      keySecretOption: t.ref?.keySecretOption,
      secrets: o.secrets,
      kdfMaxIters: kdfMaxIters(),
      chain: t.chain,
      unsafeQuirks: o.unsafeQuirks,
      source: sourceInputs(t),
      size: t.size,
      minSparse: t.minSparse,
      targetIsZero: t.targetIsZero,
      onProgress: (done: bigint, total: bigint) => progress.bytes(done, total),
    };
    if (encryptedTarget) await unlockQcryptTarget(job, img);
    else plainTargetChecks(t, img);
    // -n -B: the encrypting writer writes the whole source, not only the top's ranges (it used to, silently).
    if (t.top) {
      throw new CliError([
        `Writing into '${t.display}' is not supported by instar convert: -n -B with an encrypted source or target; nothing was written`,
      ]);
    }
    checkCache(t);
    try {
      const written = await convertIntoQcrypt(job, img);
      if (written > 0n) progress.set(100);
    } catch (e) {
      if (e instanceof GuestFailure) throw new CliError([guestFailureMessage(e)]);
      throw e;
    }
    progress.set(100);
    return;
  }
  // qemu opens the target with its backing chain (through the allowlist here).
  let targetChain: OpenedImage[] | undefined;
  if (img.qcow2!.backingFile !== undefined) {
    try {
      targetChain = await openChain(
        img,
        await makePolicy(t.target, o.backingDirs),
        o.unsafeQuirks,
        LOCKS.read,
      );
    } catch (e) {
      if (e instanceof OpenError) throw openFailure(t.display, e);
      throw e;
    }
  }
  if (img.virtualSize < t.size) throw new CliError(["output file is smaller than input file"]);
  checkCache(t);
  const written = await convertIntoQcow2({
    target: t.target,
    unsafeQuirks: o.unsafeQuirks,
    source: sourceInputs(t),
    size: t.size,
    minSparse: t.minSparse,
    targetIsZero: t.targetIsZero,
    top: t.top,
    status: statusLayers(t.chain),
    topSpan: t.topSpan,
    targetChain: targetChain && chainInputs(targetChain),
    onProgress: (done, total) => progress.bytes(done, total),
  }, img);
  if (written > 0n) progress.set(100);
  progress.set(100);
}

/** -n into LUKS1: unlocked and encrypted in the guest (lib/cli/convert_into_luks.ts). */
export async function convertIntoExistingLuks(t: ExistingTarget): Promise<void> {
  const { o, progress } = t;
  if (t.compress) throw new CliError(["Compression not supported for this file format"]);
  checkCache(t);
  try {
    const written = await convertIntoLuks({
      target: t.target,
      display: t.display,
      keySecret: t.ref?.keySecret,
      keySecretOption: t.ref?.keySecretOption,
      secrets: o.secrets,
      unsafeQuirks: o.unsafeQuirks,
      kdfMaxIters: kdfMaxIters(),
      chain: t.chain,
      source: sourceInputs(t),
      size: t.size,
      minSparse: t.minSparse,
      targetIsZero: t.targetIsZero,
      onProgress: (done, total) => {
        if (done < total || t.progressMode === "json") progress.bytes(done, total);
      },
    });
    if (written > 0n) progress.set(100);
  } catch (e) {
    if (e instanceof GuestFailure) throw new CliError([guestFailureMessage(e)]);
    throw e;
  }
  progress.set(100);
}
