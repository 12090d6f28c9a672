// `convert -O qcow2 -o encrypt.* SRC -` and `convert -O luks SRC -`: an
// encrypted target on stdout. The plain formats stream window by window,
// each window's guest run twice (lib/convert/stream_output.ts); an encrypted
// target cannot, as its master key is made in one guest (from the host's
// entropy mixed with the guest CPU's RDSEED/RDRAND, guest/luks/write.c) and
// never leaves it: a second guest could not encrypt with the same key unless
// the host alone chose it. So the file target's own writer
// (qcow2_encrypt_target.ts, luks_target.ts) writes the whole image into one
// unnamed file in TMPDIR, and only when it is complete is the file
// copied to stdout, in order: the bytes are those of the file target (but
// for its random LUKS salts, uuid and master key), a failure sends nothing,
// and the temporary space is the image's size. The file holds what the
// target file would: ciphertext and the key slots, never the passphrase.
import type { StdoutSink } from "../host/stdio_stream.ts";
import { hostPath } from "../host/context.ts";
import type { SecretStore } from "../secrets/objects.ts";
import type { OutputSpec } from "./output_options.ts";
import type { ConvertJob } from "./pipeline.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { convertToEncryptedQcow2 } from "./qcow2_encrypt_target.ts";
import { convertToLuks } from "./luks_target.ts";

/** Whether `spec` is a target this module writes to stdout. */
export function encryptedTarget(spec: OutputSpec): boolean {
  return spec.writer === "luks" || (spec.writer === "qcow2" && spec.qcow2Create?.encrypt !== undefined);
}

/** Writes the encrypted target into an unnamed file from `scratch`, then copies it to `sink`. */
export async function encryptedToStdout(
  job: ConvertJob,
  spec: OutputSpec,
  secrets: SecretStore,
  kdfMaxIters: bigint,
  sink: StdoutSink,
  scratch: () => Promise<string>,
  backing?: { size?: bigint; inputs?: GuestInput[] },
): Promise<bigint> {
  const file = await scratch();
  const e = spec.qcow2Create?.encrypt;
  const written = e
    // -B: the file target's overlay (its backing chain's size and inputs), as for a file.
    ? await convertToEncryptedQcow2(
      job,
      spec.qcow2!,
      e,
      file,
      secrets,
      kdfMaxIters,
      backing?.size,
      backing?.inputs,
    )
    : await convertToLuks(job, spec.luks!, file, secrets, kdfMaxIters);
  let size: bigint;
  {
    using f = await Deno.open(hostPath(file), { read: true });
    size = BigInt((await f.stat()).size);
  }
  await sink.copyFile(file, size);
  return written;
}
