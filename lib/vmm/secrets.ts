// The passphrase channel of a guest run (params.input_secret_len and
// params.secret, docs/abi.md): the one place that lays a request's
// passphrases out for the VMM (lib/vmm/sandbox.ts) and the tests' hosted
// runner (which hands them over a pipe, never argv). Callers zero the bytes
// once they are handed on.

/** params.secret is this big: the passphrases of one run, back to back. */
export const SECRET_AREA = 1024;

/** A request's passphrases as params lays them out, or undefined when it has none. */
export function packSecrets(
  inputs: { secret?: Uint8Array }[],
): { lengths: number[]; mask: number; bytes: Uint8Array } | undefined {
  if (!inputs.some((i) => i.secret)) return undefined;
  // params.input_secret_len has an entry for the first 16 inputs only (limits.PARAM_INPUTS).
  if (inputs.slice(16).some((i) => i.secret)) {
    throw new Error("an encrypted image must be among the first 16 inputs");
  }
  inputs = inputs.slice(0, 16);
  const lengths = inputs.map((i) => i.secret?.length ?? 0);
  const total = lengths.reduce((a, b) => a + b, 0);
  if (total > SECRET_AREA) {
    throw new Error(`passphrases longer than ${SECRET_AREA} bytes in all are not supported`);
  }
  const bytes = new Uint8Array(SECRET_AREA);
  let at = 0;
  for (const i of inputs) {
    if (!i.secret) continue;
    bytes.set(i.secret, at);
    at += i.secret.length;
  }
  const mask = inputs.reduce((m, x, i) => (x.secret ? m | (1 << i) : m), 0);
  return { lengths, mask, bytes };
}

/** A run's secret slots: one per input, then its extra ones (params.secret_inputs bit n_inputs + k). */
export function secretSlots(
  req: { inputs: { secret?: Uint8Array }[]; extraSecrets?: Uint8Array[] },
): { secret?: Uint8Array }[] {
  return [...req.inputs, ...(req.extraSecrets ?? []).map((secret) => ({ secret }))];
}
