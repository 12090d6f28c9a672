// Size strings as qemu parses them (util/cutils.c do_strtosz): decimal or
// 0x-hex integers, an optional B/K/M/G/T/P/E suffix (binary units), decimal
// fractions with a suffix. Shared by the CLI (cvtnum) and -o size values.
const UNITS: Record<string, bigint> = {
  B: 1n,
  K: 1n << 10n,
  M: 1n << 20n,
  G: 1n << 30n,
  T: 1n << 40n,
  P: 1n << 50n,
  E: 1n << 60n,
};
const U64_MAX = (1n << 64n) - 1n;
export const INT64_MAX = (1n << 63n) - 1n;

export class SizeError extends Error {
  constructor(readonly range: boolean) {
    super(range ? "Size out of range" : "Invalid size");
  }
}

/** qemu_strtosz: bytes, or SizeError (range = ERANGE, else EINVAL). */
export function strtosz(text: string): bigint {
  // strtoull skips leading white space and accepts a sign.
  const m = /^[ \t\n\v\f\r]*([+-]?)([0-9]*)/.exec(text)!;
  if (m[1] === "-") throw new SizeError(false);
  let rest = text.slice(m[0].length);
  let val: bigint;
  let frac = 0;
  let hex = false;
  if (m[2] === "") throw new SizeError(false);
  if (m[2] === "0" && /^[xX][0-9a-fA-F]/.test(rest)) {
    const h = /^[xX]([0-9a-fA-F]+)/.exec(rest)!;
    val = BigInt("0x" + h[1]);
    rest = rest.slice(h[0].length);
    if (rest.startsWith(".")) throw new SizeError(false);
    hex = true;
  } else {
    val = BigInt(m[2]);
    if (rest.startsWith(".")) {
      const f = /^\.([0-9]*)/.exec(rest)!;
      if (/^[eE]/.test(rest.slice(f[0].length))) throw new SizeError(false);
      // qemu parses the fraction with strtod into a double.
      frac = Number.parseFloat("0." + (f[1] || "0"));
      rest = rest.slice(f[0].length);
    }
  }
  if (val > U64_MAX) throw new SizeError(true);
  void hex;
  let mul = 1n;
  const unit = rest[0]?.toUpperCase();
  if (unit && UNITS[unit] !== undefined) {
    mul = UNITS[unit];
    rest = rest.slice(1);
  }
  if (rest !== "") throw new SizeError(false);
  if (mul === 1n) {
    if (frac !== 0) throw new SizeError(false);
    return val;
  }
  // Fraction handled as qemu does: a 64-bit fixed-point fraction, rounded half up.
  let result = val * mul;
  if (frac !== 0) {
    const valf = BigInt(Math.trunc(frac * 2 ** 64)) & U64_MAX;
    const prod = valf * mul;
    result += prod >> 64n;
    result += ((prod & U64_MAX) >> 63n) & 1n;
  }
  if (result > U64_MAX) throw new SizeError(true);
  return result;
}
