// convert -O qcow2 -o encrypt.format=luks|aes (qemu-img 7.2 writes an
// encrypted qcow2 through qcow2_co_create + qcow2_set_up_encryption, then
// qcow2_co_pwritev_part encrypts every cluster it allocates). The secret
// and the LUKS choices are checked as qcrypto_block_create checks them
// (after the source is open, as bdrv_create runs then), the PBKDF2
// iterations calibrated as for create -f luks, then one qcow2_encrypt guest
// (guest/ops/qcow2_encrypt.c) writes the LUKS header into the clusters the
// planner reserved right after the header cluster and packs the source's
// data clusters behind the L1 table, each encrypted for its offset (the
// host offset for LUKS, the guest offset for the legacy AES method). The
// master key and the plaintext never leave the guest; the planner
// (lib/formats/qcow2/output_plan.ts) then writes every table. One guest
// only: a second would need the same master key.
import { formats, limits, ops, qcow2EncryptFlags, records } from "../abi/spec.ts";
import { fileRange, type GuestInput, runGuest } from "../vmm/guest.ts";
import { hostPath } from "../host/context.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import {
  qcow2OutputFinish,
  type Qcow2OutputOptions,
  qcow2OutputPrologue,
} from "../formats/qcow2/output_plan.ts";
import type { Qcow2Encrypt } from "../formats/qcow2/create_encrypt.ts";
import { luksCheck, luksKeyBytes, luksPayloadOffset } from "../formats/luks/create_options.ts";
import { luksIterations, LuksWriteError } from "../formats/luks/write.ts";
import { ObjectError, type SecretStore } from "../secrets/objects.ts";
import { optGet, parseOptions } from "../formats/options.ts";
import type { FormatDriver } from "../formats/types.ts";
import { collect, type ConvertJob, failOnError, inputs, PlanRefused } from "./pipeline.ts";

const TIMEOUT_MS = 7 * 24 * 3600 * 1000;
const RAM = 128 * 1024 * 1024;

/** img_convert's check with -c: qemu's qcow2 cannot compress and encrypt at once. */
export const COMPRESS_ENCRYPT = "Compression and encryption not supported at the same time";

/**
 * Whether img_convert's -c check refuses encryption before bdrv_create would check the options:
 * `-o` parses and names `encrypt.format`, or `encryption` is on (qemu looks at nothing else).
 * Also whether a `-` source is spooled rather than read in one pass (lib/convert/stdin_pass.ts).
 */
export function compressEncryptFirst(driver: FormatDriver, text: string): boolean {
  if (driver.name !== "qcow2" || !driver.create) return false;
  const o = parseOptions(text, driver.create.options);
  if (!o.ok) return false;
  return optGet(o.value, "encrypt.format") !== undefined || optGet(o.value, "encryption")?.bool === true;
}

/**
 * Writes `out` (an empty new file) as an encrypted qcow2 image of `job`'s source. Returns the data bytes
 * written. `backingSize`: convert -B, the target backing file's size (base.backingFile names it); the
 * guest then copies only what the source's top layer holds, as qemu-img does. `backingInputs`: the
 * target's backing chain (plain layers, opened through the allowlist), whose bytes the guest copies
 * into target clusters the top writes only in part, as qemu's COW does (then encrypted with the rest).
 */
