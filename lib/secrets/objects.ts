// qemu-img's --object, for the one object type an image tool needs: the
// `secret` (crypto/secret.c) that carries a LUKS passphrase. Parsed with
// qemu's keyval rules (lib/config/qemu_opts.ts), checked in qemu's order with
// qemu's words; every other object type is refused as qemu-img 7.2 refuses
// it, or (types qemu-img would create) with instar's own message. The
// secret's bytes stay in this store: they are never put into a message, a
// log line, a file or a child's argv; lib/vmm hands them to the one guest
// run that needs them (params.secret, docs/abi.md).
import { type Keyval, OptsError, parseKeyval } from "../config/qemu_opts.ts";
import type * as NodeCrypto from "node:crypto";

/** An --object refusal in qemu's words (one line each). */
export class ObjectError extends Error {
  constructor(readonly lines: string[]) {
    super(lines.join("\n"));
    this.name = "ObjectError";
  }
}

/** `--object help` / `--object secret,help`: qemu prints this and exits 0. */
export class ObjectHelp extends Error {
  constructor(readonly text: string) {
    super("help");
    this.name = "ObjectHelp";
  }
}

/** qemu-img 7.2's ObjectType enum (qapi/qom.json as built for Debian). */
const OBJECT_TYPES = [
  "authz-list",
  "authz-listfile",
  "authz-pam",
  "authz-simple",
  "can-bus",
  "can-host-socketcan",
  "colo-compare",
  "cryptodev-backend",
  "cryptodev-backend-builtin",
  "cryptodev-vhost-user",
  "dbus-vmstate",
  "filter-buffer",
  "filter-dump",
  "filter-mirror",
  "filter-redirector",
  "filter-replay",
  "filter-rewriter",
  "input-barrier",
  "input-linux",
  "iothread",
  "main-loop",
  "memory-backend-epc",
  "memory-backend-file",
  "memory-backend-memfd",
  "memory-backend-ram",
  "pef-guest",
  "pr-manager-helper",
  "qtest",
  "rng-builtin",
  "rng-egd",
  "rng-random",
  "secret",
  "secret_keyring",
  "sev-guest",
  "thread-context",
  "s390-pv-guest",
  "throttle-group",
  "tls-creds-anon",
  "tls-creds-psk",
  "tls-creds-x509",
  "tls-cipher-suites",
  "x-remote-object",
  "x-vfio-user-server",
];

/** Types whose QAPI members are all optional and that qemu-img was not built with. */
const NOT_IN_QEMU_IMG = [
  "can-bus",
  "cryptodev-backend",
  "cryptodev-backend-builtin",
  "iothread",
  "pef-guest",
  "rng-builtin",
  "rng-random",
  "s390-pv-guest",
];

const USER_CREATABLE = [
  "authz-list",
  "authz-list-file",
  "authz-simple",
  "main-loop",
  "pr-manager-helper",
  "secret",
  "secret_keyring",
  "thread-context",
  "throttle-group",
  "tls-cipher-suites",
  "tls-creds-anon",
  "tls-creds-psk",
  "tls-creds-x509",
];

const SECRET_HELP = "secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n" +
  "  iv=<string>\n  keyid=<string>\n";

const SECRET_KEYS = ["qom-type", "id", "data", "file", "format", "keyid", "iv", "loaded"];

/** qemu's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
function idWellformed(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

/** Reads a secret file (the caller resolves the path against the request's directory). */
export type SecretFileReader = (path: string) => Uint8Array;

/** glib's g_file_get_contents message for a failed read. */
function fileErrorText(path: string, e: unknown): string {
  const isDir = e instanceof Error && /Is a directory|EISDIR/.test(e.message);
  if (isDir) return `Error reading file “${path}”: Is a directory`;
  let why = "No such file or directory";
  if (e instanceof Deno.errors.PermissionDenied) why = "Permission denied";
  else if (e instanceof Error && !(e instanceof Deno.errors.NotFound)) {
    why = e.message.replace(/ \(os error \d+\).*$/, "").replace(/:.*$/, "");
  }
  return `Failed to open file “${path}”: ${why}`;
}

/** glib's g_base64_decode after qemu's character check: whole groups of four only
 * (a trailing partial group is dropped), '=' padding shortening the last one. */
