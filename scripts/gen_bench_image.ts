// Writes the benchmark image: a raw file of SIZE bytes (default 2 GiB) in
// 64 KiB chunks, each chunk either random bytes or a hole with equal odds,
// from a seeded xorshift generator (the same seed gives the same file).
// Usage: deno run -A scripts/gen_bench_image.ts OUT [SIZE_MIB] [SEED]
const [out, sizeArg, seedArg] = Deno.args;
if (!out) {
  console.error("usage: gen_bench_image.ts OUT [SIZE_MIB] [SEED]");
  Deno.exit(2);
}
const size = BigInt(sizeArg ?? "2048") << 20n;
const CHUNK = 65536;
let s0 = (Number(seedArg ?? "42") >>> 0) || 1, s1 = 0x9e3779b9, s2 = 0x7f4a7c15, s3 = 0x1234567;
// xoshiro128** : fast, good enough to defeat compression, reproducible.
function next(): number {
  const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
  const t = s1 << 9;
  s2 ^= s0;
  s3 ^= s1;
  s1 ^= s2;
  s0 ^= s3;
  s2 ^= t;
  s3 = rotl(s3, 11);
  return r;
}
function rotl(x: number, k: number) {
  return (x << k) | (x >>> (32 - k));
}
const f = await Deno.open(out, { write: true, create: true, truncate: true });
await f.truncate(Number(size));
const buf = new Uint8Array(CHUNK);
const words = new Uint32Array(buf.buffer);
let data = 0n;
for (let off = 0n; off < size; off += BigInt(CHUNK)) {
  if (next() & 1) continue;
  for (let i = 0; i < words.length; i++) words[i] = next();
  await f.seek(off, Deno.SeekMode.Start);
  let done = 0;
  while (done < CHUNK) done += await f.write(buf.subarray(done));
  data += BigInt(CHUNK);
}
f.close();
console.log(`${out}: ${size} bytes, ${data} bytes of random data in 64 KiB chunks`);
