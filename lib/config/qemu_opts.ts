// QEMU's two option-string syntaxes, as qemu-img 7.2 parses them:
//  - keyval (util/keyval.c), used by --object: "qom-type,key=value,...",
//    the first bare word is the implied key, `,,` is a literal comma in a
//    value, dotted keys nest, a repeated key keeps its last value;
//  - QemuOpts (util/qemu-option.c), used by --image-opts and
//    --target-image-opts: "key=value,...", `,,` in a value, the first bare
//    word is the implied option ("file"), any other bare word is a
//    deprecated short-form boolean (qemu warns).
// Pure functions: errors are thrown as OptsError with qemu's words.

export class OptsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OptsError";
  }
}

/** One parsed keyval string: dotted keys flattened ("a.b"), values in order of last assignment. */
export interface Keyval {
  entries: Map<string, string>;
  /** The string asked for help ("help" or "?" as a bare word). */
  help: boolean;
}

/** Reads a value up to an unescaped ',' (`,,` is a comma); returns [value, index after it]. */
function readValue(s: string, i: number): [string, number] {
  let v = "";
  while (i < s.length) {
    if (s[i] === ",") {
      if (s[i + 1] !== ",") break;
      i++;
    }
    v += s[i++];
  }
  return [v, i];
}

const KEY_FRAGMENT = /^[A-Za-z0-9_-]+$/;

/** keyval_parse(params, implied_key): qemu's --object syntax. */
export function parseKeyval(s: string, impliedKey?: string): Keyval {
  const entries = new Map<string, string>();
  let help = false;
  let i = 0;
  let first = true;
  while (i < s.length) {
    // The key runs to '=' or ','; a fragment is [A-Za-z0-9_-]+, fragments join with '.'.
    let j = i;
    while (j < s.length && s[j] !== "=" && s[j] !== ",") j++;
    const key = s.slice(i, j);
    if (s[j] !== "=") {
      if (first && impliedKey !== undefined && key !== "") {
        // The implied key's value runs to the first ',' (qemu does not unescape `,,` here).
        if (key === "help" || key === "?") help = true;
        else entries.set(impliedKey, key);
        i = j;
      } else if (key === "help" || key === "?") {
        help = true;
        i = j;
      } else {
        if (!validKey(key)) throw new OptsError(`Invalid parameter '${key}'`);
        throw new OptsError(`Expected '=' after parameter '${key}'`);
      }
    } else {
      if (!validKey(key)) throw new OptsError(`Invalid parameter '${key}'`);
      const [v, k] = readValue(s, j + 1);
      entries.delete(key);
      entries.set(key, v);
      i = k;
    }
    first = false;
    if (i < s.length) i++; // the ',' separator (a trailing one is allowed)
  }
  return { entries, help };
}

function validKey(key: string): boolean {
  return key !== "" && key.split(".").every((f) => KEY_FRAGMENT.test(f));
}

/** One QemuOpts option as parsed (in order, repeats kept). */
export interface QemuOpt {
  name: string;
  value: string;
}

/** What parsing a QemuOpts string yields: the options and qemu's warnings (stderr lines). */
export interface QemuOptsParse {
  opts: QemuOpt[];
  warnings: string[];
}

/** opts_do_parse with permit_abbrev and `implied` as the first option's name (qemu_opts_parse_noisily). */
export function parseQemuOpts(s: string, implied?: string): QemuOptsParse {
  const opts: QemuOpt[] = [];
  const warnings: string[] = [];
  let i = 0;
  let first = true;
  while (i < s.length) {
    let j = i;
    while (j < s.length && s[j] !== "=" && s[j] !== ",") j++;
    if (s[j] !== "=") {
      if (first && implied !== undefined) {
        const [v, k] = readValue(s, i);
        opts.push({ name: implied, value: v });
        i = k;
      } else {
        // A bare word: a deprecated short-form boolean ("foo" = on, "nofoo" = off).
        const word = s.slice(i, j);
        if (word.startsWith("no") && word.length > 2) {
          warnings.push(`warning: short-form boolean option '${word}' deprecated`);
          warnings.push(`Please use ${word.slice(2)}=off instead`);
          opts.push({ name: word.slice(2), value: "off" });
        } else {
          warnings.push(`warning: short-form boolean option '${word}' deprecated`);
          warnings.push(`Please use ${word}=on instead`);
          opts.push({ name: word, value: "on" });
        }
        i = j;
      }
    } else {
      const name = s.slice(i, j);
      const [v, k] = readValue(s, j + 1);
      opts.push({ name, value: v });
      i = k;
    }
    first = false;
    if (i < s.length) i++;
  }
  return { opts, warnings };
}

/** qemu_opts_to_qdict: the last value of each option name, in first-seen order. */
export function optsToMap(opts: QemuOpt[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const o of opts) m.set(o.name, o.value);
  return m;
}
