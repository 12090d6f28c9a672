// convert -O luks: the target's secret and algorithms checked as qemu's
// qcrypto_block_luks_create checks them (after the source is open, as
// bdrv_create runs then), the iteration counts calibrated, the output file
// sized (payload offset + disk size, as block_crypto_create_init_func
// truncates it), then one luks_write guest makes the header and encrypts
// every sector of the source chain behind it (qemu's crypto driver has no
// zero-init, so qemu-img writes zero runs too, encrypted).
import { ObjectError, type SecretStore } from "../secrets/objects.ts";
import { luksCheck, luksKeyBytes, type LuksNew, luksPayloadOffset } from "../formats/luks/create_options.ts";
import { LuksGuestFailure, luksIterations, luksWrite, LuksWriteError } from "../formats/luks/write.ts";
import { type ConvertJob, GuestFailure, PlanRefused } from "./pipeline.ts";
import { hostPath } from "../host/context.ts";

export async function convertToLuks(
  job: ConvertJob,
  spec: LuksNew & { cipherName: string },
  out: string,
  secrets: SecretStore,
  kdfMaxIters: bigint,
): Promise<bigint> {
  if (spec.keySecret === undefined) throw new PlanRefused("Parameter 'key-secret' is required for cipher");
  let pw: Uint8Array;
  try {
    pw = secrets.passphrase(spec.keySecret).slice();
  } catch (e) {
    if (e instanceof ObjectError) throw new PlanRefused(e.lines[0]);
    throw e;
  }
  try {
    const why = luksCheck(spec);
    if (why) throw new PlanRefused(why);
    let iters;
    try {
      iters = await luksIterations(spec, kdfMaxIters);
    } catch (e) {
      if (e instanceof LuksWriteError) throw new PlanRefused(e.message);
      throw e;
    }
    const payload = luksPayloadOffset(luksKeyBytes(spec));
    // Through an open file: an unnamed output's /proc path is a link Deno.truncate would not follow.
    const f = await Deno.open(hostPath(out), { write: true });
    try {
      await f.truncate(Number(payload + job.size));
    } finally {
      f.close();
    }
    try {
      await luksWrite({
        output: out,
        spec,
        passphrase: pw,
        iters,
        size: job.size,
        layers: job.layers,
        kdfMaxIters,
        // A LUKS2 source: luks_write_luks2 (Argon2 and the LUKS2 reader; no room beside every other reader).
        luks2Ram: job.luks2Ram,
        onProgress: job.onProgress,
      });
    } catch (e) {
      if (e instanceof LuksGuestFailure) throw new GuestFailure(e.record);
      throw e;
    }
    return job.size;
  } finally {
    pw.fill(0);
  }
}
