// qemu-img's words for a LUKS open failure the guest reported (ERROR code
// FORMAT, a0 = guest/luks/luks.h LUKS_E_*; `quoted` is the header string
// qemu quotes, sent before it as a NAME record of kind ERROR_TEXT).
import { CIPHER_ALG_NAMES, CIPHER_MODE_NAMES } from "./names.ts";

/** The default bound on one key slot's PBKDF2 iterations (INSTAR_MAX_KDF_ITERS overrides it). */
export const KDF_MAX_ITERS_DEFAULT = 1n << 26n;

const int32 = (v: bigint) => BigInt.asIntN(32, v);

export function luksErrorText(
  a0: bigint,
  a1: bigint,
  a2: bigint,
  quoted: string | undefined,
): string | undefined {
  const q = quoted ?? "";
  switch (Number(a0)) {
    case 1:
      return "Volume is not in LUKS format";
    case 2:
      return `LUKS version ${a1} is not supported`;
    case 3:
      return "LUKS header cipher name is not NUL terminated";
    case 4:
      return "LUKS header cipher mode is not NUL terminated";
    case 5:
      return "LUKS header hash spec is not NUL terminated";
    case 6:
      return "LUKS payload is overlapping with the header";
    case 7:
      return "LUKS key iteration count is zero";
    case 8:
      return `Keyslot ${a1} is corrupted (stripes ${int32(a2)} != 4000)`;
    case 9:
      return `Keyslot ${a1} state (active/disable) is corrupted`;
    case 10:
      return `Keyslot ${a1} iteration count is zero`;
    case 11:
      return `Keyslot ${a1} is overlapping with the LUKS header`;
    case 12:
      return `Keyslot ${a1} is overlapping with the encrypted payload`;
    case 13:
      return `Keyslots ${a1} and ${a2} are overlapping in the header`;
    case 14:
      return `Unexpected cipher mode string format '${q}'`;
    case 15:
      return `Hash algorithm '${q}' not supported`;
    case 16:
      return `Cipher mode '${q}' not supported`;
    case 17:
      return `Algorithm '${q}' with key size ${int32(a1)} bytes not supported`;
    case 18:
      return `IV generator '${q}' not supported`;
    case 19:
      return "Missing IV generator hash specification";
    case 20:
      return `No ${
        ["AES", "Serpent", "Twofish"][Number(a2) - 1] ?? "AES"
      } cipher with key size ${a1} available`;
    case 21:
      return `Cipher ${CIPHER_ALG_NAMES.get(Number(a1)) ?? a1} not supported with essiv`;
    case 22:
      return "Invalid password, cannot unlock any keyslot";
    case 23:
      return `${
        a1 === 8n ? "The LUKS master key digest" : `LUKS key slot ${a1}`
      } asks for ${a2} PBKDF2 iterations, ` +
        "more than instar allows (INSTAR_MAX_KDF_ITERS raises the limit)";
    case 24:
      return "Parameter 'key-secret' is required for cipher";
    case 25:
      return `Cipher ${CIPHER_ALG_NAMES.get(Number(a1)) ?? a1} in mode ${
        CIPHER_MODE_NAMES.get(Number(a2)) ?? a2
      } is not supported by instar`;
    case 26:
      return "Could not refresh total sector count: Input/output error";
  }
  return undefined;
}
