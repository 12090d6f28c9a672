// `-o k=v,...` option lists as qemu parses them (util/qemu-option.c,
// QemuOpts): "name=value" items split at single commas, ",," standing for a
// literal comma inside a value, a bare "name" meaning name=on and "noname"
// name=off, later items overriding earlier ones, and each value checked
// against its declared type as soon as it is read. Also qemu-img's checks on
// one -o argument and the "Formatting ..." rendering (qemu_opts_print).
import { SizeError, strtosz } from "./size.ts";
import { fail, ok, type PlanResult } from "./plan.ts";

export type OptType = "string" | "bool" | "number" | "size";

/** One option a format (or the protocol below it) accepts, in qemu's list order. */
export interface OptDesc {
  name: string;
  type: OptType;
  help: string;
  /** Printed when the option is not set (qemu's def_value_str). */
  def?: string;
}

/** One parsed item: the text as given and, for bool/number/size, its value. */
export interface OptValue {
  name: string;
  str: string;
  bool?: boolean;
  num?: bigint;
}

export interface ParsedOpts {
  descs: OptDesc[];
  /** Items in the order given (qemu keeps them all; lookups take the last). */
  items: OptValue[];
}

/** qemu-img's is_valid_option_list: non-empty, no leading comma, no odd run of trailing commas. */
export function isValidOptionList(arg: string): boolean {
  if (arg === "" || arg[0] === ",") return false;
  let i = arg.length;
  while (i > 0 && arg[i - 1] === ",") i--;
  return (arg.length - i) % 2 === 0;
}

/** Appends one -o argument the way qemu-img's accumulate_options does; undefined if invalid. */
export function accumulateOptions(prev: string | undefined, arg: string): string | undefined {
  if (!isValidOptionList(arg)) return undefined;
  return prev === undefined ? arg : `${prev},${arg}`;
}

/** Reads a value up to a single comma; ",," is a literal comma. Returns [value, index of the end]. */
function optValue(s: string, p: number): [string, number] {
  let value = "";
  for (;;) {
    let end = s.indexOf(",", p);
    if (end < 0) end = s.length;
    value += s.slice(p, end);
    if (end < s.length && s[end + 1] === ",") {
      value += ",";
      p = end + 2;
      continue;
    }
    return [value, end];
  }
}

/** Splits an option list into [name, value, isHelp] items (get_opt_name_value with no implied name). */
export function splitOptions(params: string): { name: string; value: string; help: boolean }[] {
  const out: { name: string; value: string; help: boolean }[] = [];
  let p = 0;
  while (p < params.length) {
    let len = 0;
    while (p + len < params.length && params[p + len] !== "=" && params[p + len] !== ",") len++;
    let name: string;
    let value: string;
    let help = false;
    if (params[p + len] !== "=") {
      name = params.slice(p, p + len);
      p += len;
      if (name.startsWith("no")) {
        name = name.slice(2);
        value = "off";
      } else {
        value = "on";
        help = name === "help" || name === "?";
      }
    } else {
      name = params.slice(p, p + len);
      [value, p] = optValue(params, p + len + 1);
    }
    if (params[p] === ",") p++;
    out.push({ name, value, help });
  }
  return out;
}

/** qemu-img's has_help_option. */
export function hasHelpOption(params: string): boolean {
  return splitOptions(params).some((i) => i.help);
}

/** qemu_strtou64 with base 0 over the whole string: strtoull rules (sign, 0x, octal), negatives wrap. */
export function strtou64(text: string): { ok: true; value: bigint } | { ok: false; range: boolean } {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)/.exec(text);
  if (!m) {
    // strtoull reads "0x" with no hex digit as 0 followed by "x".
    return { ok: false, range: false };
  }
  if (m[0].length !== text.length) return { ok: false, range: false };
  const digits = m[2];
  let v: bigint;
  if (/^0[xX]/.test(digits)) v = BigInt(digits);
  else if (digits.length > 1 && digits[0] === "0") v = BigInt("0o" + digits.slice(1));
  else v = BigInt(digits);
  if (v > (1n << 64n) - 1n) return { ok: false, range: true };
  if (m[1] === "-") v = BigInt.asUintN(64, -v);
  return { ok: true, value: v };
}

const BOOL_ON = ["on", "yes", "true", "y"];
const BOOL_OFF = ["off", "no", "false", "n"];

/**
 * qemu_opts_do_parse over `descs`: fails with qemu's message at the first
 * unknown name or badly typed value. "id" items are skipped, as qemu does.
 */
