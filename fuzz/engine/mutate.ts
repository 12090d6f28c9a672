// Input mutations in libFuzzer's basic set (names as libFuzzer prints them
// in "MS:" lines): bit and byte flips, insert/erase/copy of ranges,
// repeated bytes, shuffles, ASCII and binary integers, interesting integers
// (8/16/32/64-bit, both endiannesses), cross-over with another corpus input
// and dictionary words. Every choice comes from the seeded Rng.
import { Rng } from "./rng.ts";

const INTERESTING_8 = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40, 0x64];
const INTERESTING_16 = [
  0x0000,
  0x0080,
  0x00ff,
  0x0100,
  0x0200,
  0x03e8,
  0x0400,
  0x1000,
  0x7fff,
  0x8000,
  0xffff,
];
const INTERESTING_32 = [
  0x00000000,
  0x00000001,
  0x00000009,
  0x0000000c,
  0x00000010,
  0x00000015,
  0x00000040,
  0x00000068,
  0x00000070,
  0x000001ff,
  0x00000200,
  0x00010000,
  0x00100000,
  0x7fffffff,
  0x80000000,
  0xfffffffe,
  0xffffffff,
];
const INTERESTING_64 = [
  0n,
  1n,
  0x7fffffffffffffffn,
  0x8000000000000000n,
  0xffffffffffffffffn,
  0x7fffffffc0000000n,
  0x00fffffffffffe00n,
  0x4000000000000000n,
  0x0000000100000000n,
  0xfffffffffffffe00n,
];

export type Mutation = (data: Uint8Array, m: Mutator) => Uint8Array | undefined;

export class Mutator {
  readonly rng: Rng;
  maxLen: number;
  dict: Uint8Array[] = [];
  /** Other corpus inputs, for CrossOver and CopyPart across units. */
  corpus: () => Uint8Array | undefined = () => undefined;
  /** The mutation names applied since the last reset (for "MS:" lines). */
  sequence: string[] = [];

  constructor(rng: Rng, maxLen: number) {
    this.rng = rng;
    this.maxLen = maxLen;
  }

  /** One mutation of data (never longer than maxLen, never empty). */
  mutate(data: Uint8Array): Uint8Array {
    for (let attempt = 0; attempt < 20; attempt++) {
      const [name, op] = this.rng.pick(OPS.filter(([n]) => n !== "ManualDict" || this.dict.length));
      const out = op(data, this);
      if (out && out.length > 0 && out.length <= this.maxLen) {
        this.sequence.push(name);
        return out;
      }
    }
    // Everything refused (tiny maxLen): flip a byte in place.
    const out = data.length ? data.slice(0, this.maxLen) : new Uint8Array(1);
    out[this.rng.below(out.length)] ^= 1 + this.rng.below(255);
    this.sequence.push("ChangeByte");
    return out;
  }
}

function splice(data: Uint8Array, at: number, del: number, ins: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length - del + ins.length);
  out.set(data.subarray(0, at));
  out.set(ins, at);
  out.set(data.subarray(at + del), at + ins.length);
  return out;
}

function writeInt(out: Uint8Array, at: number, value: bigint, width: number, little: boolean) {
  for (let i = 0; i < width; i++) {
    const byte = Number((value >> BigInt(8 * i)) & 0xffn);
    out[little ? at + i : at + width - 1 - i] = byte;
  }
}

function readInt(d: Uint8Array, at: number, width: number, little: boolean): bigint {
  let v = 0n;
  for (let i = 0; i < width; i++) v |= BigInt(d[little ? at + i : at + width - 1 - i]) << BigInt(8 * i);
  return v;
}

