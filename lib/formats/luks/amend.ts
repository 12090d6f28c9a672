// amend of LUKS1 key slots: qemu 7.2's qcrypto_block_luks_amend_add_keyslot
// and _erase_keyslots, their checks in their order and words. The slot
// states come from the header the info guest read; whether a passphrase
// opens a slot, the master key and every write are the luks_write guest's
// (AMEND: MATCH, ADD, ERASE), on the image the command opened and unlocked.
import { formats, luksAmendActions, luksHashes, luksWriteFlags, ops, records } from "../../abi/spec.ts";
import { runGuest } from "../../vmm/guest.ts";
import { type OptDesc, optGet, type ParsedOpts, parseOptions } from "../options.ts";
import { fail, ok, type PlanResult } from "../plan.ts";
import type { LuksModel } from "./model.ts";
import { LuksGuestFailure, luksIterations, LuksWriteError } from "./write.ts";
import type { LuksNew } from "./create_options.ts";
import { HASH_NAMES } from "./names.ts";

export const LUKS_AMEND_OPTS: OptDesc[] = [
  { name: "state", type: "string", help: "Select new state of affected keyslots (active/inactive)" },
  { name: "keyslot", type: "number", help: "Select a single keyslot to modify explicitly" },
  { name: "old-secret", type: "string", help: "Select all keyslots that match this password" },
  {
    name: "new-secret",
    type: "string",
    help: "New secret to set in the matching keyslots. Empty string to erase",
  },
  { name: "iter-time", type: "number", help: "Time to spend in PBKDF in milliseconds" },
];

export interface LuksAmendRequest {
  active: boolean;
  keyslot?: bigint;
  oldSecret?: string;
  newSecret?: string;
  iterTime?: bigint;
}

/** The QemuOpts parse, then the QAPI one (QCryptoBlockAmendOptionsLUKS: state is required). */
export function parseLuksAmend(text: string): PlanResult<LuksAmendRequest> {
  const p = parseOptions(text, LUKS_AMEND_OPTS);
  if (!p.ok) return p;
  const o: ParsedOpts = p.value;
  const state = optGet(o, "state")?.str;
  if (state === undefined) return fail("invalid_option", "Parameter 'state' is missing");
  if (state !== "active" && state !== "inactive") {
    return fail("invalid_option", `Parameter 'state' does not accept value '${state}'`);
  }
  const ks = optGet(o, "keyslot")?.str;
  let keyslot: bigint | undefined;
  if (ks !== undefined) {
    // the QAPI int member: the text as an int64 (QemuOpts already accepted it as a number)
    try {
      keyslot = BigInt.asIntN(64, BigInt(ks.trim()));
    } catch {
      keyslot = BigInt.asIntN(64, optGet(o, "keyslot")!.num!);
    }
  }
  const it = optGet(o, "iter-time");
  return ok({
    active: state === "active",
    keyslot,
    oldSecret: optGet(o, "old-secret")?.str,
    newSecret: optGet(o, "new-secret")?.str,
    iterTime: it ? BigInt.asUintN(64, it.num!) : undefined,
  });
}

/** What the command supplies: the image, its passphrase, secrets, and qemu's error shape. */
export interface LuksAmendHost {
  path: string;
  luks: LuksModel;
  /** The image's own passphrase (its key-secret, checked at open). */
  passphrase: Uint8Array;
  /** A secret's passphrase, or qemu's refusal thrown as an Error with `lines`. */
  secret(id: string): Uint8Array;
  force: boolean;
  kdfMaxIters: bigint;
}

/** A refusal in qemu's words (printed as "instar: MSG"). */
export class LuksAmendError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LuksAmendError";
  }
}

function secretOf(host: LuksAmendHost, id: string): Uint8Array {
  try {
    return host.secret(id);
  } catch (e) {
    const lines = (e as { lines?: string[] }).lines;
    if (lines) throw new LuksAmendError(lines[0]);
    throw e;
  }
}

async function amendRun(host: LuksAmendHost, args: bigint[], extra: Uint8Array[]) {
  const r = await runGuest({
    op: "luks_write",
    opCode: ops.LUKS_WRITE,
    inputs: [{ path: host.path, format: formats.LUKS, secret: host.passphrase }],
    extraSecrets: extra,
    flags: luksWriteFlags.AMEND,
    args,
    kdfMaxIters: host.kdfMaxIters,
    output: { path: host.path, cap: 1n << 62n },
    timeoutMs: 24 * 3600 * 1000,
  });
  const err = r.records.find((x) => x.type === records.ERROR);
  if (err) throw new LuksGuestFailure(err);
  return r.records;
}

