// printf-exact number formatting helpers.

/**
 * printf("%.2f", x) for a finite non-negative double: rounds the exact binary
 * value (ties to even, as glibc does), which toFixed() does not guarantee.
 */
export function formatF2(x: number): string {
  if (!Number.isFinite(x)) return x > 0 ? "inf" : x < 0 ? "-inf" : "nan";
  const neg = x < 0;
  const a = Math.abs(x);
  // Exact rational of the double: mantissa * 2^exp.
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, a);
  const bits = view.getBigUint64(0);
  const expBits = Number((bits >> 52n) & 0x7ffn);
  let mant = bits & ((1n << 52n) - 1n);
  let exp: number;
  if (expBits === 0) exp = -1074;
  else {
    mant |= 1n << 52n;
    exp = expBits - 1075;
  }
  let num = mant * 100n;
  let den = 1n;
  if (exp >= 0) num <<= BigInt(exp);
  else den <<= BigInt(-exp);
  let q = num / den;
  const r = num - q * den;
  if (2n * r > den || (2n * r === den && q % 2n === 1n)) q += 1n;
  const s = q.toString().padStart(3, "0");
  return `${neg && q !== 0n ? "-" : neg ? "-" : ""}${s.slice(0, -2)}.${s.slice(-2)}`;
}
