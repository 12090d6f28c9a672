// instar's words for a LUKS2 open failure the guest reported (ERROR code
// FORMAT, a0 = guest/luks2/luks2.h LUKS2_E_*; `quoted` is the guest's short
// text naming the field, sent before it as a NAME record of kind
// ERROR_TEXT). qemu-img 7.2 has no LUKS2 reader, so no qemu wording exists;
// a wrong passphrase keeps LUKS1's ("Invalid password, cannot unlock any keyslot").

/** The default bound on one key slot's Argon2 memory, in KiB: cryptsetup's own maximum (1 GiB). */
export const KDF_MAX_MEMORY_KIB_DEFAULT = 1048576n;

const FAULTS = [
  "",
  "bad magic",
  "unsupported version",
  "invalid header size",
  "unsupported checksum algorithm",
  "checksum mismatch",
  "wrong header offset",
  "past the end of the file",
  "not found",
];

/** Printable ASCII only: the guest composed the text, but it names image fields. */
function clean(s: string | undefined): string {
  return (s ?? "").replace(/[^\x20-\x7e]/g, "?").slice(0, 200);
}

export function luks2ErrorText(
  a0: bigint,
  a1: bigint,
  a2: bigint,
  quoted: string | undefined,
): string | undefined {
  const q = clean(quoted);
  switch (Number(a0)) {
    case 100:
      return `LUKS2 header is corrupted (primary: ${FAULTS[Number(a1)] ?? a1}, secondary: ${
        FAULTS[Number(a2)] ?? a2
      })`;
    case 101:
      return `LUKS2 metadata is not valid JSON (byte ${a1} of the JSON area)`;
    case 102:
      return `LUKS2 metadata nests deeper than ${a1} levels`;
    case 103:
      return `LUKS2 metadata has more than ${a1} JSON values`;
    case 104:
      return `LUKS2 metadata is invalid: ${q}`;
    case 105:
      return `LUKS2 ${q} is not supported by instar`;
    case 106:
      return `LUKS2 key slot ${a1} asks for ${a2} KiB of Argon2 memory, more than instar allows ` +
        "(--max-guest-memory raises the limit)";
    case 107:
      return `LUKS2 key slot ${a1} asks for ${a2} Argon2 passes over its memory, more than instar allows`;
    case 108:
      return `${a1 === 32n ? "The LUKS2 volume key digest" : `LUKS2 key slot ${a1}`} asks for ${a2} PBKDF2 ` +
        "iterations, more than instar allows (INSTAR_MAX_KDF_ITERS raises the limit)";
    case 109:
      return `LUKS2 key slot ${a1} area lies past the end of the file`;
    case 110:
      return "LUKS2 data segment lies past the end of the file";
    case 111:
      return "No LUKS2 key slot holds the data segment's key";
  }
  return undefined;
}
