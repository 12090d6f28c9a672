// qemu's size_to_str (util/cutils.c) and the "%0.3g" it prints with,
// reproduced exactly: the unit comes from frexp() of a double, and the
// mantissa is rounded from the exact binary value, ties to even, as glibc does.

const PREFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/** Exponent e of frexp(x): x = m * 2^e with 0.5 <= m < 1 (0 for x == 0). */
function frexpExponent(x: number): number {
  if (x === 0) return 0;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const biased = (view.getUint16(0) >> 4) & 0x7ff;
  if (biased === 0) return frexpExponent(x * 2 ** 64) - 64;
  return biased - 1022;
}

function divRoundHalfEven(n: bigint, d: bigint): bigint {
  const q = n / d;
  const r = n - q * d;
  if (2n * r > d || (2n * r === d && q % 2n === 1n)) return q + 1n;
  return q;
}

/**
 * printf("%.{precision}g") of the exact non-negative rational num/den.
 */
export function formatG(num: bigint, den: bigint, precision = 6): string {
  if (num === 0n) return "0";
  const p = BigInt(precision);
  // Decimal exponent x of the value: 10^x <= num/den < 10^(x+1).
  let x = num.toString().length - den.toString().length;
  const pow10 = (k: number) => 10n ** BigInt(k);
  const ge = (k: number) => (k >= 0 ? num >= den * pow10(k) : num * pow10(-k) >= den);
  while (!ge(x)) x--;
  while (ge(x + 1)) x++;
  // Round to `precision` significant digits.
  const shift = x - precision + 1;
  let digits = shift >= 0
    ? divRoundHalfEven(num, den * pow10(shift))
    : divRoundHalfEven(num * pow10(-shift), den);
  if (digits >= 10n ** p) {
    x++;
    digits = digits / 10n;
  }
  const strip = (s: string) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  const ds = digits.toString();
  if (x < -4 || x >= precision) {
    const mant = strip(ds.length > 1 ? `${ds[0]}.${ds.slice(1)}` : ds);
    const e = Math.abs(x).toString().padStart(2, "0");
    return `${mant}e${x < 0 ? "-" : "+"}${e}`;
  }
  if (x >= 0) {
    const int = ds.slice(0, x + 1);
    const frac = ds.slice(x + 1);
    return strip(frac ? `${int}.${frac}` : int);
  }
  return strip(`0.${"0".repeat(-x - 1)}${ds}`);
}

/** size_to_str: "0 B", "1.5 KiB", "64 MiB", ... */
export function sizeToStr(value: bigint): string {
  // qemu converts to double first; values above 2^53 round the same way here.
  const asDouble = Number(value);
  const e = frexpExponent(asDouble / (1000 / 1024));
  const i = Math.trunc((e - 1) / 10) * 10;
  const exact = BigInt(asDouble);
  return `${formatG(exact, 1n << BigInt(i), 3)} ${PREFIXES[i / 10]}B`;
}
