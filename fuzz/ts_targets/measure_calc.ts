// Fuzz target measure_calc: the measure calculators (lib/formats/<fmt>/
// measure.ts) on seed 001's 42-byte structured input.
//
// Input:
//   0      target format (mod 5): raw, qcow2, vmdk, vpc, vhdx (formats whose
//          calculator does not exist yet are skipped)
//   1      refcount_bits selector (mod 8): 1,2,4,8,16,32,64, 0xff (invalid)
//   2      flags: bit 0 extended_l2, bit 1 lazy_refcounts, bit 2 compat=1.1
//          (else 0.10), bit 3 compress (unused by measure), bit 4 measure an
//          input (else --size), bit 5 backing_file, bit 6 input supports bitmaps
//   3      preallocation (mod 4): off, metadata, falloc, full
//   4      vmdk subformat (mod 3)       5  vpc subformat (mod 2), vhdx fixed (bit 0)
//          (vpc: flag bit 3 = force_size; vmdk/vpc/vhdx take create options
//          and an AllocationSummary {virtualSize, allocatedBytes})
//   6-13   virtual size (u64 LE)        14-21 allocated bytes (u64 LE)
//          (both masked to INT64_MAX: qemu-img measure's domain)
//   22-25  cluster_size (u32 LE)        26-29 grain size (u32 LE)
//   30-33  block_size (u32 LE)          34-41 LUKS header overhead (u64 LE;
//          non-zero asks for encrypt.format=luks)
//   42..   extra extents (u32 length in 512-byte units, u8 kind) tiling the
//          input after the first allocated_bytes of data
// Shorter inputs are ignored.
//
// Invariants on every successful result (seed 001):
//   1. required <= fully allocated;
//   2. raw: fully allocated >= the virtual size measured;
//   3. non-raw: fully allocated > 0 when the virtual size is > 0;
//   4. both fit a uint64 (what qemu prints) and, while both are below 2^63,
//      so does their sum (seed 001's overflow check, adapted: see below);
//   5. qcow2 with preallocation falloc/full: required == fully allocated.
// Refusals must be typed PlanErrors; any throw is a finding.
import type * as Qcow2Measure from "../../lib/formats/qcow2/measure.ts";
import type { OptValue, ParsedOpts } from "../../lib/formats/options.ts";
import { I64_MAX, U64_MAX } from "../../lib/formats/plan.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkResult, optional } from "../engine/plan_checks.ts";

type Result = ReturnType<typeof Qcow2Measure.qcow2Measure>;
/** Each format's calculator, under its own signature (qemu-style -o options
 * for raw/qcow2, create options + an allocation summary for the others). */
type Calc = (o: ParsedOpts, input: unknown, d: Bytes, withInput: boolean) => Result;
const FORMATS = ["raw", "qcow2", "vmdk", "vpc", "vhdx"] as const;
const calculators = new Map<string, Calc>();
for (const f of FORMATS) {
  const mod = await optional<Record<string, unknown>>(`../../lib/formats/${f}/measure.ts`);
  const fn = mod?.[`${f}Measure`] as ((...a: unknown[]) => Result) | undefined;
  if (typeof fn !== "function") continue;
  if (f === "raw" || f === "qcow2") {
    calculators.set(f, (o, input) => fn(o, input));
    continue;
  }
  calculators.set(f, (_o, input, b, withInput) => {
    const size = b.u64(6) & I64_MAX;
    const summary = withInput
      ? { virtualSize: size, allocatedBytes: (input as { allocated: bigint }).allocated }
      : undefined;
    if (f === "vmdk") {
      return fn({ size, filename: "t.vmdk", subformat: VMDK_SUB[b.u8(4) % VMDK_SUB.length] }, summary);
    }
    if (f === "vpc") {
      return fn({ size, subformat: VPC_SUB[b.u8(5) % 2], forceSize: (b.u8(2) & 8) !== 0 }, summary);
    }
    const bs = BigInt(b.u32(30));
    return fn({ size, blockSize: bs || undefined, subformat: b.u8(5) & 1 ? "fixed" : "dynamic" }, summary);
  });
}

const RC = [1n, 2n, 4n, 8n, 16n, 32n, 64n, 0xffn];
const PREALLOC = ["off", "metadata", "falloc", "full"];
const VMDK_SUB = [
  "monolithicSparse",
  "streamOptimized",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
];
const VPC_SUB = ["dynamic", "fixed"];

function num(name: string, v: bigint): OptValue {
  return { name, str: `${v}`, num: v };
}
function str(name: string, v: string): OptValue {
  return { name, str: v };
}
function bool(name: string, v: boolean): OptValue {
  return { name, str: v ? "on" : "off", bool: v };
}

