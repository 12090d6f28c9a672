// Encrypted qcow2 (crypt_method 1 "aes", 2 "luks") as qemu-img 7.2 opens it:
// the `encrypt` block info prints (the LUKS header the guest parsed from the
// image's header clusters, or just the format for AES), the open errors of
// the LUKS header inside a qcow2 (guest/qcow2/crypt_header.c) and qemu's
// check of `encrypt.format` against the header's method
// (qcow2_update_options_prepare). No key material is seen here: the guest
// unlocks and decrypts (guest/qcow2/crypt_layer.c).
import { guestErrors as G, records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import type { GuestErrorFields } from "../types.ts";
import { luksErrorText } from "../luks/errors.ts";
import { type LuksModel, luksModel } from "../luks/model.ts";

/** ImageInfoSpecificQCow2Encryption: format aes, or luks with the LUKS header's details. */
export type Qcow2Encryption = { format: "aes" } | { format: "luks"; luks: LuksModel };

export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;

/** The encrypt block of info: AES always (qemu opens it without I/O), LUKS when its header was read. */
export function qcow2Encryption(
  recs: Rec[],
  input: number,
  cryptMethod: number,
): Qcow2Encryption | undefined {
  if (cryptMethod === CRYPT_AES) return { format: "aes" };
  if (cryptMethod !== CRYPT_LUKS) return undefined;
  // A LUKS-method image without its header extension does not open (guest/qcow2/header.c).
  if (!recs.some((r) => r.type === records.LUKS_INFO && r.fields.input === input)) return undefined;
  return { format: "luks", luks: luksModel(recs, input) };
}

/** The guest's LUKS_E_NO_SECRET (guest/luks/luks.h). */
const LUKS_E_NO_SECRET = 24n;

/** qcow2_read_extensions' extension checks beyond qcow2's own (guest/qcow2/qcow2.h QEXT_CRYPTO_*). */
const QEXT_CRYPTO_OFFSET = 11n;
const QEXT_CRYPTO_OUTSIDE = 12n;
const QEXT_CRYPTO_READ = 13n;

/** Whether a guest error is one of an encrypted qcow2's open failures (the unlock, the crypto header). */
export function isQcow2CryptOpenError(e: GuestErrorFields): boolean {
  return e.code === G.FORMAT ||
    (e.code === G.BAD_EXTENSION && e.a1 >= QEXT_CRYPTO_OFFSET && e.a1 <= QEXT_CRYPTO_READ);
}

/** qemu's words for an encrypted qcow2's open failure, or undefined when it is not one of those. */
export function qcow2CryptErrorText(e: GuestErrorFields, quoted: string[]): string | undefined {
  if (e.code === G.FORMAT) {
    // The crypto layer names its options with the prefix "encrypt.".
    if (e.a0 === LUKS_E_NO_SECRET) return "Parameter 'encrypt.key-secret' is required for cipher";
    return luksErrorText(e.a0, e.a1, e.a2, quoted[quoted.length - 1]);
  }
  if (e.code === G.BAD_EXTENSION) {
    if (e.a1 === QEXT_CRYPTO_OFFSET) {
      return `Encryption header offset '${e.a2}' is not a multiple of cluster size '${e.a0}'`;
    }
    if (e.a1 === QEXT_CRYPTO_OUTSIDE) return "Request for data outside of extension header";
    if (e.a1 === QEXT_CRYPTO_READ) return "Could not read encryption header: Input/output error";
  }
  return undefined;
}

/** qcow2_update_options_prepare: `encrypt.format` must name the header's method. */
export function encryptFormatError(
  cryptMethod: number,
  encryptFormat: string | undefined,
): string | undefined {
  if (encryptFormat === undefined) return undefined;
  if (cryptMethod === 0) {
    return `No encryption in image header, but options specified format '${encryptFormat}'`;
  }
  const header = cryptMethod === CRYPT_AES ? "aes" : cryptMethod === CRYPT_LUKS ? "luks" : undefined;
  if (header !== undefined && encryptFormat !== header) {
    return `Header reported '${header}' encryption format but options specify '${encryptFormat}'`;
  }
  return undefined;
}

/** The message qemu's open of an encrypted image gives when the command has no way to name a key-secret. */
export function keySecretRequired(luksFormat: boolean): string {
  return `Parameter '${luksFormat ? "" : "encrypt."}key-secret' is required for cipher`;
}