function base64Decode(text: string): Uint8Array {
  if (!/^[A-Za-z0-9+/=]*$/.test(text)) throw new ObjectError(["Base64 data contains invalid characters"]);
  const rank = (c: string) => "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".indexOf(c);
  const out: number[] = [];
  for (let i = 0; i + 4 <= text.length; i += 4) {
    const g = text.slice(i, i + 4);
    const pad = g.endsWith("==") ? 2 : g.endsWith("=") ? 1 : 0;
    const v = [...g].reduce((acc, c) => acc * 64 + Math.max(rank(c), 0), 0);
    const bytes = [(v >> 16) & 255, (v >> 8) & 255, v & 255];
    out.push(...bytes.slice(0, 3 - pad));
  }
  return new Uint8Array(out);
}

/**
 * node:crypto, imported only for a command line with a wrapped secret
 * (keyid=): importing it costs every start ~50 ms and ~9 MB (measured
 * 2026-12-07), and add() is synchronous, as qemu creates an object when
 * getopt meets it. Any argument mentioning "keyid" loads it.
 */
let nodeCrypto: typeof NodeCrypto | undefined;
export async function loadSecretCipher(args: readonly string[]): Promise<void> {
  if (!nodeCrypto && args.some((a) => a.includes("keyid"))) nodeCrypto = await import("node:crypto");
}

/**
 * qcrypto_secret_decrypt: AES-256-CBC with the key secret and the IV, then
 * the padding length in the last byte removed as qemu checks it (at most
 * 16 and at most the length; 0 removes nothing). The caller's own key
 * material, not image bytes: decrypted on the host like the passphrase it
 * wraps. An empty ciphertext decrypts to an empty secret (qemu reads the
 * byte before its buffer there; it accepts in practice).
 */
function unwrapSecret(key: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  if (ciphertext.length % 16 !== 0) {
    throw new ObjectError([`Length ${ciphertext.length} must be a multiple of block size 16`]);
  }
  if (ciphertext.length === 0) return new Uint8Array(0);
  if (!nodeCrypto) throw new Error("the secret cipher was not loaded (loadSecretCipher)");
  const d = nodeCrypto.createDecipheriv("aes-256-cbc", key, iv);
  d.setAutoPadding(false);
  const head = d.update(ciphertext);
  const tail = d.final();
  const plain = new Uint8Array(head.length + tail.length);
  plain.set(head, 0);
  plain.set(tail, head.length);
  head.fill(0);
  const pad = plain[plain.length - 1];
  if (pad > 16 || pad > plain.length) {
    plain.fill(0);
    throw new ObjectError([`Incorrect number of padding bytes (${pad}) found on decrypted data`]);
  }
  const out = plain.slice(0, plain.length - pad);
  plain.fill(0);
  return out;
}

/** The secrets the command line defined, by id (qemu's /objects container). */
export class SecretStore {
  #secrets = new Map<string, Uint8Array>();
  #ids = new Set<string>();
  /**
   * The Argon2 memory, KiB, that unlocking one of these secrets may cost
   * (--max-guest-memory less the guest's own 32 MiB); unset: the default.
   */
  kdfMemoryKib?: bigint;

