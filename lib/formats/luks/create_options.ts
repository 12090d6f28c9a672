// LUKS1 create options as qemu 7.2 reads them (block/crypto.c
// block_crypto_create_opts_luks, then qcrypto_block_luks_create's checks):
// the option list, the QAPI enum parse in member order, qemu's defaults,
// and the checks that need no secret and no PBKDF2, each in qemu's words.
// Also the header's size (the payload offset), which depends only on the
// cipher and mode: measure and resize use it too. Pure: no I/O.
import { luksCipherAlgs, luksCipherModes, luksHashes, luksIvgens } from "../../abi/spec.ts";
import { appendDescs, FILE_CREATE_OPTS, type OptDesc, optGet, type ParsedOpts } from "../options.ts";
import { fail, ok, type PlanResult } from "../plan.ts";
import { CIPHER_ALG_NAMES, CIPHER_MODE_NAMES, HASH_NAMES, IVGEN_NAMES } from "./names.ts";
import { luksErrorText } from "./errors.ts";

/** The format's own options, in qemu's list order (the "Formatting" line's order). */
export const LUKS_OWN_OPTS: OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size" },
  { name: "key-secret", type: "string", help: "ID of the secret that provides the keyslot passphrase" },
  { name: "cipher-alg", type: "string", help: "Name of encryption cipher algorithm" },
  { name: "cipher-mode", type: "string", help: "Name of encryption cipher mode" },
  { name: "ivgen-alg", type: "string", help: "Name of IV generator algorithm" },
  { name: "ivgen-hash-alg", type: "string", help: "Name of IV generator hash algorithm" },
  { name: "hash-alg", type: "string", help: "Name of encryption hash algorithm" },
  { name: "iter-time", type: "number", help: "Time to spend in PBKDF in milliseconds" },
];

export const LUKS_CREATE_OPTS: OptDesc[] = appendDescs(LUKS_OWN_OPTS, FILE_CREATE_OPTS);

/** QCryptoCipherAlgorithm as qemu 7.2 (Debian) parses it: des and 3des parse, then LUKS refuses them. */
const QAPI_CIPHER_ALGS = [
  "aes-128",
  "aes-192",
  "aes-256",
  "des",
  "3des",
  "cast5-128",
  "serpent-128",
  "serpent-192",
  "serpent-256",
  "twofish-128",
  "twofish-192",
  "twofish-256",
];

/** A new LUKS1 header's algorithms, as luks* enum numbers (lib/abi/spec.ts). */
export interface LuksNew {
  keySecret?: string;
  cipherAlg: number;
  cipherMode: number;
  ivgenAlg: number;
  /** 0: none named (the cipher mode string then has no ":hash"). */
  ivgenHash: number;
  hashAlg: number;
  /** Milliseconds (qemu's uint64; a negative number wraps). */
  iterTime: bigint;
}

function lookup(map: Map<number, string>, name: string): number | undefined {
  for (const [k, v] of map) if (v === name) return k;
  return undefined;
}

/**
 * block_crypto_create_opts_init's QAPI parse (members in order: key-secret,
 * cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg, hash-alg, iter-time)
 * and qcrypto_block_luks_create's defaults. "des"/"3des" parse here and are
 * refused by luksCheck, as in qemu.
 */
