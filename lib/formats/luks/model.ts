// A LUKS1 header as the info guest reported it (rec_luks_info), checked
// against fixed bounds and named as qemu's QCryptoBlockInfoLUKS names it.
import { records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { GuestResultError } from "../qcow2/model.ts";
import type { Luks2Facts } from "./luks2_model.ts";
import { CIPHER_ALG_NAMES, CIPHER_MODE_NAMES, HASH_NAMES, IVGEN_NAMES } from "./names.ts";

export interface LuksSlot {
  active: boolean;
  iters: bigint;
  stripes: bigint;
  keyOffset: bigint;
}

export interface LuksModel {
  cipherAlg: string;
  cipherMode: string;
  ivgenAlg: string;
  /** Only with the essiv generator (qemu reports it only then). */
  ivgenHashAlg?: string;
  hashAlg: string;
  /** Bytes. */
  payloadOffset: bigint;
  masterKeyIters: bigint;
  keyBytes: number;
  /** As stored, up to its first NUL (qemu's g_strndup). */
  uuid: Uint8Array;
  slots: LuksSlot[];
  /** LUKS2 only (lib/formats/luks/luks2_model.ts): what LUKS1 has no field for. */
  luks2?: Luks2Facts;
}

function named(map: Map<number, string>, v: unknown, what: string): string {
  const n = map.get(v as number);
  if (n === undefined) throw new GuestResultError(`LUKS ${what} ${v} out of range`);
  return n;
}

/** Decodes input `input`'s LUKS_INFO record. */
export function luksModel(recs: Rec[], input: number): LuksModel {
  const r = recs.find((x) => x.type === records.LUKS_INFO && x.fields.input === input);
  if (!r) throw new GuestResultError("no LUKS_INFO record");
  const f = r.fields;
  const ivgenAlg = named(IVGEN_NAMES, f.ivgen_alg, "ivgen");
  const keyBytes = f.key_bytes as number;
  if (keyBytes < 16 || keyBytes > 64) throw new GuestResultError(`LUKS key size ${keyBytes} out of range`);
  const uuidRaw = f.uuid as Uint8Array;
  const nul = uuidRaw.indexOf(0);
  const slots: LuksSlot[] = [];
  for (let i = 0; i < 8; i++) {
    slots.push({
      active: (f.slot_active as number[])[i] === 1,
      iters: BigInt((f.slot_iters as number[])[i]),
      stripes: BigInt((f.slot_stripes as number[])[i]),
      keyOffset: (f.slot_key_offset as bigint[])[i],
    });
  }
  return {
    cipherAlg: named(CIPHER_ALG_NAMES, f.cipher_alg, "cipher"),
    cipherMode: named(CIPHER_MODE_NAMES, f.cipher_mode, "cipher mode"),
    ivgenAlg,
    ivgenHashAlg: ivgenAlg === "essiv" ? named(HASH_NAMES, f.ivgen_hash, "ivgen hash") : undefined,
    hashAlg: named(HASH_NAMES, f.hash_alg, "hash"),
    payloadOffset: f.payload_offset as bigint,
    masterKeyIters: BigInt(f.master_key_iters as number),
    keyBytes,
    uuid: nul < 0 ? uuidRaw.slice() : uuidRaw.slice(0, nul),
    slots,
  };
}