export function parseOptions(params: string, descs: OptDesc[]): PlanResult<ParsedOpts> {
  const items: OptValue[] = [];
  for (const { name, value } of splitOptions(params)) {
    if (name === "id") continue;
    const d = descs.find((x) => x.name === name);
    if (!d) return fail("invalid_option", `Invalid parameter '${name}'`);
    const item: OptValue = { name, str: value };
    switch (d.type) {
      case "bool":
        if (BOOL_ON.includes(value)) item.bool = true;
        else if (BOOL_OFF.includes(value)) item.bool = false;
        else return fail("invalid_option", `Parameter '${name}' expects 'on' or 'off'`);
        break;
      case "number": {
        const r = strtou64(value);
        if (!r.ok) {
          return fail(
            "invalid_option",
            r.range
              ? `Value '${value}' is too large for parameter '${name}'`
              : `Parameter '${name}' expects a number`,
          );
        }
        item.num = r.value;
        break;
      }
      case "size":
        try {
          item.num = strtosz(value);
        } catch (e) {
          if (e instanceof SizeError && e.range) {
            return fail("invalid_option", `Value '${value}' is out of range for parameter '${name}'`);
          }
          return fail(
            "invalid_option",
            `Parameter '${name}' expects a non-negative number below 2^64\n` +
              "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
              "and exabytes, respectively.",
          );
        }
        break;
    }
    items.push(item);
  }
  return ok({ descs, items });
}

/** The last value given for `name` (qemu_opt_find). */
export function optGet(o: ParsedOpts, name: string): OptValue | undefined {
  for (let i = o.items.length - 1; i >= 0; i--) if (o.items[i].name === name) return o.items[i];
  return undefined;
}

/** Sets `name` as qemu_opt_set_number does (the text is the decimal value). */
export function optSetNumber(o: ParsedOpts, name: string, value: bigint): void {
  o.items.push({ name, str: `${value}`, num: value });
}

/** Sets a string option (qemu_opt_set). */
export function optSet(o: ParsedOpts, name: string, value: string): void {
  o.items.push({ name, str: value });
}

/**
 * qemu_opts_print(opts, " "): every option of the list in list order that
 * is set or has a default; strings with "," doubled, set sizes and numbers
 * as signed decimals, everything else as its text.
 */
export function printOptions(o: ParsedOpts): string {
  const parts: string[] = [];
  for (const d of o.descs) {
    const v = optGet(o, d.name);
    const text = v ? v.str : d.def;
    if (text === undefined) continue;
    if (d.type === "string") parts.push(`${d.name}=${text.replaceAll(",", ",,")}`);
    else if ((d.type === "size" || d.type === "number") && v) {
      parts.push(`${d.name}=${BigInt.asIntN(64, v.num!)}`);
    } else parts.push(`${d.name}=${text}`);
  }
  return parts.join(" ");
}

/** Appends `more` to `descs`, skipping names already present (qemu_opts_append). */
export function appendDescs(descs: OptDesc[], more: OptDesc[]): OptDesc[] {
  const out = [...descs];
  for (const d of more) if (!out.some((x) => x.name === d.name)) out.push(d);
  return out;
}

/** The protocol (file) layer's create options, appended after every format's. */
export const FILE_CREATE_OPTS: OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size" },
  { name: "nocow", type: "bool", help: "Turn off copy-on-write (valid only on btrfs)" },
  {
    name: "preallocation",
    type: "string",
    help: "Preallocation mode (allowed values: off, falloc, full)",
  },
  { name: "extent_size_hint", type: "size", help: "Extent size hint for the image file, 0 to disable" },
];

const TYPE_NAMES: Record<OptType, string> = {
  string: "str",
  bool: "bool (on/off)",
  number: "num",
  size: "size",
};

/** qemu_opts_print_help(list, false): one line per option, sorted bytewise. */
export function optionHelp(descs: OptDesc[]): string {
  const lines = descs.map((d) => {
    const head = `  ${d.name}=<${TYPE_NAMES[d.type]}>`;
    return `${head.padEnd(24)} - ${d.help}`;
  });
  lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return lines.map((l) => `${l}\n`).join("");
}

/** The file layer's `preallocation` as qemu checks it when a format creates its file (off, falloc, full). */
export function fileLayerPreallocation(o: ParsedOpts): PlanResult<string> {
  const v = optGet(o, "preallocation")?.str ?? "off";
  // file-posix's raw_co_create: an unknown mode is a parse error, metadata
  // a mode it does not do (kubevirt matches these words).
  if (v === "metadata") return fail("invalid_option", "Unsupported preallocation mode: metadata");
  if (!["off", "falloc", "full"].includes(v)) return fail("invalid_option", `invalid parameter value: ${v}`);
  return ok(v);
}
