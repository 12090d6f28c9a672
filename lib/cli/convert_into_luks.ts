// convert -n into an existing LUKS1 image, as nova and cinder run it
// (`qemu-img convert -n --object secret,... --target-image-opts
// driver=luks,key-secret=ID,file.filename=DST SRC`): qemu opens the target
// with its crypto driver (the passphrase must unlock a key slot), checks
// its size, and writes every sector of the source through it, encrypted
// with the image's own master key (zeroes too: the crypto driver has no
// write-zeroes), or with --target-is-zero only the blocks that hold data.
// One luks_write guest run (LUKS_WRITE_F_INTO, guest/ops/luks_into.c)
// unlocks the key slot and encrypts: the host hands it the passphrase only,
// never sees the master key, and writes nothing of the header.
import { formats, luksWriteFlags, ops, records } from "../abi/spec.ts";
import { type GuestInput, runGuest } from "../vmm/guest.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { ObjectError, type SecretStore } from "../secrets/objects.ts";
import { GuestFailure } from "../convert/pipeline.ts";
import { CliError } from "./messages.ts";
import {
  type OpenedImage,
  OpenError,
  openFailure,
  openImage,
  unlockFailure,
  unlockForRead,
} from "./image.ts";

export interface IntoLuksJob {
  /** The target's file, and what qemu names in "Could not open '...'" (the operand as given). */
  target: string;
  display: string;
  /** --target-image-opts key-secret= (and the option's name, for qemu's message). */
  keySecret?: string;
  keySecretOption?: string;
  secrets: SecretStore;
  unsafeQuirks: boolean;
  kdfMaxIters: bigint;
  /** The source chain, opened (and unlocked) by the caller, and its guest inputs. */
  chain: OpenedImage[];
  source: GuestInput[];
  size: bigint;
  /** -S in bytes. */
  minSparse: bigint;
  targetIsZero: boolean;
  onProgress?: (done: bigint, total: bigint) => void;
}

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;

/** Opens the target as qemu's luks driver does for writing, in qemu's order of errors. */
async function openTarget(job: IntoLuksJob): Promise<{ img: OpenedImage; pass: Uint8Array }> {
  const img = await openImage(job.target, {
    format: "luks",
    unsafeQuirks: job.unsafeQuirks,
    lock: LOCKS.write,
    noLists: true,
    // cinder writes into the volume attached as a block device (qemu's host_device driver).
    blockDevice: true,
  });
  if (job.keySecret === undefined) {
    const prefix = job.keySecretOption?.replace(/key-secret$/, "") ?? "";
    throw new OpenError(img.filename, `Parameter '${prefix}key-secret' is required for cipher`);
  }
  let pass: Uint8Array;
  try {
    pass = job.secrets.passphrase(job.keySecret);
  } catch (e) {
    if (e instanceof ObjectError) throw new OpenError(img.filename, e.lines.join(" "));
    throw e;
  }
  // qemu 7.2 reads LUKS1 only (instar reads LUKS2 sources beyond it, never writes one).
  if (img.luks?.luks2) throw new OpenError(img.filename, "LUKS version 2 is not supported");
  return { img, pass };
}

/** Writes the source into the existing LUKS target. Returns the bytes written. */
export async function convertIntoLuks(job: IntoLuksJob): Promise<bigint> {
  let img: OpenedImage, pass: Uint8Array;
  try {
    ({ img, pass } = await openTarget(job));
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(job.display, e);
    throw e;
  }
  if (job.chain.some((x) => x.dev === img.dev && x.ino === img.ino)) {
    throw new CliError([`${job.display}: Refusing to overwrite an image this command reads`]);
  }
  // A LUKS2 source: luks_write_luks2 (its reader and Argon2 in place of the other readers).
  const luks2Ram = job.chain.some((x) => x.luks?.luks2) ? job.chain[0]?.luks2Ram : undefined;
  if (img.length < job.size) {
    // qemu's open (the unlock) comes before its size check: a wrong passphrase is reported first.
    try {
      await unlockForRead(img, job.keySecret, job.keySecretOption, job.secrets, [img]);
    } catch (e) {
      if (e instanceof OpenError) throw openFailure(job.display, e);
      throw e;
    }
    throw new CliError(["output file is smaller than input file"]);
  }
  if (job.size % 512n !== 0n) {
    throw new CliError([
      `Writing into '${job.display}' is not supported by instar convert: the source's size is not a multiple of 512 bytes; nothing was written`,
    ]);
  }
  const skip = job.targetIsZero && job.minSparse > 0n;
  const r = await runGuest({
    op: luks2Ram ? "luks_write_luks2" : "luks_write",
    ramBytes: luks2Ram,
    opCode: ops.LUKS_WRITE,
    inputs: [{ path: img.openPath, format: formats.LUKS, nofollow: false, secret: pass }, ...job.source],
    flags: luksWriteFlags.INTO | (skip ? luksWriteFlags.INTO_SKIP_ZERO : 0),
    args: [job.size, skip ? job.minSparse : 0n],
    kdfMaxIters: job.kdfMaxIters,
    output: { path: job.target, cap: img.fileSize },
    timeoutMs: TIMEOUT_MS,
    onProgress: job.onProgress,
  });
  const input = r.inputs[0];
  if (!input || input.dev !== img.dev || input.ino !== img.ino) {
    throw new CliError([`Could not open '${job.display}': File changed while it was being opened`]);
  }
  // A failed unlock (or a header the guest refuses) is the target's open error.
  img.unlockPending = true;
  const unlock = unlockFailure(img, 0, r.records);
  if (unlock) throw openFailure(job.display, unlock);
  const err = r.records.find((x) => x.type === records.ERROR);
  if (err) throw new GuestFailure(err);
  if (r.guestStatus !== 0n) throw new CliError(["Sandbox failure: guest reported an error without a reason"]);
  return job.size;
}
