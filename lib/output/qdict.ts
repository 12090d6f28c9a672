// qemu's QDict and its JSON printer, reproduced so that key order and bytes
// match qemu-img. A QDict is a 512-bucket hash table: iteration walks the
// buckets in ascending order and, inside a bucket, the most recently inserted
// key comes first. The order is therefore a function of the keys and of the
// insertion order, which is why callers insert keys in QAPI schema order.

export type QValue = string | bigint | boolean | QDict | QValue[];

const BUCKETS = 512;

/** qemu's tdb_hash (qobject/qdict.c), in uint32 arithmetic. */
export function tdbHash(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let v = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    v = (v + ((bytes[i] << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, v) + 12345) >>> 0;
}

export class QDict {
  #buckets = new Map<number, [string, QValue][]>();

  /** Inserts or replaces `key` (a replaced key keeps its position, as in qemu). */
  put(key: string, value: QValue): this {
    const b = tdbHash(key) % BUCKETS;
    let list = this.#buckets.get(b);
    if (!list) {
      list = [];
      this.#buckets.set(b, list);
    }
    const found = list.find((e) => e[0] === key);
    if (found) found[1] = value;
    else list.unshift([key, value]);
    return this;
  }

  get(key: string): QValue | undefined {
    return this.#buckets.get(tdbHash(key) % BUCKETS)?.find((e) => e[0] === key)?.[1];
  }

  /** Entries in qemu's iteration order. */
  entries(): [string, QValue][] {
    const keys = [...this.#buckets.keys()].sort((a, b) => a - b);
    return keys.flatMap((k) => this.#buckets.get(k)!);
  }
}

/**
 * Decodes one character the way qemu's mod_utf8_codepoint does: invalid,
 * overlong, surrogate and non-character sequences give -1.
 */
function modUtf8Codepoint(s: Uint8Array, at: number): [number, number] {
  const minCp = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
  let p = at;
  let byte = s[p++];
  if (byte < 0x80) return [byte, p];
  if (byte >= 0xfe || (byte & 0x40) === 0) return [-1, p];
  let len = 0;
  let mask = 0x80;
  for (; byte & mask; mask >>= 1) len++;
  let cp = byte & (mask - 1);
  for (let i = 1; i < len; i++) {
    byte = p < s.length ? s[p] : 0;
    if ((byte & 0xc0) !== 0x80) return [-1, p];
    p++;
    cp = cp * 64 + (byte & 0x3f);
  }
  const valid = cp <= 0x10ffff && !(cp >= 0xfdd0 && cp <= 0xfdef) && (cp & 0xfffe) !== 0xfffe &&
    !(cp >= 0xd800 && cp <= 0xdfff);
  if (!valid) return [-1, p];
  if (cp < minCp[len - 2] && !(cp === 0 && len === 2)) return [-1, p];
  return [cp, p];
}

const hex4 = (n: number) => n.toString(16).toUpperCase().padStart(4, "0");

/** qemu's quoted_str (qobject/json-writer.c). Strings are taken as UTF-8 bytes. */
export function quoteJson(str: string | Uint8Array): string {
  const s = typeof str === "string" ? new TextEncoder().encode(str) : str;
  let out = '"';
  let at = 0;
  while (at < s.length && s[at] !== 0) {
    let [cp, next] = modUtf8Codepoint(s, at);
    at = next;
    switch (cp) {
      case 0x22:
        out += '\\"';
        continue;
      case 0x5c:
        out += "\\\\";
        continue;
      case 0x08:
        out += "\\b";
        continue;
      case 0x0c:
        out += "\\f";
        continue;
      case 0x0a:
        out += "\\n";
        continue;
      case 0x0d:
        out += "\\r";
        continue;
      case 0x09:
        out += "\\t";
        continue;
    }
    if (cp < 0) cp = 0xfffd;
    if (cp > 0xffff) {
      out += `\\u${hex4(0xd800 + ((cp - 0x10000) >> 10))}\\u${hex4(0xdc00 + ((cp - 0x10000) & 0x3ff))}`;
    } else if (cp < 0x20 || cp >= 0x7f) {
      out += `\\u${hex4(cp)}`;
    } else {
      out += String.fromCharCode(cp);
    }
  }
  return out + '"';
}

/** qobject_to_json_pretty(obj, true): 4-space indent, no trailing newline. */
export function toJsonPretty(value: QValue): string {
  let out = "";
  const write = (v: QValue, depth: number) => {
    if (typeof v === "string") out += quoteJson(v);
    else if (typeof v === "bigint") out += v.toString();
    else if (typeof v === "boolean") out += v ? "true" : "false";
    else if (v instanceof QDict) {
      out += "{";
      const entries = v.entries();
      entries.forEach(([k, x], i) => {
        out += (i ? "," : "") + "\n" + " ".repeat((depth + 1) * 4) + quoteJson(k) + ": ";
        write(x, depth + 1);
      });
      out += "\n" + " ".repeat(depth * 4) + "}";
    } else {
      out += "[";
      v.forEach((x, i) => {
        out += (i ? "," : "") + "\n" + " ".repeat((depth + 1) * 4);
        write(x, depth + 1);
      });
      out += "\n" + " ".repeat(depth * 4) + "]";
    }
  };
  write(value, 0);
  return out;
}

/**
 * block/qapi.c dump_qobject/dump_qdict/dump_qlist: the human "Format specific
 * information" block. Dashes in keys become spaces.
 */
export function dumpHuman(value: QValue, indent: number): string {
  let out = "";
  const composite = (v: QValue) => v instanceof QDict || Array.isArray(v);
  const scalar = (v: QValue) =>
    typeof v === "boolean" ? (v ? "true" : "false") : typeof v === "bigint" ? v.toString() : v as string;
  const obj = (v: QValue, ind: number) => {
    if (v instanceof QDict) {
      for (const [k, x] of v.entries()) {
        out += `${" ".repeat(ind * 4)}${k.replaceAll("-", " ")}:${composite(x) ? "\n" : " "}`;
        if (composite(x)) obj(x, ind + 1);
        else out += scalar(x) + "\n";
      }
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => {
        out += `${" ".repeat(ind * 4)}[${i}]:${composite(x) ? "\n" : " "}`;
        if (composite(x)) obj(x, ind + 1);
        else out += scalar(x) + "\n";
      });
    } else {
      out += scalar(v);
    }
  };
  obj(value, indent);
  return out;
}