/** The key slots `pw` opens (qcrypto_block_luks_load_key over every slot). */
async function matching(host: LuksAmendHost, pw: Uint8Array): Promise<number> {
  const recs = await amendRun(host, [BigInt(luksAmendActions.MATCH), 0n, 0n], [pw]);
  const m = recs.filter((x) => x.type === records.LUKS_SLOTS);
  if (m.length !== 1) throw new Error("the guest did not report the key slots");
  return (m[0].fields.opens as number) & 0xff;
}

const bits = (n: number) => [...Array(8).keys()].filter((i) => n >> i & 1);

export async function amendLuks(req: LuksAmendRequest, host: LuksAmendHost): Promise<void> {
  const slots = host.luks.slots;
  const activeCount = slots.filter((s) => s.active).length;
  if (req.active) {
    if (req.newSecret === undefined) {
      throw new LuksAmendError("'new-secret' is required to activate a keyslot");
    }
    if (req.oldSecret !== undefined) {
      throw new LuksAmendError("'old-secret' must not be given when activating keyslots");
    }
    let slot: number;
    if (req.keyslot !== undefined) {
      if (req.keyslot < 0n || req.keyslot >= 8n) {
        throw new LuksAmendError(
          `Invalid keyslot ${BigInt.asUintN(32, req.keyslot)} specified, must be between 0 and 7`,
        );
      }
      slot = Number(req.keyslot);
    } else {
      slot = slots.findIndex((s) => !s.active);
      if (slot < 0) throw new LuksAmendError("Can't add a keyslot - all keyslots are in use");
    }
    if (!host.force && slots[slot].active) {
      throw new LuksAmendError(`Refusing to overwrite active keyslot ${slot} - please erase it first`);
    }
    const pw = secretOf(host, req.newSecret).slice();
    try {
      const hash = [...HASH_NAMES].find(([, v]) => v === host.luks.hashAlg)?.[0] ?? luksHashes.SHA256;
      const spec: LuksNew = {
        cipherAlg: 0,
        cipherMode: 0,
        ivgenAlg: 0,
        ivgenHash: 0,
        hashAlg: hash,
        iterTime: req.iterTime ?? 2000n,
      };
      let iters;
      try {
        iters = await luksIterations(spec, host.kdfMaxIters, host.luks.keyBytes);
      } catch (e) {
        if (e instanceof LuksWriteError) throw new LuksAmendError(e.message);
        throw e;
      }
      const entropy = crypto.getRandomValues(new Uint8Array(64));
      try {
        await amendRun(host, [BigInt(luksAmendActions.ADD), BigInt(slot), iters.slot], [pw, entropy]);
      } finally {
        entropy.fill(0);
      }
    } finally {
      pw.fill(0);
    }
    return;
  }
  if (req.newSecret !== undefined) {
    throw new LuksAmendError("'new-secret' must not be given when erasing keyslots");
  }
  if (req.iterTime !== undefined) {
    throw new LuksAmendError("'iter-time' must not be given when erasing keyslots");
  }
  const old = req.oldSecret !== undefined ? secretOf(host, req.oldSecret).slice() : undefined;
  try {
    let erase = 0;
    if (req.keyslot !== undefined) {
      const k = req.keyslot;
      if (k < 0n || k >= 8n) {
        throw new LuksAmendError(
          `Invalid keyslot ${BigInt.asIntN(32, k)} specified, must be between 0 and 7`,
        );
      }
      const i = Number(k);
      if (old && !((await matching(host, old)) >> i & 1)) {
        throw new LuksAmendError(
          `Given keyslot ${i} doesn't contain the given old password for erase operation`,
        );
      }
      if (!host.force && !slots[i].active) {
        throw new LuksAmendError(`Given keyslot ${i} is already erased (inactive) `);
      }
      if (!host.force && activeCount === 1) {
        throw new LuksAmendError(
          `Attempt to erase the only active keyslot ${i} which will erase all the data in the image ` +
            "irreversibly - refusing operation",
        );
      }
      erase = 1 << i;
    } else if (old) {
      erase = await matching(host, old);
      if (erase === 0) throw new LuksAmendError("No keyslots match given (old) password for erase operation");
      if (!host.force && bits(erase).length === activeCount) {
        throw new LuksAmendError(
          "All the active keyslots match the (old) password that was given and erasing them will erase all " +
            "the data in the image irreversibly - refusing operation",
        );
      }
    } else {
      throw new LuksAmendError(
        "To erase keyslot(s), either explicit keyslot index or the password currently contained in them " +
          "must be given",
      );
    }
    const entropy = crypto.getRandomValues(new Uint8Array(64));
    try {
      await amendRun(host, [BigInt(luksAmendActions.ERASE), BigInt(erase), 0n], [entropy]);
    } finally {
      entropy.fill(0);
    }
  } finally {
    old?.fill(0);
  }
}