export async function convertToEncryptedQcow2(
  job: ConvertJob,
  base: Qcow2OutputOptions,
  encrypt: Qcow2Encrypt,
  out: string,
  secrets: SecretStore,
  kdfMaxIters: bigint,
  backingSize?: bigint,
  backingInputs?: GuestInput[],
): Promise<bigint> {
  // qcrypto_block_create: the secret first, then the LUKS checks and the PBKDF2 calibration.
  if (encrypt.keySecret === undefined) {
    throw new PlanRefused("Parameter 'encrypt.key-secret' is required for cipher");
  }
  let pw: Uint8Array;
  try {
    pw = secrets.passphrase(encrypt.keySecret).slice();
  } catch (e) {
    if (e instanceof ObjectError) throw new PlanRefused(e.lines[0]);
    throw e;
  }
  const entropy = crypto.getRandomValues(new Uint8Array(64));
  try {
    let args: bigint[];
    let options: Qcow2OutputOptions;
    let payload = 0n;
    if (encrypt.format === "luks") {
      const n = encrypt.luks;
      const why = luksCheck(n);
      if (why) throw new PlanRefused(why);
      let iters;
      try {
        iters = await luksIterations(n, kdfMaxIters);
      } catch (e) {
        if (e instanceof LuksWriteError) throw new PlanRefused(e.message);
        throw e;
      }
      payload = luksPayloadOffset(luksKeyBytes(n));
      options = { ...base, crypt: { method: 2, headerLength: payload } };
      const algs = BigInt(n.cipherAlg) | BigInt(n.cipherMode) << 8n | BigInt(n.ivgenAlg) << 16n |
        BigInt(n.ivgenHash) << 24n | BigInt(n.hashAlg) << 32n;
      args = [algs, iters.mk, iters.slot, base.clusterSize];
    } else {
      options = { ...base, crypt: { method: 1, headerLength: 0n } };
      args = [0n, 0n, 0n, 0n];
    }
    let flags: number = encrypt.format === "luks" ? qcow2EncryptFlags.LUKS : qcow2EncryptFlags.AES;
    if (backingSize !== undefined) {
      if (base.extendedL2) {
        throw new PlanRefused("Extended L2 entries with a backing file are not supported by instar convert");
      }
      flags |= qcow2EncryptFlags.BACKING;
      if (base.compat === "0.10") flags |= qcow2EncryptFlags.ZERO_DATA;
    }
    const tb = backingSize !== undefined ? targetBacking(job, backingInputs) : undefined;
    const pro = qcow2OutputPrologue(options, job.size);
    if (!pro.ok) throw new PlanRefused(pro.error.message);
    const dataStart = pro.value.dataStart;
    const cs = options.clusterSize;
    const cbits = BigInt(cs.toString(2).length - 1);
    const clusters = (job.size + cs - 1n) / cs;
    if (encrypt.format === "luks") {
      // qcow2_crypto_hdr_init_func zeroes the header's clusters whole
      // (file-posix allocates them); the guest writes the header over them.
      const hdrBytes = ((payload + cs - 1n) / cs) * cs;
      const st = await Deno.stat(hostPath(out));
      await fileRange("allocate", out, cs, hdrBytes, BigInt(st.dev), BigInt(st.ino ?? 0));
    }
    const r = await runGuest({
      // A LUKS2 source: qcow2_encrypt_luks2 (the LUKS2 reader and Argon2 in place of the other readers).
      op: job.luks2Ram ? "qcow2_encrypt_luks2" : "qcow2_encrypt",
      opCode: ops.QCOW2_ENCRYPT,
      inputs: [...inputs(job), ...(tb ?? [])],
      extraSecrets: encrypt.format === "luks" ? [pw, entropy] : [pw],
      flags,
      // arg[5]: the cluster bits, and from bit 32 where the target's backing chain starts (0: none).
      args: [
        ...args,
        dataStart,
        cbits | (tb ? BigInt(job.layers.length) << 32n : 0n),
        job.minSparse,
        backingSize ?? 0n,
      ],
      kdfMaxIters,
      ramBytes: job.luks2Ram && job.luks2Ram > RAM ? job.luks2Ram : RAM,
      timeoutMs: TIMEOUT_MS,
      output: { path: out, cap: dataStart + clusters * cs },
      onProgress: job.onProgress,
    });
    failOnError(r.records);
    if (encrypt.format === "luks") {
      const w = r.records.filter((x) => x.type === records.LUKS_WRITTEN);
      if (w.length !== 1 || w[0].fields.payload_offset !== payload) {
        throw new Error("the guest did not report the planned LUKS header");
      }
    }
    const part = collect(r.records, 0n);
    if (part.partial > 0n) {
      throw new PlanRefused(
        `${part.partial} target cluster(s) would be only partly written over the backing file (qemu copies ` +
          "the backing file's data into them); this is not supported by instar convert",
      );
    }
    const plan = qcow2OutputFinish(options, job.size, part.dataEnd, part.runs, [], part.zeros);
    if (!plan.ok) throw new PlanRefused(plan.error.message);
    await applyPlan(out, plan.value);
    return part.written;
  } finally {
    pw.fill(0);
    entropy.fill(0);
  }
}

/**
 * The target's backing chain for the guest's copy-on-write, when it can be
 * given: every layer plain (an encrypted backing chain has no inputs), the
 * whole within the guest's input slots, and the layers ones the guest reads
 * (qcow2_encrypt_luks2, for a LUKS2 source, has raw's reader only). Else
 * undefined: partly written clusters are then refused.
 */
function targetBacking(job: ConvertJob, tb: GuestInput[] | undefined): GuestInput[] | undefined {
  if (!tb || tb.length === 0 || job.layers.length + tb.length > limits.PARAM_INPUTS) return undefined;
  if (job.luks2Ram && tb.some((x) => x.format !== formats.RAW)) return undefined;
  return tb;
}