function run(d: Uint8Array, cov: Cov) {
  const b = new Bytes(d);
  const fmt = FORMATS[b.u8(0) % 5];
  const fn = calculators.get(fmt);
  if (!fn) return;
  const flags = b.u8(2);
  const prealloc = PREALLOC[b.u8(3) % 4];
  // qemu-img measure refuses --size above INT64_MAX and input lengths are
  // file lengths (< 2^63): the calculators' domain stops there.
  const virtualSize = b.u64(6) & I64_MAX, allocated = b.u64(14) & I64_MAX;
  const items: OptValue[] = [];
  if (fmt === "qcow2") {
    items.push(num("refcount_bits", RC[b.u8(1) % 8]), bool("extended_l2", (flags & 1) !== 0));
    items.push(bool("lazy_refcounts", (flags & 2) !== 0), str("compat", flags & 4 ? "1.1" : "0.10"));
    items.push(num("cluster_size", BigInt(b.u32(22))));
    if (flags & 32) items.push(str("backing_file", "base.img"));
    if (b.u64(34) !== 0n) items.push(str("encrypt.format", "luks"));
  }
  if (fmt === "vmdk") {
    items.push(str("subformat", VMDK_SUB[b.u8(4) % VMDK_SUB.length]), num("grain_size", BigInt(b.u32(26))));
  }
  if (fmt === "vpc") items.push(str("subformat", VPC_SUB[b.u8(5) % 2]));
  if (fmt === "vhdx") items.push(num("block_size", BigInt(b.u32(30))));
  if (fmt !== "raw" && fmt !== "vpc") items.push(str("preallocation", prealloc));
  const withInput = (flags & 16) !== 0;
  if (!withInput) items.push(num("size", virtualSize));
  const opts: ParsedOpts = { descs: [], items };
  cov.hit(`${fmt}:input:${withInput}:${prealloc}:${sizeClass(virtualSize)}`);

  let input: unknown = undefined;
  if (withInput && fmt === "raw") input = virtualSize;
  else if (withInput && fmt !== "qcow2") input = { allocated };
  else if (withInput) {
    const extents: Qcow2Measure.AllocationExtent[] = [];
    const first = allocated < virtualSize ? allocated : virtualSize;
    if (first > 0n) extents.push({ start: 0n, length: first, data: true, zero: false, allocated: true });
    let at = first;
    for (let i = 42; i + 5 <= d.length && at < virtualSize && extents.length < 256; i += 5) {
      const len = BigInt(b.u32(i)) * 512n || 512n;
      const k = b.u8(i + 4) % 4;
      const l = at + len > virtualSize ? virtualSize - at : len;
      extents.push({
        start: at,
        length: l,
        data: k === 0 || k === 3,
        zero: k === 1 || k === 3,
        allocated: k !== 2,
      });
      at += l;
    }
    if (at < virtualSize) {
      extents.push({ start: at, length: virtualSize - at, data: false, zero: true, allocated: false });
    }
    input = { virtualSize, extents, supportsBitmaps: (flags & 64) !== 0 };
  }
  const r = fn(opts, input, b, withInput);
  if (!checkResult(r, `${fmt}-measure`, cov)) return;
  const { required, fullyAllocated } = r.value;
  cov.hit(`${fmt}:required:${sizeClass(required)}:full:${sizeClass(fullyAllocated)}`);
  invariant(required >= 0n && fullyAllocated >= 0n, `${fmt}: negative result ${required} ${fullyAllocated}`);
  invariant(required <= fullyAllocated, `${fmt}: required ${required} > fully allocated ${fullyAllocated}`);
  const measured = withInput ? virtualSize : (items.find((i) => i.name === "size")?.num ?? 0n);
  if (fmt === "raw") {
    invariant(
      fullyAllocated >= measured,
      `raw: fully allocated ${fullyAllocated} < virtual size ${measured}`,
    );
  } else if (measured > 0n) {
    invariant(fullyAllocated > 0n, `${fmt}: fully allocated 0 for virtual size ${measured}`);
  }
  // Seed 001's "required + fully allocated never wraps" guarded Rust u64
  // arithmetic. Here the numbers are bigints and qemu prints each as a
  // uint64, so the check is that each fits a uint64 and, while both are in
  // int64 range, so does their sum. (qemu itself prints 2^63 twice for
  // `measure --size 9223372036854775807 -O raw`, and more than 2^63 for
  // qcow2 inputs near BDRV_MAX_LENGTH with preallocation=full.)
  invariant(required <= U64_MAX && fullyAllocated <= U64_MAX, `${fmt}: result does not fit a uint64`);
  if (required <= I64_MAX && fullyAllocated <= I64_MAX) {
    invariant(required + fullyAllocated <= U64_MAX, `${fmt}: required + fully allocated overflows u64`);
  }
  if (fmt === "qcow2" && (prealloc === "falloc" || prealloc === "full")) {
    invariant(
      required === fullyAllocated,
      `qcow2 ${prealloc}: required ${required} != fully allocated ${fullyAllocated}`,
    );
  }
}

export const target: TsTarget = {
  description: `measure calculators (${[...calculators.keys()].join(", ") || "none present yet"})`,
  run(data, cov) {
    if (data.length < 42) return;
    run(data, cov);
  },
};
