// `-o` for convert's target, parsed the way qemu's QemuOpts does it for the
// raw and qcow2 create option lists: "k=v,k=v" with ",," for a literal
// comma, a bare "k" meaning on (and "nok" off), the last value of a key
// winning, and the same error texts. Type errors are reported before any
// value is checked for meaning (qemu_opts_do_parse runs before
// bdrv_create), which is why the meaning checks come back as `late`
// messages the caller prefixes with "<file>: error while converting <fmt>: ".
import { CliError } from "../cli/messages.ts";
import type { Qcow2OutputOptions } from "../formats/qcow2/output_plan.ts";

type Kind = "size" | "bool" | "number" | "string";

const QCOW2_OPTS: Record<string, Kind> = {
  backing_file: "string", backing_fmt: "string", cluster_size: "size", compat: "string",
  compression_type: "string", data_file: "string", data_file_raw: "bool", "encrypt.cipher-alg": "string",
  "encrypt.cipher-mode": "string", "encrypt.format": "string", "encrypt.hash-alg": "string",
  "encrypt.iter-time": "number", "encrypt.ivgen-alg": "string", "encrypt.ivgen-hash-alg": "string",
  "encrypt.key-secret": "string", encryption: "bool", extended_l2: "bool", extent_size_hint: "size",
  lazy_refcounts: "bool", nocow: "bool", preallocation: "string", refcount_bits: "number", size: "size",
};
const RAW_OPTS: Record<string, Kind> = {
  extent_size_hint: "size", nocow: "bool", preallocation: "string", size: "size",
};

const SIZE_SUFFIX = "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
  "and exabytes, respectively.";

export interface OutputSpec {
  preallocation: "off" | "metadata" | "falloc" | "full";
  qcow2?: Qcow2OutputOptions;
}

/** Splits "k=v,k2=v2" with qemu's ",," escape; throws qemu's message for an empty name. */
function split(text: string): [string, string | undefined][] {
  const out: [string, string | undefined][] = [];
  let i = 0;
  const readPart = (stopAtEq: boolean): string => {
    let s = "";
    while (i < text.length) {
      const c = text[i];
      if (c === "," && text[i + 1] === ",") {
        s += ",";
        i += 2;
        continue;
      }
      if (c === "," || (stopAtEq && c === "=")) break;
      s += c;
      i++;
    }
    return s;
  };
  while (i < text.length) {
    const key = readPart(true);
    let value: string | undefined;
    if (text[i] === "=") {
      i++;
      value = readPart(false);
    }
    if (key === "") throw new CliError([`Invalid option list: ${text}`]);
    out.push([key, value]);
    if (text[i] === ",") i++;
  }
  return out;
}

/** qemu_strtosz-style size ("64k", "1.5M"); undefined when it does not parse. */
function parseSize(v: string): bigint | undefined {
  const m = /^(\d+)(?:\.(\d+))?([kKmMgGtTpPeE]|[bB])?$/.exec(v);
  if (!m) return undefined;
  const shift: Record<string, bigint> = { b: 0n, k: 10n, m: 20n, g: 30n, t: 40n, p: 50n, e: 60n };
  const unit = 1n << shift[(m[3] ?? "b").toLowerCase()];
  let n = BigInt(m[1]) * unit;
  if (m[2]) {
    if (!m[3]) return undefined;
    n += BigInt(m[2]) * unit / 10n ** BigInt(m[2].length);
  }
  return n < 1n << 64n ? n : undefined;
}

function parseBool(name: string, v: string | undefined): boolean {
  if (v === undefined || ["on", "yes", "true", "y"].includes(v)) return true;
  if (["off", "no", "false", "n"].includes(v)) return false;
  throw new CliError([`Parameter '${name}' expects 'on' or 'off'`]);
}

