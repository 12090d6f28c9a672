// convert -O qcow2 -o encrypt.format=luks|aes,preallocation=metadata|falloc|full.
// qemu-img's bdrv_create makes the image exactly as `create` makes it (the
// preallocated layout, then the LUKS header's clusters first-fit behind it);
// its copy then runs with has_zero_init false (qcow2_has_zero_init: a
// preallocated encrypted image does not read as zeroes), so what the source
// reads as zeroes is write-zeroed (zero clusters, the preallocated clusters
// freed) and the data is written encrypted into the clusters the
// preallocation mapped: exactly `convert -n` into that image. instar does
// the same: the create path (lib/formats/qcow2/create_plan.ts, the
// luks_write guest for the LUKS header), then the in-place encrypted writer
// of lib/cli/convert_into_qcrypt.ts, which unlocks the new header in its
// guest (the host never sees the master key).
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import type { InstarOptions } from "./common.ts";
import { allocate } from "../host/allocate.ts";
import { openQcow2Target } from "./convert_into_qcow2.ts";
import { convertIntoQcrypt, unlockQcryptTarget } from "./convert_into_qcrypt.ts";
import { type Qcow2CreateOptions, qcow2CreatePlan } from "../formats/qcow2/create_plan.ts";
import {
  qcow2EncryptPrepare,
  type Qcow2EncryptReady,
  qcow2EncryptWrite,
} from "../formats/qcow2/create_encrypt_run.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import { CreateError } from "../formats/types.ts";
import { ObjectError } from "../secrets/objects.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { errnoText } from "./image.ts";

export interface PreallocQcryptJob {
  /** The source chain (opened, unlocked) and its guest inputs. */
  chain: OpenedImage[];
  source: GuestInput[];
  size: bigint;
  minSparse: bigint;
  kdfMaxIters: bigint;
  onProgress?: (done: bigint, total: bigint) => void;
}

/**
 * Writes `out` (a named, empty temporary) as the encrypted, preallocated
 * qcow2 image of the job's source; `display` is the target's name in
 * qemu's messages. Returns the data bytes written.
 */
export async function convertToPreallocatedQcrypt(
  display: string,
  out: string,
  create: Qcow2CreateOptions,
  o: InstarOptions,
  job: PreallocQcryptJob,
): Promise<bigint> {
  const prefix = `${display}: error while converting qcow2: `;
  const encrypt = create.encrypt!;
  const plan = qcow2CreatePlan(create);
  if (!plan.ok) throw new CliError([prefix + plan.error.message]);
  let ready: Qcow2EncryptReady | undefined;
  try {
    try {
      ready = await qcow2EncryptPrepare(
        encrypt,
        {
          passphrase: (id) => o.secrets.passphrase(id),
          kdfMaxIters: () => job.kdfMaxIters,
        } as Parameters<typeof qcow2EncryptPrepare>[1],
      );
    } catch (e) {
      if (e instanceof CreateError) throw new CliError([prefix + e.message]);
      if (e instanceof ObjectError) throw new CliError([prefix + e.lines[0]]);
      throw e;
    }
    try {
      for (const step of plan.value.steps) await applyPlan(out, step);
      const range = plan.value.allocate;
      if (range) await allocate(out, range.offset, range.length, create.preallocation);
    } catch (e) {
      throw new CliError([
        `${prefix}Could not write qcow2 image: ${e instanceof Error ? e.message : errnoText(e)}`,
      ]);
    }
    const at = plan.value.cryptHeader;
    if (at) {
      try {
        await qcow2EncryptWrite(out, encrypt, ready, at.offset);
      } catch (e) {
        if (e instanceof CreateError) throw new CliError([prefix + e.message]);
        throw e;
      }
    }
  } finally {
    ready?.passphrase.fill(0);
  }
  const img = await openQcow2Target(out, o.unsafeQuirks, true, display);
  const into = {
    target: display,
    display,
    keySecret: encrypt.keySecret,
    keySecretOption: "encrypt.key-secret",
    secrets: o.secrets,
    kdfMaxIters: job.kdfMaxIters,
    chain: job.chain,
    unsafeQuirks: o.unsafeQuirks,
    source: job.source,
    size: job.size,
    minSparse: job.minSparse,
    // qcow2_has_zero_init: a preallocated encrypted image does not read as zeroes.
    targetIsZero: false,
    onProgress: job.onProgress,
  };
  await unlockQcryptTarget(into, img);
  return await convertIntoQcrypt(into, img);
}
