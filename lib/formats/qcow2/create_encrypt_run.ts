// qcow2 create's encryption step (block/qcow2.c qcow2_set_up_encryption ->
// qcrypto_block_create): the key-secret and its passphrase are looked up
// and the LUKS choices checked before anything is written (the file is
// removed on any failure, so only the message order matters), then, after
// the planned metadata is in place, the luks_write guest makes the master
// key, salts, uuid and key slot 0 and writes the LUKS header into the
// clusters the plan reserved for it (AT mode). The master key never
// leaves the guest. "aes" (qcow) stores no key material: its header field
// is all qemu writes, so only the secret is checked.
import { KDF_MAX_ITERS_DEFAULT } from "../luks/errors.ts";
import { luksCheck } from "../luks/create_options.ts";
import { luksIterations, luksWrite, LuksWriteError } from "../luks/write.ts";
import { luksGuestErrorText } from "../luks/create.ts";
import { CreateError, type CreateHost } from "../types.ts";
import type { Qcow2Encrypt } from "./create_encrypt.ts";

/** What the checks found: the passphrase (caller zeroes it) and the LUKS iteration counts. */
export interface Qcow2EncryptReady {
  passphrase: Uint8Array;
  iters?: { mk: bigint; slot: bigint };
  kdfMax: bigint;
}

/** qcrypto_block_{qcow,luks}_create's checks, in their order and words. */
export async function qcow2EncryptPrepare(e: Qcow2Encrypt, host: CreateHost): Promise<Qcow2EncryptReady> {
  if (e.keySecret === undefined) {
    throw new CreateError("Parameter 'encrypt.key-secret' is required for cipher");
  }
  if (!host.passphrase) throw new CreateError("No secret with id '" + e.keySecret + "'");
  const passphrase = host.passphrase(e.keySecret).slice();
  const kdfMax = host.kdfMaxIters?.() ?? KDF_MAX_ITERS_DEFAULT;
  if (e.format === "aes") return { passphrase, kdfMax };
  try {
    const why = luksCheck(e.luks);
    if (why) throw new CreateError(why);
    return { passphrase, kdfMax, iters: await luksIterations(e.luks, kdfMax) };
  } catch (err) {
    passphrase.fill(0);
    if (err instanceof LuksWriteError) throw new CreateError(err.message);
    throw err;
  }
}

/** Writes the LUKS header at `offset` of the (already laid out) qcow2 file. */
export async function qcow2EncryptWrite(
  filename: string,
  e: Qcow2Encrypt,
  ready: Qcow2EncryptReady,
  offset: bigint,
): Promise<void> {
  if (e.format !== "luks" || ready.iters === undefined) return;
  try {
    await luksWrite({
      output: filename,
      spec: e.luks,
      passphrase: ready.passphrase,
      iters: ready.iters,
      size: 0n,
      layers: [],
      kdfMaxIters: ready.kdfMax,
      at: offset,
    });
  } catch (err) {
    if (err instanceof LuksWriteError) throw new CreateError(err.message);
    const text = luksGuestErrorText(err);
    if (text !== undefined) throw new CreateError(text);
    throw err;
  }
}