export function luksParse(opts: ParsedOpts): PlanResult<LuksNew & { cipherName: string }> {
  const str = (n: string) => optGet(opts, n)?.str;
  const bad = (n: string, v: string) =>
    fail("invalid_option", `Parameter '${n}' does not accept value '${v}'`);
  const alg = str("cipher-alg");
  if (alg !== undefined && !QAPI_CIPHER_ALGS.includes(alg)) return bad("cipher-alg", alg);
  const mode = str("cipher-mode");
  const modeNum = mode === undefined ? luksCipherModes.XTS : lookup(CIPHER_MODE_NAMES, mode);
  if (modeNum === undefined) return bad("cipher-mode", mode!);
  const ivgen = str("ivgen-alg");
  const ivgenNum = ivgen === undefined ? luksIvgens.PLAIN64 : lookup(IVGEN_NAMES, ivgen);
  if (ivgenNum === undefined) return bad("ivgen-alg", ivgen!);
  const ivh = str("ivgen-hash-alg");
  let ivhNum = ivh === undefined ? 0 : lookup(HASH_NAMES, ivh);
  if (ivhNum === undefined) return bad("ivgen-hash-alg", ivh!);
  const hash = str("hash-alg");
  const hashNum = hash === undefined ? luksHashes.SHA256 : lookup(HASH_NAMES, hash);
  if (hashNum === undefined) return bad("hash-alg", hash!);
  if (ivgenNum === luksIvgens.ESSIV && ivhNum === 0) ivhNum = luksHashes.SHA256;
  const cipherName = alg ?? "aes-256";
  const it = optGet(opts, "iter-time");
  return ok({
    keySecret: str("key-secret"),
    cipherAlg: lookup(CIPHER_ALG_NAMES, cipherName) ?? 0,
    cipherName,
    cipherMode: modeNum,
    ivgenAlg: ivgenNum,
    ivgenHash: ivhNum,
    hashAlg: hashNum,
    iterTime: it?.num !== undefined ? BigInt.asUintN(64, it.num) : 2000n,
  });
}

const KEY_LEN: Record<number, number> = {
  1: 16,
  2: 24,
  3: 32,
  4: 16,
  5: 16,
  6: 24,
  7: 32,
  8: 16,
  9: 24,
  10: 32,
};
const DIGEST_LEN: Record<number, number> = { 1: 16, 2: 20, 3: 28, 4: 32, 5: 48, 6: 64, 7: 20 };

/**
 * The checks qcrypto_block_luks_create makes after the secret (the caller
 * looks that up first): qcrypto_block_luks_cipher_alg_lookup,
 * qcrypto_block_luks_essiv_cipher, then the cipher's mode (nettle has no
 * XTS for the 64-bit-block cast5).
 */
export function luksCheck(n: LuksNew & { cipherName: string }): string | undefined {
  if (n.cipherAlg === 0) return `Algorithm '${n.cipherName}' not supported`;
  if (n.ivgenAlg === luksIvgens.ESSIV) {
    const dl = DIGEST_LEN[n.ivgenHash];
    if (dl !== KEY_LEN[n.cipherAlg]) {
      const a = n.cipherAlg;
      const family = a <= 3 ? 1 : a >= 5 && a <= 7 ? 2 : a >= 8 ? 3 : 0;
      if (family === 0) return luksErrorText(21n, BigInt(a), 0n, undefined);
      if (![16, 24, 32].includes(dl)) return luksErrorText(20n, BigInt(dl), BigInt(family), undefined);
    }
  }
  if (n.cipherMode === luksCipherModes.XTS && n.cipherAlg === luksCipherAlgs.CAST5_128) {
    return "Unsupported cipher mode xts";
  }
  const kb = luksKeyBytes(n);
  if ((kb * 4000) % 512 !== 0) {
    // qemu-img 7.2 asserts (QEMU_IS_ALIGNED in do_qcrypto_block_cipher_encdec) and aborts here.
    return `${n.cipherName} in mode ${CIPHER_MODE_NAMES.get(n.cipherMode)} has key material of ${
      kb * 4000
    } bytes, ` +
      "not whole sectors: qemu-img 7.2 aborts making or opening such an image, so instar does not make one";
  }
  return undefined;
}

/** Master key bytes (xts: both halves). */
export function luksKeyBytes(n: { cipherAlg: number; cipherMode: number }): number {
  const k = KEY_LEN[n.cipherAlg] ?? 32;
  return n.cipherMode === luksCipherModes.XTS ? 2 * k : k;
}

/** Bytes of one PBKDF2 output block of a hash (its digest). */
export function luksDigestLen(hash: number): number {
  return DIGEST_LEN[hash];
}

/** The payload offset in bytes: 8 sectors of header, 8 key slots of 4000 stripes, each rounded to 8 sectors. */
export function luksPayloadOffset(keyBytes: number): bigint {
  const sectors = Math.ceil(keyBytes * 4000 / 512);
  const slot = Math.ceil(sectors / 8) * 8;
  return BigInt(8 + 8 * slot) * 512n;
}
