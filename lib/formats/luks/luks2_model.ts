// A LUKS2 header as the info guest reported it (rec_luks2_info and one
// rec_luks2_slot per key slot; guest/luks2/), checked against fixed bounds
// and put in the LuksModel shape qemu's LUKS info prints (docs/encryption.md:
// the data segment's cipher, the volume key digest's hash and iterations,
// key slots by number with PBKDF2 iterations or Argon2 passes as `iters`).
import { limits, luks2Kdfs, records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { GuestResultError } from "../qcow2/model.ts";
import type { LuksModel, LuksSlot } from "./model.ts";
import { CIPHER_ALG_NAMES, CIPHER_MODE_NAMES, HASH_NAMES, IVGEN_NAMES } from "./names.ts";

/** A LUKS2 key slot's key derivation, as info does not print it but the host sizes guests by. */
export interface Luks2Slot extends LuksSlot {
  id: number;
  kdf: "pbkdf2" | "argon2i" | "argon2id";
  /** Argon2 memory in KiB (0 for PBKDF2). */
  memoryKib: bigint;
}

export interface Luks2Facts {
  /** Bytes of the data segment; undefined: "dynamic" (to the end of the file). */
  payloadSize?: bigint;
  sectorSize: bigint;
  hdrSize: bigint;
  /** The most Argon2 memory (KiB) a key slot able to unlock the data asks for. */
  maxArgon2Kib: bigint;
  keyslots: Luks2Slot[];
}

const KDF_NAMES = new Map<number, Luks2Slot["kdf"]>([
  [luks2Kdfs.PBKDF2, "pbkdf2"],
  [luks2Kdfs.ARGON2I, "argon2i"],
  [luks2Kdfs.ARGON2ID, "argon2id"],
]);

function named(map: Map<number, string>, v: unknown, what: string): string {
  const n = map.get(v as number);
  if (n === undefined) throw new GuestResultError(`LUKS2 ${what} ${v} out of range`);
  return n;
}

/** Decodes input `input`'s LUKS2_INFO and LUKS2_SLOT records, or undefined when there are none. */
export function luks2Model(recs: Rec[], input: number): LuksModel | undefined {
  const r = recs.find((x) => x.type === records.LUKS2_INFO && x.fields.input === input);
  if (!r) return undefined;
  const f = r.fields;
  const keyBytes = f.key_bytes as number;
  if (keyBytes < 1 || keyBytes > 64) throw new GuestResultError(`LUKS2 key size ${keyBytes} out of range`);
  const sectorSize = f.sector_size as number;
  if (![512, 1024, 2048, 4096].includes(sectorSize)) {
    throw new GuestResultError(`LUKS2 sector size ${sectorSize} out of range`);
  }
  const recSlots = recs.filter((x) => x.type === records.LUKS2_SLOT && x.fields.input === input);
  if (recSlots.length !== f.n_slots || recSlots.length > 32) {
    throw new GuestResultError("LUKS2 key slot count");
  }
  const keyslots: Luks2Slot[] = recSlots.map((s) => {
    const id = s.fields.id as number;
    const kdf = KDF_NAMES.get(s.fields.kdf as number);
    if (id > 31 || kdf === undefined) throw new GuestResultError("LUKS2 key slot out of range");
    return {
      id,
      kdf,
      memoryKib: BigInt(s.fields.memory_kib as number),
      active: true,
      iters: BigInt(s.fields.iters as number),
      stripes: BigInt(s.fields.stripes as number),
      keyOffset: s.fields.area_offset as bigint,
    };
  });
  // qemu lists LUKS1's 8 slots by number; LUKS2 has up to 32: slot ids 0..max(7, highest).
  const count = Math.max(8, ...keyslots.map((s) => s.id + 1));
  const slots: LuksSlot[] = [];
  for (let i = 0; i < count; i++) {
    slots.push(keyslots.find((s) => s.id === i) ?? { active: false, iters: 0n, stripes: 0n, keyOffset: 0n });
  }
  const ivgenAlg = named(IVGEN_NAMES, f.ivgen_alg, "ivgen");
  const uuidRaw = f.uuid as Uint8Array;
  const nul = uuidRaw.indexOf(0);
  const payloadSize = f.payload_size as bigint;
  const hdrSize = f.hdr_size as bigint;
  if (hdrSize < 16384n || hdrSize > 4n << 20n) {
    throw new GuestResultError(`LUKS2 header size ${hdrSize} out of range`);
  }
  if ((f.payload_offset as bigint) < 2n * hdrSize) {
    throw new GuestResultError("LUKS2 payload offset out of range");
  }
  return {
    cipherAlg: named(CIPHER_ALG_NAMES, f.cipher_alg, "cipher"),
    cipherMode: named(CIPHER_MODE_NAMES, f.cipher_mode, "cipher mode"),
    ivgenAlg,
    ivgenHashAlg: ivgenAlg === "essiv" ? named(HASH_NAMES, f.ivgen_hash, "ivgen hash") : undefined,
    hashAlg: named(HASH_NAMES, f.hash_alg, "hash"),
    payloadOffset: f.payload_offset as bigint,
    masterKeyIters: BigInt(f.digest_iters as number),
    keyBytes,
    uuid: nul < 0 ? uuidRaw.slice() : uuidRaw.slice(0, nul),
    slots,
    luks2: {
      payloadSize: payloadSize === 0n ? undefined : payloadSize,
      sectorSize: BigInt(sectorSize),
      hdrSize,
      maxArgon2Kib: BigInt(f.max_argon2_kib as number),
      keyslots,
    },
  };
}

/** The bytes a reader of a LUKS2 image sees: the segment's size, or the file after its offset in whole sectors. */
export function luks2Length(l: LuksModel, fileSize: bigint): bigint {
  const f = l.luks2!;
  const bytes = fileSize > l.payloadOffset ? fileSize - l.payloadOffset : 0n;
  if (f.payloadSize !== undefined) {
    // the guest checked the segment lies in the file
    if (f.payloadSize > bytes) throw new GuestResultError("LUKS2 segment past the end of the file");
    return f.payloadSize;
  }
  return bytes / f.sectorSize * f.sectorSize;
}

const MiB = 1024 * 1024;

/**
 * The guest RAM a reader of this LUKS2 image needs: 64 MiB, or the largest
 * Argon2 memory of a key slot able to unlock the data (within `maxKib`)
 * plus 32 MiB for the rest. A slot over the limit cannot be tried (the
 * guest's heap cannot hold it: it reports LUKS2_E_KDF_MEMORY); if every
 * such slot is over it, the first of them is returned for the message.
 */
export function luks2GuestRam(l: LuksModel, limitKib: bigint): number | { slot: number; kib: bigint } {
  // No guest is larger than limits.RAM_MAX, whatever the limit says.
  const ceiling = BigInt((limits.RAM_MAX - 32 * MiB) / 1024);
  const maxKib = limitKib < ceiling ? limitKib : ceiling;
  const slots = l.luks2!.keyslots;
  const argon = slots.filter((s) => s.kdf !== "pbkdf2");
  const within = argon.filter((s) => s.memoryKib <= maxKib);
  if (argon.length > 0 && within.length === 0 && argon.length === slots.length) {
    return { slot: argon[0].id, kib: argon[0].memoryKib };
  }
  const most = within.reduce((m, s) => s.memoryKib > m ? s.memoryKib : m, 0n);
  const bytes = Number(most) * 1024 + 32 * MiB;
  const ram = Math.ceil(bytes / (2 * MiB)) * 2 * MiB;
  return Math.max(64 * MiB, ram);
}