  /** Processes one --object argument as qemu-img does when it meets it. */
  add(arg: string, readFile: SecretFileReader): void {
    let kv: Keyval;
    if (arg.startsWith("{")) {
      kv = jsonObject(arg);
    } else {
      try {
        kv = parseKeyval(arg, "qom-type");
      } catch (e) {
        if (e instanceof OptsError) throw new ObjectError([e.message]);
        throw e;
      }
    }
    const type = kv.entries.get("qom-type");
    if (kv.help) {
      if (type === "secret") throw new ObjectHelp(SECRET_HELP);
      throw new ObjectHelp(
        `List of user creatable objects:\n${USER_CREATABLE.map((t) => `  ${t}\n`).join("")}`,
      );
    }
    if (type === undefined) throw new ObjectError(["Parameter 'qom-type' is missing"]);
    if (!OBJECT_TYPES.includes(type)) {
      throw new ObjectError([`Parameter 'qom-type' does not accept value '${type}'`]);
    }
    const id = kv.entries.get("id");
    if (id === undefined) throw new ObjectError(["Parameter 'id' is missing"]);
    if (!idWellformed(id)) {
      // One error_report with a hint line (no prefix on the second line).
      throw new ObjectError([
        "Parameter 'id' expects an identifier\n" +
        "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
      ]);
    }
    if (type !== "secret") {
      if (NOT_IN_QEMU_IMG.includes(type)) throw new ObjectError([`invalid object type: ${type}`]);
      throw new ObjectError([`Object type '${type}' is not supported by instar (only 'secret' is)`]);
    }
    for (const key of kv.entries.keys()) {
      const top = key.split(".")[0];
      if (!SECRET_KEYS.includes(top) || key.includes(".")) {
        throw new ObjectError([`Parameter '${top}' is unexpected`]);
      }
    }
    const format = kv.entries.get("format") ?? "raw";
    if (format !== "raw" && format !== "base64") {
      throw new ObjectError([`Parameter 'format' does not accept value '${format}'`]);
    }
    const data = kv.entries.get("data");
    const file = kv.entries.get("file");
    // qcrypto_secret_complete -> load_data: the object is created, then completed.
    if (data !== undefined && file !== undefined) {
      throw new ObjectError(["'file' and 'data' are mutually exclusive"]);
    }
    if (data === undefined && file === undefined) {
      throw new ObjectError(["Either 'file' or 'data' must be provided"]);
    }
    let bytes: Uint8Array;
    if (file !== undefined) {
      try {
        bytes = readFile(file);
      } catch (e) {
        throw new ObjectError([`Unable to read ${file}: ${fileErrorText(file, e)}`]);
      }
    } else {
      bytes = new TextEncoder().encode(data);
    }
    const keyid = kv.entries.get("keyid");
    if (keyid !== undefined) {
      // qcrypto_secret_decrypt: the key secret must exist and be 32 bytes, an IV is required.
      const key = this.#secrets.get(keyid);
      if (!key) throw new ObjectError([`No secret with id '${keyid}'`]);
      if (key.length !== 32) throw new ObjectError(["Key should be 32 bytes in length"]);
      const ivText = kv.entries.get("iv");
      if (ivText === undefined) throw new ObjectError(["IV is required to decrypt secret"]);
      const iv = base64Decode(ivText);
      if (iv.length !== 16) throw new ObjectError([`IV should be 16 bytes in length not ${iv.length}`]);
      const wrapped = format === "base64" ? base64Decode(new TextDecoder().decode(bytes)) : bytes;
      bytes.fill(0);
      bytes = unwrapSecret(key, iv, wrapped);
    } else if (format === "base64") {
      bytes = base64Decode(new TextDecoder().decode(bytes));
    }
    if (this.#ids.has(id)) {
      throw new ObjectError([`attempt to add duplicate property '${id}' to object (type 'container')`]);
    }
    this.#ids.add(id);
    this.#secrets.set(id, bytes);
  }

  /** qcrypto_secret_lookup_as_utf8: the passphrase bytes (up to a NUL), or qemu's refusal. */
  passphrase(id: string): Uint8Array {
    const b = this.#secrets.get(id);
    if (!b) throw new ObjectError([`No secret with id '${id}'`]);
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(b);
    } catch {
      throw new ObjectError([`Data from secret ${id} is not valid UTF-8`]);
    }
    const nul = b.indexOf(0);
    return nul < 0 ? b : b.subarray(0, nul);
  }

  has(id: string): boolean {
    return this.#secrets.has(id);
  }

  /** Zeroes every secret's bytes (the end of a command). */
  wipe(): void {
    for (const b of this.#secrets.values()) b.fill(0);
    this.#secrets.clear();
    this.#ids.clear();
  }
}

/** The JSON form of --object ({"qom-type": ...}): string members only. */
function jsonObject(arg: string): Keyval {
  let v: unknown;
  try {
    v = JSON.parse(arg);
  } catch {
    throw new ObjectError(["JSON parse error in --object"]);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) {
    throw new ObjectError(["JSON --object must be an object"]);
  }
  const entries = new Map<string, string>();
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (typeof x !== "string") throw new ObjectError([`Invalid parameter type for '${k}', expected: string`]);
    entries.set(k, x);
  }
  return { entries, help: false };
}