function parseNumber(name: string, v: string | undefined): bigint {
  const t = v ?? "";
  const m = /^\s*(-?)(0x[0-9a-f]+|0[0-7]*|[1-9]\d*)$/i.exec(t);
  if (!m) throw new CliError([`Parameter '${name}' expects a number`]);
  let n = BigInt(m[2].startsWith("0") && !/^0x/i.test(m[2]) && m[2].length > 1 ? `0o${m[2].slice(1)}` : m[2]);
  if (n >= 1n << 64n) throw new CliError([`Parameter '${name}' expects a number`]);
  if (m[1]) n = ((1n << 64n) - n) % (1n << 64n); // qemu_strtou64 wraps "-1"
  return n;
}

/** Parses `-o` for a raw or qcow2 target. Throws CliError with qemu's text. */
export function outputOptions(fmt: "raw" | "qcow2", text: string, outFile: string): OutputSpec {
  const table = fmt === "qcow2" ? QCOW2_OPTS : RAW_OPTS;
  const values = new Map<string, string | boolean | bigint>();
  for (const [rawKey, value] of split(text)) {
    let key = rawKey;
    let v: string | undefined = value;
    // "nokey" is QemuOpts' old spelling of key=off for booleans.
    if (!(key in table) && value === undefined && key.startsWith("no") && table[key.slice(2)] === "bool") {
      key = key.slice(2);
      v = "off";
    }
    const kind = table[key];
    if (kind === undefined) throw new CliError([`Invalid parameter '${rawKey}'`]);
    if (kind === "size") {
      const n = v === undefined ? undefined : parseSize(v);
      if (n === undefined) throw new CliError([`Parameter '${key}' expects a non-negative number below 2^64\n${SIZE_SUFFIX}`]);
      values.set(key, n);
    } else if (kind === "bool") {
      values.set(key, parseBool(key, v));
    } else if (kind === "number") {
      values.set(key, parseNumber(key, v));
    } else {
      values.set(key, v ?? "on");
    }
  }
  const late = (msg: string) => new CliError([`${outFile}: error while converting ${fmt}: ${msg}`]);
  const prealloc = (values.get("preallocation") as string | undefined) ?? "off";
  const modes = fmt === "qcow2" ? ["off", "metadata", "falloc", "full"] : ["off", "falloc", "full"];
  if (!modes.includes(prealloc)) {
    throw late(fmt === "qcow2" ? `Parameter 'preallocation' does not accept value '${prealloc}'` : `invalid parameter value: ${prealloc}`);
  }
  const spec: OutputSpec = { preallocation: prealloc as OutputSpec["preallocation"] };
  if (fmt === "raw") return spec;

  for (const k of ["backing_file", "backing_fmt", "data_file", "data_file_raw", "encryption"]) {
    if (values.has(k)) throw new CliError([`The qcow2 option ${k} is not supported by instar convert`]);
  }
  if ([...values.keys()].some((k) => k.startsWith("encrypt."))) {
    throw new CliError(["Encrypted qcow2 output is not supported by instar convert"]);
  }
  const compat = (values.get("compat") as string | undefined) ?? "1.1";
  const version = compat === "0.10" || compat === "v2" ? "0.10" : compat === "1.1" || compat === "v3" ? "1.1" : undefined;
  if (!version) throw late(`Parameter 'version' does not accept value '${compat}'`);
  const ctype = (values.get("compression_type") as string | undefined) ?? "zlib";
  if (ctype !== "zlib" && ctype !== "zstd") throw late(`Parameter 'compression-type' does not accept value '${ctype}'`);
  const rb = (values.get("refcount_bits") as bigint | undefined) ?? 16n;
  spec.qcow2 = {
    clusterSize: (values.get("cluster_size") as bigint | undefined) ?? 65536n,
    // Out-of-range widths reach the planner as an invalid width so it gives qemu's message.
    refcountBits: rb > 64n ? 3 : Number(rb),
    compat: version,
    extendedL2: (values.get("extended_l2") as boolean | undefined) ?? false,
    lazyRefcounts: (values.get("lazy_refcounts") as boolean | undefined) ?? false,
    compressionType: ctype,
  };
  return spec;
}
