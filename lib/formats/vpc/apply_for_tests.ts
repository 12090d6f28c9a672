// Test-only helpers shared by the vpc, vhdx and vmdk planner tests: apply a
// FilePlan to a temp file, run qemu-img, and compare images with the fields
// qemu fills from the clock or the RNG masked out.
import { type FilePlan, planViolation } from "../plan.ts";

const dec = new TextDecoder();

/** Writes the plan's patches into a new file at `path` and sets its size. */
export function applyPlan(path: string, plan: FilePlan): void {
  const bad = planViolation(plan);
  if (bad) throw new Error(`plan violates its invariants: ${bad}`);
  const f = Deno.openSync(path, { write: true, create: true, truncate: true });
  try {
    for (const p of plan.patches) {
      if (p.kind === "write") {
        f.seekSync(Number(p.offset), Deno.SeekMode.Start);
        let done = 0;
        while (done < p.bytes.length) done += f.writeSync(p.bytes.subarray(done));
      } else if (p.kind === "copy") {
        throw new Error("a create plan has no copy patches");
      } else {
        // The vpc/vhdx/vmdk planners use zero patches only where qemu writes
        // explicit zeroes, so write them: the allocation (actual-size) then
        // matches qemu's image.
        const chunk = new Uint8Array(Math.min(Number(p.length), 64 << 20));
        f.seekSync(Number(p.offset), Deno.SeekMode.Start);
        let left = Number(p.length);
        while (left > 0) left -= f.writeSync(chunk.subarray(0, Math.min(left, chunk.length)));
      }
    }
    f.truncateSync(Number(plan.fileSize));
  } finally {
    f.close();
  }
}

export interface Run {
  stdout: string;
  stderr: string;
  code: number;
}

export function qemuImgSync(args: string[], cwd?: string): Run {
  const out = new Deno.Command("qemu-img", { args, cwd, stdout: "piped", stderr: "piped" }).outputSync();
  return { stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), code: out.code };
}

/** `qemu-img info --output=json` as an object, without the file name and disk usage. */
export function infoJson(path: string, fmt: string): Record<string, unknown> {
  const r = qemuImgSync(["info", "-f", fmt, "--output=json", path]);
  if (r.code !== 0) throw new Error(`qemu-img info ${path}: ${r.stderr}`);
  const o = JSON.parse(r.stdout);
  delete o.filename;
  return o;
}

export function haveQemuImg(): boolean {
  try {
    return new Deno.Command("qemu-img", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

/** The first offset where a and b differ outside `masked` ranges, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array, masked: [number, number][] = []): number {
  const n = Math.max(a.length, b.length);
  outer: for (let i = 0; i < n; i++) {
    if (a[i] === b[i]) continue;
    for (const [o, l] of masked) if (i >= o && i < o + l) continue outer;
    return i;
  }
  return -1;
}

/** Allocated bytes of a file (st_blocks * 512), what qemu-img calls actual-size. */
export function allocated(path: string): number {
  return (Deno.statSync(path).blocks ?? 0) * 512;
}

/** Parses a qemu-img size argument (k/M/G/T/P/E suffixes are powers of 1024). */
export function parseSize(s: string): bigint {
  const m = /^(\d+)([kKMGTPE]?)$/.exec(s);
  if (!m) throw new Error(`bad size ${s}`);
  const exp = " kMGTPE".indexOf(m[2] === "K" ? "k" : m[2] || " ");
  return BigInt(m[1]) * (1n << (10n * BigInt(exp)));
}

/**
 * Asserts `qemu-img info` of our image equals that of qemu's, field by
 * field. actual-size may differ by one 4 KiB block: that is the file
 * system's extent-tree block, which depends on physical fragmentation, not
 * on which ranges were written (the tests compare those byte for byte).
 */
export function infoDiff(ours: string, theirs: string, fmt: string): string | undefined {
  const a = infoJson(ours, fmt), b = infoJson(theirs, fmt);
  const sa = Number(a["actual-size"]), sb = Number(b["actual-size"]);
  if (Math.abs(sa - sb) > 4096) return `actual-size ${sa} != ${sb}`;
  delete a["actual-size"];
  delete b["actual-size"];
  // Nested file names (vmdk extents) name each side's own file.
  const ja = JSON.stringify(a).replaceAll(
    JSON.stringify(ours).slice(1, -1),
    JSON.stringify(theirs).slice(1, -1),
  );
  const jb = JSON.stringify(b);
  return ja === jb ? undefined : `info differs:\n${ja}\n${jb}`;
}

/** A small deterministic PRNG (xorshift64*) for invariant sweeps. */
export function rng(seed: bigint): () => bigint {
  let s = seed || 1n;
  return () => {
    s ^= s >> 12n;
    s ^= BigInt.asUintN(64, s << 25n);
    s ^= s >> 27n;
    return BigInt.asUintN(64, s * 0x2545f4914f6cdd1dn);
  };
}

/** Sizes worth probing: small, around powers of two, and raw random u64s. */
export function probeSizes(next: () => bigint, n: number): bigint[] {
  const out: bigint[] = [0n, 1n, 511n, 512n, 513n];
  for (let i = 0; i < n; i++) {
    const r = next();
    const shift = r % 64n;
    out.push(BigInt.asUintN(64, (1n << shift) + (next() % 1024n) - 512n));
    out.push(r);
  }
  return out;
}

/** Seed 001's invariants for one successful measure. */
export function measureViolation(
  m: { required: bigint; fullyAllocated: bigint },
  size: bigint,
): string | undefined {
  if (m.required < 0n || m.fullyAllocated < 0n) return "negative";
  if (m.required > m.fullyAllocated) return `required ${m.required} > fully ${m.fullyAllocated}`;
  if (size > 0n && m.fullyAllocated <= 0n) return "no overhead for a non-empty image";
  if (m.required + m.fullyAllocated > (1n << 64n) - 1n) return "required + fully overflows u64";
  return undefined;
}

/** Up to `len` bytes of the file at `off` (fewer at its end). */
export function readAt(path: string, off: number, len: number): Uint8Array {
  const f = Deno.openSync(path);
  try {
    f.seekSync(off, Deno.SeekMode.Start);
    const b = new Uint8Array(len);
    let got = 0;
    while (got < len) {
      const n = f.readSync(b.subarray(got));
      if (n === null) break;
      got += n;
    }
    return b.subarray(0, got);
  } finally {
    f.close();
  }
}
