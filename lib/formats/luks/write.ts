// LUKS1 output (runs guests, so it lives beside the pure planners but does
// no file I/O of its own): create -f luks and convert -O luks through the luks_write
// guest (guest/ops/luks_write.c). The host picks the iteration counts as
// qemu's qcrypto_block_luks_create does (qcrypto_pbkdf2_count_iters, timed
// here around the guest's BENCH runs of nettle's PBKDF2), then one guest
// run makes the master key, salts, uuid and key slot 0, writes the header
// and, for convert, encrypts the source chain behind it. The host hands
// the guest the passphrase and 64 random bytes (crypto.getRandomValues)
// in params.secret; it never sees a key.
import { luksWriteFlags, ops, records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { runGuest } from "../../vmm/guest.ts";
import { hostEnv } from "../../host/context.ts";
import { luksDigestLen, luksKeyBytes, type LuksNew, luksPayloadOffset } from "./create_options.ts";

/** A source layer of convert -O luks (lib/convert/pipeline.ts SourceLayer's shape). */
export interface LuksSourceLayer {
  path: string;
  formatCode: number;
  nofollow: boolean;
  snapshot?: number;
  secret?: Uint8Array;
}

/** An ERROR record the luks_write guest sent (the caller words it). */
export class LuksGuestFailure extends Error {
  constructor(readonly record: Rec) {
    super("guest reported an error");
    this.name = "LuksGuestFailure";
  }
}

function failOnError(recs: Rec[]): void {
  const err = recs.find((r) => r.type === records.ERROR);
  if (err) throw new LuksGuestFailure(err);
}

const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = (1n << 32n) - 1n;
const TIMEOUT_MS = 7 * 24 * 3600 * 1000;

/** A refusal in qemu's words (the caller adds "FILE: " or convert's prefix). */
export class LuksWriteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LuksWriteError";
  }
}

async function benchRun(hash: number, iterations: bigint, kdfMaxIters: bigint): Promise<number> {
  const t0 = performance.now();
  const r = await runGuest({
    op: "luks_write",
    opCode: ops.LUKS_WRITE,
    inputs: [],
    flags: luksWriteFlags.BENCH,
    args: [0n, 0n, 0n, 0n, BigInt(hash), 0n, iterations, 0n],
    kdfMaxIters,
  });
  const ms = performance.now() - t0;
  failOnError(r.records);
  return ms;
}

/**
 * qcrypto_pbkdf2_count_iters for one output block: iterations per second,
 * from 2^15 iterations up until a run takes over 500 ms (qemu's loop, with
 * wall time for its thread CPU time). INSTAR_LUKS_PBKDF2_RATE (tests) gives
 * the answer instead.
 */
async function pbkdf2Rate(hash: number, kdfMaxIters: bigint): Promise<bigint> {
  const forced = hostEnv("INSTAR_LUKS_PBKDF2_RATE");
  if (forced !== undefined && /^[1-9][0-9]{0,15}$/.test(forced)) return BigInt(forced);
  let iterations = 1n << 15n;
  for (;;) {
    if (iterations > kdfMaxIters) iterations = kdfMaxIters;
    const ms = Math.max(1, Math.round(await benchRun(hash, iterations, kdfMaxIters)));
    const delta = BigInt(ms);
    if (delta > 500n || iterations === kdfMaxIters) return iterations * 1000n / delta;
    if (delta < 100n) iterations *= 10n;
    else iterations = iterations * 1000n / delta;
  }
}

/** qemu's scaling of a calibration: iterations for iter-time ms, bounded as it bounds them. */
function scale(rate: bigint, iterTime: bigint, div: bigint, min: bigint): bigint {
  if (iterTime !== 0n && rate > U64_MAX / iterTime) {
    throw new LuksWriteError(`PBKDF iterations ${rate} too large to scale: Numerical result out of range`);
  }
  const iters = rate * iterTime / 1000n / div;
  if (iters > U32_MAX) {
    throw new LuksWriteError(
      `PBKDF iterations ${iters} larger than 4294967295: Numerical result out of range`,
    );
  }
  return iters > min ? iters : min;
}

