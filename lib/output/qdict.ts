// qemu's QDict and its JSON printer, reproduced so that key order and bytes
// match qemu-img. A QDict is a 512-bucket hash table: iteration walks the
// buckets in ascending order and, inside a bucket, the most recently inserted
// key comes first. The order is therefore a function of the keys and of the
// insertion order, which is why callers insert keys in QAPI schema order.

/** Uint8Array: a C string qemu holds as bytes (printed as quoted_str prints them). */
export type QValue = string | Uint8Array | bigint | boolean | QDict | QValue[] | QLazyList;

/** A QList whose items are built one at a time while printing (65,536 snapshots).
 * `json`, when given, prints item i at `depth` exactly as toJsonPretty would print item(i). */
export class QLazyList {
  constructor(
    readonly length: number,
    readonly item: (i: number) => QValue,
    readonly json?: (i: number, depth: number) => string,
  ) {}
}

function listItems(v: QValue[] | QLazyList): Iterable<QValue> {
  if (Array.isArray(v)) return v;
  return (function* () {
    for (let i = 0; i < v.length; i++) yield v.item(i);
  })();
}

const BUCKETS = 512;

const hashes = new Map<string, number>();

/** qemu's tdb_hash (qobject/qdict.c), in uint32 arithmetic. */
export function tdbHash(key: string): number {
  let h = hashes.get(key);
  if (h === undefined) hashes.set(key, h = tdbHashOf(key));
  return h;
}

function tdbHashOf(key: string): number {
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

/**
 * Collects output pieces; with a sink, hands them on in flat chunks of about
 * 64 KiB (65,536 snapshots must not become one huge rope or string). Small
 * on purpose: with 1 MiB chunks the pieces outlived V8's young generation,
 * and `info` of 65,536 snapshots peaked at 105 MB RSS against 78 MB now
 * (measured 2026-12-07; issue 14's goal is twice qemu-img's 54 MB).
 */
export class ChunkWriter {
  #parts: string[] = [];
  #size = 0;
  constructor(readonly sink?: (chunk: string) => void) {}

  push(...pieces: string[]): void {
    for (const p of pieces) {
      this.#parts.push(p);
      this.#size += p.length;
    }
    if (this.sink && this.#size >= 1 << 16) this.flush();
  }

  /** Hands everything collected to the sink (no-op without one). */
  flush(): void {
    if (!this.sink || !this.#parts.length) return;
    this.sink(this.#parts.join(""));
    this.#parts = [];
    this.#size = 0;
  }

  /** Everything collected, as one string (without a sink). */
  text(): string {
    return this.#parts.join("");
  }
}

/** qobject_to_json_pretty(obj, true): 4-space indent, no trailing newline. */
export function toJsonPretty(value: QValue): string {
  const w = new ChunkWriter();
  writeJsonPretty(value, w);
  return w.text();
}

/** toJsonPretty into a writer. */
export function writeJsonPretty(value: QValue, w: ChunkWriter): void {
  const write = (v: QValue, depth: number): void => {
    if (typeof v === "string" || v instanceof Uint8Array) return w.push(quoteJson(v));
    if (typeof v === "bigint") return w.push(v.toString());
    if (typeof v === "boolean") return w.push(v ? "true" : "false");
    const inner = "\n" + " ".repeat((depth + 1) * 4);
    if (v instanceof QDict) {
      w.push("{");
      let i = 0;
      for (const [k, x] of v.entries()) {
        w.push(i++ ? "," : "", inner, quoteJson(k), ": ");
        write(x, depth + 1);
      }
      w.push("\n", " ".repeat(depth * 4), "}");
    } else {
      w.push("[");
      let i = 0;
      if (v instanceof QLazyList && v.json) {
        for (; i < v.length; i++) w.push(i ? "," : "", inner, v.json(i, depth + 1));
      } else {
        for (const x of listItems(v)) {
          w.push(i++ ? "," : "", inner);
          write(x, depth + 1);
        }
      }
      w.push("\n", " ".repeat(depth * 4), "]");
    }
  };
  write(value, 0);
}

/**
 * block/qapi.c dump_qobject/dump_qdict/dump_qlist: the human "Format specific
 * information" block. Dashes in keys become spaces.
 */
export function dumpHuman(value: QValue, indent: number): string {
  let out = "";
  const composite = (v: QValue) => v instanceof QDict || Array.isArray(v) || v instanceof QLazyList;
  const scalar = (v: QValue) =>
    typeof v === "boolean"
      ? (v ? "true" : "false")
      : typeof v === "bigint"
      ? v.toString()
      : v instanceof Uint8Array
      ? new TextDecoder().decode(v)
      : v as string;
  const obj = (v: QValue, ind: number) => {
    if (v instanceof QDict) {
      for (const [k, x] of v.entries()) {
        out += `${" ".repeat(ind * 4)}${k.replaceAll("-", " ")}:${composite(x) ? "\n" : " "}`;
        if (composite(x)) obj(x, ind + 1);
        else out += scalar(x) + "\n";
      }
    } else if (Array.isArray(v) || v instanceof QLazyList) {
      let i = 0;
      for (const x of listItems(v)) {
        out += `${" ".repeat(ind * 4)}[${i++}]:${composite(x) ? "\n" : " "}`;
        if (composite(x)) obj(x, ind + 1);
        else out += scalar(x) + "\n";
      }
    } else {
      out += scalar(v);
    }
  };
  obj(value, indent);
  return out;
}
