// The interface of the in-process TypeScript fuzz targets (fuzz/ts_targets/).
// A target decodes its input bytes into planner arguments, calls the
// planner and checks invariants. Typed planner errors (PlanResult ok:false)
// are expected; anything thrown is a finding, and so is a broken invariant
// (throw InvariantError). Coverage is structural: cov.hit(name) per
// observed branch or value class.

export interface Cov {
  hit(feature: string): void;
}

export interface TsTarget {
  /** One line for `deno task fuzz --list`. */
  description: string;
  run(data: Uint8Array, cov: Cov): void;
}

export class InvariantError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvariantError";
  }
}

export function invariant(cond: boolean, message: string | (() => string)): asserts cond {
  if (!cond) throw new InvariantError(typeof message === "string" ? message : message());
}

/** Little-endian readers that treat bytes past the end as zero. */
export class Bytes {
  constructor(readonly data: Uint8Array) {}
  u8(at: number): number {
    return at < this.data.length ? this.data[at] : 0;
  }
  u32(at: number): number {
    return (this.u8(at) | (this.u8(at + 1) << 8) | (this.u8(at + 2) << 16) | (this.u8(at + 3) << 24)) >>> 0;
  }
  u64(at: number): bigint {
    return BigInt(this.u32(at)) | (BigInt(this.u32(at + 4)) << 32n);
  }
}

/** A coarse class of a bigint for structural coverage. */
export function sizeClass(v: bigint): string {
  if (v === 0n) return "0";
  if (v < 0n) return "neg";
  return `2^${v.toString(2).length - 1}`;
}