/** The master-key digest's and key slot 0's iteration counts (qcrypto_block_luks_create, _store_key). */
export async function luksIterations(
  n: LuksNew,
  kdfMaxIters: bigint,
  /** The image's key size (amend: an existing header's), else the one `n`'s cipher implies. */
  keyBytes = luksKeyBytes(n),
): Promise<{ mk: bigint; slot: bigint }> {
  const rate = await pbkdf2Rate(n.hashAlg, kdfMaxIters);
  const dl = luksDigestLen(n.hashAlg);
  const blocks = (bytes: number) => BigInt(Math.ceil(bytes / dl));
  const mk = scale(rate / blocks(20), n.iterTime, 8n, 1000n);
  const slot = scale(rate / blocks(keyBytes), n.iterTime, 1n, 1000n);
  // instar's own reader refuses more than kdf_max_iters: never write what it could not open.
  const cap = (x: bigint) => (x > kdfMaxIters ? kdfMaxIters : x);
  return { mk: cap(mk), slot: cap(slot) };
}

export interface LuksWriteJob {
  /** The output file (created and sized by the caller: payload offset + size). */
  output: string;
  spec: LuksNew;
  passphrase: Uint8Array;
  iters: { mk: bigint; slot: bigint };
  /** Guest bytes to encrypt from `layers` (0 and no layers: create). */
  size: bigint;
  layers: LuksSourceLayer[];
  kdfMaxIters: bigint;
  /** Header only, at this byte of the output (qcow2's crypto header clusters; no layers). */
  at?: bigint;
  /** A LUKS2 source: read by luks_write_luks2 with this much guest RAM (Argon2). */
  luks2Ram?: number;
  onProgress?: (done: bigint, total: bigint) => void;
}

/** Runs luks_write: header, key slot 0 and (convert) the encrypted payload. Returns the LUKS_WRITTEN facts. */
export async function luksWrite(job: LuksWriteJob): Promise<{ payloadOffset: bigint; cpuEntropy: number }> {
  const n = job.spec;
  const payload = luksPayloadOffset(luksKeyBytes(n));
  const entropy = crypto.getRandomValues(new Uint8Array(64));
  const copy = job.layers.length > 0;
  if (job.at !== undefined && copy) throw new Error("a LUKS header at an offset takes no source");
  try {
    const r = await runGuest({
      op: job.luks2Ram ? "luks_write_luks2" : "luks_write",
      ramBytes: job.luks2Ram,
      opCode: ops.LUKS_WRITE,
      inputs: job.layers.map((l) => ({
        path: l.path,
        format: l.formatCode,
        nofollow: l.nofollow,
        snapshot: l.snapshot,
        secret: l.secret,
      })),
      extraSecrets: [job.passphrase, entropy],
      flags: luksWriteFlags.FORMAT | (copy ? luksWriteFlags.COPY : 0) |
        (job.at !== undefined ? luksWriteFlags.AT : 0),
      args: [
        BigInt(n.cipherAlg),
        BigInt(n.cipherMode),
        BigInt(n.ivgenAlg),
        BigInt(n.ivgenHash),
        BigInt(n.hashAlg),
        job.iters.mk,
        job.iters.slot,
        job.at ?? (copy ? job.size : 0n),
      ],
      kdfMaxIters: job.kdfMaxIters,
      output: {
        path: job.output,
        cap: (job.at ?? 0n) + payload + (job.at !== undefined ? 0n : (job.size + 511n) / 512n * 512n),
      },
      timeoutMs: TIMEOUT_MS,
      onProgress: job.onProgress,
    });
    failOnError(r.records);
    const w = r.records.filter((x) => x.type === records.LUKS_WRITTEN);
    if (w.length !== 1) throw new Error("the guest did not report the LUKS header it wrote");
    if (w[0].fields.payload_offset !== payload) {
      throw new Error("the guest's LUKS payload offset is not the planned one");
    }
    return { payloadOffset: payload, cpuEntropy: w[0].fields.entropy as number };
  } finally {
    entropy.fill(0);
  }
}
