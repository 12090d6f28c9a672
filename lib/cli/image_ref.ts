// An image operand as a command names it: a plain file name (with -f), or
// with --image-opts / --target-image-opts a QemuOpts string of block options
// (lib/config/qemu_opts.ts). instar opens only a local file: driver=,
// file.filename=, file.driver=file, read-only=, and the encryption options
// (luks: key-secret=; qcow2: encrypt.key-secret=, encrypt.format=). Every
// other option is refused in qemu's words ("Block format 'raw' does not
// support the option 'foo'") or, for what qemu-img could open and instar
// does not (protocols, node references), with instar's own.
import { parseQemuOpts } from "../config/qemu_opts.ts";
import { CliError } from "./messages.ts";
import { errnoText } from "./image.ts";
import { hostPath } from "../host/context.ts";
import { driverFor, isQemuDriver } from "../formats/mod.ts";
import { QDict, quoteJson, type QValue } from "../output/qdict.ts";

/** Options bdrv_refresh_filename cannot leave out of a node's name (its json: form then). */
const NAMED_OPTIONS = ["key-secret", "encrypt.key-secret"];

/** qobject_to_json (compact) of a QDict of strings and dicts, in qemu's order. */
function compactJson(v: QValue): string {
  if (v instanceof QDict) {
    return `{${v.entries().map(([k, x]) => `${quoteJson(k)}: ${compactJson(x)}`).join(", ")}}`;
  }
  return quoteJson(v as string);
}

/** bs->filename of a node opened with these options: the file name, or json:{...}. */
function nodeName(m: Map<string, string>, filename: string): string {
  const extra = NAMED_OPTIONS.filter((k) => m.has(k));
  if (extra.length === 0) return filename;
  const d = new QDict();
  for (const k of extra) d.put(k, m.get(k)!);
  d.put("driver", m.get("driver") ?? "raw");
  d.put("file", new QDict().put("driver", "file").put("filename", filename));
  return `json:${compactJson(d)}`;
}

export interface ImageRef {
  /** What qemu names in "Could not open '...'" (the operand as given). */
  display: string;
  /** The file to open. */
  filename: string;
  /** bs->filename: what info prints as "image:" (a json: name when an option cannot be left out). */
  nodeName: string;
  /** The format asked for (-f or driver=); undefined probes. */
  format?: string;
  /** luks: the id of the secret holding the passphrase. */
  keySecret?: string;
  /** Which option named it ("key-secret" / "encrypt.key-secret"), for qemu's messages. */
  keySecretOption?: string;
  /** qcow2: encrypt.format= */
  encryptFormat?: string;
}

/** Options each format's open accepts besides driver/file.* (qemu's runtime_opts that instar honours). */
const FORMAT_OPTIONS: Record<string, string[]> = {
  luks: ["key-secret"],
  qcow2: ["encrypt.key-secret", "encrypt.format"],
};
const GENERIC = ["driver", "read-only", "file.filename", "file.driver"];

/** The image a command opens, from its operand. `code`: the command's exit status for errors. */
export function imageRef(
  operand: string,
  fmt: string | undefined,
  imageOpts: boolean,
  /** Where qemu's parse warnings go (stderr), printed before any error. */
  warn: (text: string) => void,
  code = 1,
): ImageRef {
  if (!imageOpts) return { display: operand, filename: operand, nodeName: operand, format: fmt };
  if (fmt !== undefined) {
    throw new CliError(["--image-opts and --format are mutually exclusive"], false, code);
  }
  const fail = (inner: string) => new CliError([`Could not open '${operand}': ${inner}`], false, code);
  const { opts, warnings } = parseQemuOpts(operand, "file");
  warnings.forEach((w, i) => warn(i % 2 === 0 ? `instar: ${w}\n` : `${w}\n`));
  const m = new Map<string, string>();
  for (const o of opts) m.set(o.name, o.value);
  const driver = m.get("driver");
  const file = m.get("file");
  if (file !== undefined) {
    // A string "file" names an existing node: qemu-img has none to find.
    throw fail(`Cannot find device='${file}' nor node-name='${file}'`);
  }
  const filename = m.get("file.filename");
  if (driver === undefined && filename === undefined) throw fail("Must specify either driver or file");
  if (driver !== undefined && !driverFor(driver)?.code) {
    if (isQemuDriver(driver)) throw fail(`Driver '${driver}' is not supported by instar --image-opts`);
    throw fail(`Unknown driver '${driver}'`);
  }
  if (filename === undefined) throw fail('A block device must be specified for "file"');
  const fileDriver = m.get("file.driver");
  if (fileDriver !== undefined && fileDriver !== "file") {
    if (!isQemuDriver(fileDriver)) throw fail(`Unknown driver '${fileDriver}'`);
    throw fail(`Protocol '${fileDriver}' is not supported by instar (only file.driver=file)`);
  }
  const allowed = [...GENERIC, ...(driver ? FORMAT_OPTIONS[driver] ?? [] : [])];
  for (const k of m.keys()) {
    if (allowed.includes(k)) continue;
    // qemu opens the file before the format looks at its options.
    try {
      Deno.statSync(hostPath(filename));
    } catch (e) {
      throw fail(`Could not open '${filename}': ${errnoText(e)}`);
    }
    if (k.startsWith("file.")) throw fail(`Block protocol 'file' doesn't support the option '${k.slice(5)}'`);
    throw fail(`Block format '${driver ?? "raw"}' does not support the option '${k}'`);
  }
  const ro = m.get("read-only");
  if (ro !== undefined && ro !== "on" && ro !== "off") {
    throw fail(`Parameter 'read-only' expects 'on' or 'off'`);
  }
  const keySecret = m.get("key-secret") ?? m.get("encrypt.key-secret");
  return {
    display: operand,
    filename,
    nodeName: nodeName(m, filename),
    format: driver,
    keySecret,
    keySecretOption: m.has("key-secret")
      ? "key-secret"
      : m.has("encrypt.key-secret")
      ? "encrypt.key-secret"
      : undefined,
    encryptFormat: m.get("encrypt.format"),
  };
}
