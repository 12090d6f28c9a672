// create -f luks: block/crypto.c block_crypto_co_create_opts_luks and
// qcrypto_block_luks_create in qemu 7.2's order. The option parse fails
// before the file exists; the file is then created (QEMU's create lock),
// and every later refusal (no key-secret, an unknown or non-UTF-8 secret,
// an algorithm LUKS cannot use, iteration counts out of range, a failed
// guest run) removes it again, as qemu deletes it. The header, the master
// key and key slot 0 are made in the luks_write guest (write.ts).
import { KDF_MAX_ITERS_DEFAULT } from "./errors.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { optGet, type ParsedOpts } from "../options.ts";
import { CreateError, type CreateHost } from "../types.ts";
import { luksCheck, luksKeyBytes, luksParse, luksPayloadOffset } from "./create_options.ts";
import { LuksGuestFailure, luksIterations, luksWrite, LuksWriteError } from "./write.ts";

/** qemu's words for a failed luks_write run (an ERROR record, or the VMM's write failure). */
export function luksGuestErrorText(e: unknown): string | undefined {
  if (e instanceof LuksGuestFailure) {
    const f = e.record.fields;
    return qcow2ErrorMessage({
      code: f.code as number,
      a0: f.a0 as bigint,
      a1: f.a1 as bigint,
      a2: f.a2 as bigint,
    });
  }
  const w = (e as { write?: { offset: bigint; text: string } }).write;
  if (w) return `error while writing at byte ${w.offset}: ${w.text}`;
  return undefined;
}

export async function createLuks(filename: string, opts: ParsedOpts, host: CreateHost): Promise<void> {
  const size = optGet(opts, "size")!.num!;
  const prealloc = optGet(opts, "preallocation")?.str ?? "off";
  if (!["off", "metadata", "falloc", "full"].includes(prealloc)) {
    throw new CreateError(`invalid parameter value: ${prealloc}`);
  }
  const parsed = luksParse(opts);
  if (!parsed.ok) throw new CreateError(parsed.error.message);
  const n = parsed.value;
  await host.createFile();
  let pw: Uint8Array | undefined;
  try {
    if (n.keySecret === undefined) throw new CreateError("Parameter 'key-secret' is required for cipher");
    if (!host.passphrase) throw new CreateError("No secret with id '" + n.keySecret + "'");
    pw = host.passphrase(n.keySecret).slice();
    const why = luksCheck(n);
    if (why) throw new CreateError(why);
    const kdfMax = host.kdfMaxIters?.() ?? KDF_MAX_ITERS_DEFAULT;
    const iters = await luksIterations(n, kdfMax);
    const payload = luksPayloadOffset(luksKeyBytes(n));
    const total = payload + BigInt.asUintN(64, size);
    if (prealloc === "falloc" || prealloc === "full") await host.allocate(0n, total, prealloc);
    await host.resizeFile(total, "");
    await luksWrite({
      output: filename,
      spec: n,
      passphrase: pw,
      iters,
      size: BigInt.asUintN(64, size),
      layers: [],
      kdfMaxIters: kdfMax,
    });
  } catch (e) {
    await host.remove();
    if (e instanceof LuksWriteError) throw new CreateError(e.message);
    const text = luksGuestErrorText(e);
    if (text !== undefined) throw new CreateError(text);
    throw e;
  } finally {
    pw?.fill(0);
  }
}