const OPS: [string, Mutation][] = [
  ["EraseBytes", (d, m) => {
    if (d.length < 2) return undefined;
    const n = 1 + m.rng.below(Math.min(d.length - 1, 64));
    return splice(d, m.rng.below(d.length - n + 1), n, new Uint8Array(0));
  }],
  ["InsertByte", (d, m) => splice(d, m.rng.below(d.length + 1), 0, new Uint8Array([m.rng.below(256)]))],
  ["InsertRepeatedBytes", (d, m) => {
    const n = 3 + m.rng.below(126);
    const b = new Uint8Array(n).fill(m.rng.bool() ? m.rng.below(256) : m.rng.pick([0, 0xff]));
    return splice(d, m.rng.below(d.length + 1), 0, b);
  }],
  ["ChangeByte", (d, m) => {
    if (!d.length) return undefined;
    const out = d.slice();
    out[m.rng.below(out.length)] = m.rng.below(256);
    return out;
  }],
  ["ChangeBit", (d, m) => {
    if (!d.length) return undefined;
    const out = d.slice();
    out[m.rng.below(out.length)] ^= 1 << m.rng.below(8);
    return out;
  }],
  ["ShuffleBytes", (d, m) => {
    if (d.length < 2) return undefined;
    const n = 2 + m.rng.below(Math.min(d.length - 1, 7));
    const at = m.rng.below(d.length - n + 1);
    const out = d.slice();
    for (let i = n - 1; i > 0; i--) {
      const j = m.rng.below(i + 1);
      [out[at + i], out[at + j]] = [out[at + j], out[at + i]];
    }
    return out;
  }],
  ["ChangeASCIIInteger", (d, m) => {
    let i = m.rng.below(d.length + 1);
    while (i < d.length && (d[i] < 0x30 || d[i] > 0x39)) i++;
    if (i >= d.length) return undefined;
    let j = i;
    while (j < d.length && d[j] >= 0x30 && d[j] <= 0x39) j++;
    let v = BigInt(new TextDecoder().decode(d.subarray(i, j)));
    switch (m.rng.below(4)) {
      case 0:
        v++;
        break;
      case 1:
        v = v > 0n ? v - 1n : 0n;
        break;
      case 2:
        v /= 2n;
        break;
      default:
        v *= 2n;
    }
    return splice(d, i, j - i, new TextEncoder().encode(v.toString()));
  }],
  ["ChangeBinaryInteger", (d, m) => {
    const width = m.rng.pick([1, 2, 4, 8]);
    if (d.length < width) return undefined;
    const at = m.rng.below(d.length - width + 1);
    const little = m.rng.bool();
    const mask = (1n << BigInt(8 * width)) - 1n;
    let v = readInt(d, at, width, little);
    const delta = BigInt(1 + m.rng.below(10));
    v = (m.rng.bool() ? v + delta : v - delta) & mask;
    if (m.rng.below(4) === 0) v = (mask + 1n - v) & mask;
    const out = d.slice();
    writeInt(out, at, v, width, little);
    return out;
  }],
  ["InterestingInt", (d, m) => {
    const width = m.rng.pick([1, 2, 4, 8]);
    if (d.length < width) return undefined;
    const at = m.rng.below(d.length - width + 1);
    const v = width === 1
      ? BigInt(m.rng.pick(INTERESTING_8))
      : width === 2
      ? BigInt(m.rng.pick(INTERESTING_16))
      : width === 4
      ? BigInt(m.rng.pick(INTERESTING_32))
      : m.rng.pick(INTERESTING_64);
    const out = d.slice();
    writeInt(out, at, v, width, m.rng.bool());
    return out;
  }],
  ["CopyPart", (d, m) => {
    if (d.length < 2) return undefined;
    const n = 1 + m.rng.below(Math.min(d.length - 1, 256));
    const from = m.rng.below(d.length - n + 1);
    const part = d.slice(from, from + n);
    const to = m.rng.below(d.length - n + 1);
    if (m.rng.bool()) {
      const out = d.slice();
      out.set(part, to);
      return out;
    }
    return splice(d, to, 0, part);
  }],
  ["CrossOver", (d, m) => {
    const other = m.corpus();
    if (!other || !other.length) return undefined;
    const n = 1 + m.rng.below(Math.min(other.length, 512));
    const from = m.rng.below(other.length - n + 1);
    const part = other.subarray(from, from + n);
    const at = m.rng.below(d.length + 1);
    if (m.rng.bool() || at + n > d.length) return splice(d, at, 0, part);
    const out = d.slice();
    out.set(part, at);
    return out;
  }],
  ["ManualDict", (d, m) => {
    const w = m.rng.pick(m.dict);
    const at = m.rng.below(d.length + 1);
    if (m.rng.bool() || at + w.length > d.length) return splice(d, at, 0, w);
    const out = d.slice();
    out.set(w, at);
    return out;
  }],
];

export const MUTATION_NAMES = OPS.map(([n]) => n);
