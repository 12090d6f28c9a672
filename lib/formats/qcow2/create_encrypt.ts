// qcow2 create's encryption options (block/qcow2.c qcow2_co_create_opts
// and the QAPI visit of QCryptoBlockCreateOptions): `encryption=on` is
// encrypt.format=qcow ("aes"), the alias and encrypt.format together are
// refused, the format is the union's discriminator (aes/qcow or luks) and
// its members are visited in order with qemu's words; a qcow ("aes")
// block takes only key-secret. Pure: no I/O. The LUKS header itself is
// made later by the luks_write guest (create_encrypt_run.ts).
import { optGet, type ParsedOpts } from "../options.ts";
import { fail, ok, type PlanResult } from "../plan.ts";
import { type LuksNew, luksParse } from "../luks/create_options.ts";

/** What qcow2_set_up_encryption receives. */
export type Qcow2Encrypt =
  | { format: "aes"; keySecret?: string }
  | { format: "luks"; keySecret?: string; luks: LuksNew & { cipherName: string } };

const MEMBERS = [
  "key-secret",
  "cipher-alg",
  "cipher-mode",
  "ivgen-alg",
  "ivgen-hash-alg",
  "hash-alg",
  "iter-time",
];

/** The alias clash qdict_rename_keys reports before the QAPI visit (undefined: none). */
export function encryptAliasError(o: ParsedOpts): string | undefined {
  const alias = optGet(o, "encryption");
  if (alias === undefined || optGet(o, "encrypt.format") === undefined) return undefined;
  // "encryption=off" is dropped before the rename.
  if (alias.str === "off") return undefined;
  return "'encrypt.format' and its alias 'encryption' can't be used at the same time";
}

/** The `encrypt` member of BlockdevCreateOptionsQcow2 (undefined: not encrypted). */
export function qcow2EncryptOptions(o: ParsedOpts): PlanResult<Qcow2Encrypt | undefined> {
  const alias = optGet(o, "encryption");
  let format = optGet(o, "encrypt.format")?.str;
  if (format === undefined && alias !== undefined && alias.str !== "off") {
    format = alias.str === "on" ? "qcow" : alias.str;
  }
  const given = MEMBERS.filter((m) => optGet(o, `encrypt.${m}`) !== undefined);
  if (format === undefined) {
    if (given.length === 0) return ok(undefined);
    return fail("invalid_option", "Parameter 'encrypt.format' is missing");
  }
  if (format === "aes") format = "qcow";
  if (format !== "qcow" && format !== "luks") {
    return fail("invalid_option", `Parameter 'format' does not accept value '${format}'`);
  }
  const keySecret = optGet(o, "encrypt.key-secret")?.str;
  if (format === "qcow") {
    const extra = given.find((m) => m !== "key-secret");
    if (extra !== undefined) return fail("invalid_option", `Parameter 'encrypt.${extra}' is unexpected`);
    return ok({ format: "aes", keySecret });
  }
  // The LUKS members, renamed as the visitor sees them inside `encrypt`.
  const sub: ParsedOpts = { descs: o.descs, items: [] };
  for (const it of o.items) {
    if (it.name.startsWith("encrypt.") && MEMBERS.includes(it.name.slice(8))) {
      sub.items.push({ ...it, name: it.name.slice(8) });
    }
  }
  const luks = luksParse(sub);
  if (!luks.ok) return fail(luks.error.kind, luks.error.message);
  return ok({ format: "luks", keySecret, luks: luks.value });
}
