// measure -O luks: qemu 7.2's block_crypto_measure. The size (--size, or the
// source's length), then the create options checked as the dry-run create
// qemu makes for the header size (qcrypto_block_calculate_payload_offset):
// key-secret required, its secret must exist, the algorithms usable. Every
// sector is encrypted whether the source allocates it or not, so required
// and fully allocated are both the payload offset plus the size. (qemu's dry
// run also calibrates PBKDF2; instar does not: the numbers do not depend on it.)
import { optGet, type ParsedOpts } from "../options.ts";
import { fail, ok, type PlanResult } from "../plan.ts";
import type { MeasureHost, MeasureInput, MeasureResult } from "../types.ts";
import { luksCheck, luksKeyBytes, luksParse, luksPayloadOffset } from "./create_options.ts";

export function luksMeasure(
  opts: ParsedOpts,
  input?: MeasureInput,
  host?: MeasureHost,
): PlanResult<MeasureResult> {
  const size = input ? input.virtualSize : BigInt.asUintN(64, optGet(opts, "size")?.num ?? 0n);
  const n = luksParse(opts);
  if (!n.ok) return n;
  if (n.value.keySecret === undefined) {
    return fail("invalid_option", "Parameter 'key-secret' is required for cipher");
  }
  try {
    host?.passphrase(n.value.keySecret);
  } catch (e) {
    const lines = (e as { lines?: string[] }).lines;
    if (lines) return fail("invalid_option", lines[0]);
    throw e;
  }
  const why = luksCheck(n.value);
  if (why) return fail("invalid_option", why);
  const total = luksPayloadOffset(luksKeyBytes(n.value)) + size;
  return ok({ required: total, fullyAllocated: total });
}
