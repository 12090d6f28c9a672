// qemu's QAPI names of the LUKS algorithms the guest reports as numbers
// (lib/abi/spec.ts luks* enums): QCryptoCipherAlgorithm, QCryptoCipherMode,
// QCryptoIVGenAlgorithm, QCryptoHashAlgorithm.
import { luksCipherAlgs, luksCipherModes, luksHashes, luksIvgens } from "../../abi/spec.ts";

function names(e: Record<string, number>, spell: (k: string) => string): Map<number, string> {
  return new Map(Object.entries(e).map(([k, v]) => [v, spell(k)]));
}

/** aes-256, cast5-128, serpent-192, twofish-128 ... */
export const CIPHER_ALG_NAMES = names(luksCipherAlgs, (k) => k.toLowerCase().replace("_", "-"));
export const CIPHER_MODE_NAMES = names(luksCipherModes, (k) => k.toLowerCase());
export const IVGEN_NAMES = names(luksIvgens, (k) => k.toLowerCase());
export const HASH_NAMES = names(luksHashes, (k) => k.toLowerCase());
