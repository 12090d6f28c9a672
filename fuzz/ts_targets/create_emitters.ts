// Fuzz target create_emitters: the create planners and the convert output
// emitter on structured inputs.
//
// Input (24-byte header as in seed 003's create precedent, then extras):
//   0      emitter selector (mod the emitters present: qcow2 create,
//          vpc create, qcow2 convert output, raw create, vhdx create)
//   1      flags: bit 0 version 2 (else 3), bit 1 extended_l2, bit 2
//          lazy_refcounts, bit 3 zstd, bit 4 backing file, bit 5 backing
//          format, bit 6 vpc fixed, bit 7 vpc force_size
//   2      refcount_bits selector: 1,2,4,8,16,32,64 or the raw byte (>= 7)
//   3      cluster_size selector: 512 << (b % 13), or a raw u32 from 20..23
//          when b >= 0xf0; preallocation = (b >> 4) & 3 when b < 0xf0
//   4-11   virtual size (u64 LE)      12-19 unix time (vpc) / data end (output)
//          / block size in 12-15 and header sequence number in 16-19 (vhdx)
//   20-23  raw cluster size (u32 LE) / log size (vhdx, flag bit 2)
//   24..   vpc: UUID; vhdx: three GUIDs; output: data runs and compressed clusters
//          (tag % 2: 0 run = u32 guest cluster, u16 count, u32 host
//          cluster; 1 compressed = u32 guest cluster, u32 host offset,
//          u16 length)
//
// Invariants on every successful plan:
//   - FilePlan bookkeeping: patches inside the file, no overlap, at most
//     MAX_PATCHES, file size <= INT64_MAX (metadata + minimum size never
//     overflow);
//   - re-parse of what was emitted, in TypeScript (the guest parsers only
//     run in C): the qcow2 header at offset 0 has the magic, the version,
//     cluster_bits, size (rounded up to 512) and refcount_order asked for
//     and an L1 table that covers the size, ending inside the file; the VHD
//     footer has the cookie, a valid checksum, the planned current size,
//     sits at the file's last 512 bytes (fixed) or offset 0 (dynamic), and
//     the size stays within 0xFF000000 sectors (seed 002 bug A); the VHDX
//     file identifier and both headers are there, header 2's 64-bit sequence
//     number is header 1's + 1 (seed 002 bug B's class), the BAT ends inside
//     the file; a raw file is the size rounded up to 512;
//   - refusals are typed PlanErrors (any throw is a finding).
import type * as Qcow2Create from "../../lib/formats/qcow2/create_plan.ts";
import type * as Qcow2Output from "../../lib/formats/qcow2/output_plan.ts";
import type * as VpcCreate from "../../lib/formats/vpc/create_plan.ts";
import type * as VhdxCreate from "../../lib/formats/vhdx/create_plan.ts";
import type * as RawCreate from "../../lib/formats/raw/create_plan.ts";
import type { FilePlan } from "../../lib/formats/plan.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";

const qcowCreate = await optional<typeof Qcow2Create>("../../lib/formats/qcow2/create_plan.ts");
const qcowOutput = await optional<typeof Qcow2Output>("../../lib/formats/qcow2/output_plan.ts");
const vpc = await optional<typeof VpcCreate>("../../lib/formats/vpc/create_plan.ts");
const vhdx = await optional<typeof VhdxCreate>("../../lib/formats/vhdx/create_plan.ts");
const raw = await optional<typeof RawCreate>("../../lib/formats/raw/create_plan.ts");

const RC_BITS = [1, 2, 4, 8, 16, 32, 64];
const PREALLOC = ["off", "metadata", "falloc", "full"] as const;

/** The bytes the plan leaves in [0, n) of the file (patches applied to zeroes). */
function bytesAt(plan: FilePlan, off: bigint, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (const p of plan.patches) {
    if (p.kind !== "write") continue;
    const s = p.offset, e = p.offset + BigInt(p.bytes.length);
    const lo = s > off ? s : off, hi = e < off + BigInt(n) ? e : off + BigInt(n);
    if (lo >= hi) continue;
    out.set(p.bytes.subarray(Number(lo - s), Number(hi - s)), Number(lo - off));
  }
  return out;
}

function common(d: Uint8Array) {
  const b = new Bytes(d);
  const flags = b.u8(1);
  const rsel = b.u8(2);
  const csel = b.u8(3);
  return {
    b,
    flags,
    refcountBits: rsel < 7 ? RC_BITS[rsel] : rsel,
    clusterSize: csel >= 0xf0 ? BigInt(b.u32(20)) : 512n << BigInt(csel % 13),
    preallocation: PREALLOC[csel < 0xf0 ? (csel >> 4) & 3 : 0],
    size: b.u64(4),
  };
}

/** Re-parses a qcow2 header the plan wrote and checks it against the request. */
function reparseQcow2(
  plan: FilePlan,
  want: { version: number; clusterSize: bigint; size: bigint; refcountBits: number },
  what: string,
  cov: Cov,
) {
  const h = bytesAt(plan, 0n, 112);
  const dv = new DataView(h.buffer);
  invariant(dv.getUint32(0) === 0x514649fb, `${what}: no qcow2 magic at offset 0`);
  const version = dv.getUint32(4), cb = dv.getUint32(20), size = dv.getBigUint64(24);
  const l1Size = BigInt(dv.getUint32(36)), l1Off = dv.getBigUint64(40);
  invariant(version === want.version, `${what}: version ${version}, asked ${want.version}`);
  invariant(1n << BigInt(cb) === want.clusterSize, `${what}: cluster_bits ${cb}`);
  invariant(size === (want.size + 511n) / 512n * 512n, `${what}: size ${size}, asked ${want.size}`);
  if (version === 3) {
    const order = dv.getUint32(96);
    invariant(1 << order === want.refcountBits, `${what}: refcount_order ${order}`);
    const extl2 = (dv.getBigUint64(72) & 16n) !== 0n;
    const l2Bits = BigInt(cb) - (extl2 ? 4n : 3n);
    invariant(
      l1Size << (BigInt(cb) + l2Bits) >= size,
      `${what}: L1 of ${l1Size} entries does not cover ${size}`,
    );
    cov.hit(`${what}:extl2:${extl2}`);
  }
  invariant(l1Size === 0n || l1Off + l1Size * 8n <= plan.fileSize, `${what}: L1 table past the file end`);
  invariant(l1Off % want.clusterSize === 0n, `${what}: L1 table offset ${l1Off} unaligned`);
}

function runQcow2Create(d: Uint8Array, cov: Cov) {
  const c = common(d);
  const o: Qcow2Create.Qcow2CreateOptions = {
    size: c.size,
    version: c.flags & 1 ? 2 : 3,
    clusterSize: c.clusterSize,
    refcountBits: c.refcountBits,
    extendedL2: (c.flags & 2) !== 0,
    lazyRefcounts: (c.flags & 4) !== 0,
    compressionType: c.flags & 8 ? "zstd" : "zlib",
    preallocation: c.preallocation,
    backingFile: c.flags & 16 ? "base.img" : undefined,
    backingFormat: c.flags & 32 ? "raw" : undefined,
  };
  cov.hit(`qcow2-create:size:${sizeClass(c.size)}`);
  const r = qcowCreate!.qcow2CreatePlan(o);
  if (!checkResult(r, "qcow2-create", cov)) return;
  // Each step is a plan of its own; together they must not overlap either.
  for (const step of r.value.steps) {
    invariant(step.fileSize === r.value.fileSize, `qcow2-create: step file size ${step.fileSize}`);
    checkPlan(step, "qcow2-create", cov);
  }
  const whole: FilePlan = { patches: r.value.steps.flatMap((s) => s.patches), fileSize: r.value.fileSize };
  const spans = whole.patches.map((
    p,
  ) => [p.offset, p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length)])
    .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  for (let i = 1; i < spans.length; i++) {
    invariant(spans[i - 1][1] <= spans[i][0], `qcow2-create: steps overlap at ${spans[i][0]}`);
  }
  cov.hit(`qcow2-create:steps:${sizeClass(BigInt(r.value.steps.length))}`);
  reparseQcow2(
    whole,
    { version: o.version, clusterSize: o.clusterSize, size: o.size, refcountBits: o.refcountBits },
    "qcow2-create",
    cov,
  );
}

function runVpc(d: Uint8Array, cov: Cov) {
  const c = common(d);
  const fixed = (c.flags & 64) !== 0, forceSize = (c.flags & 128) !== 0;
  const uuid = d.slice(24, 40);
  const padded = new Uint8Array(16);
  padded.set(uuid);
  const r = vpc!.planVpcCreate({ size: c.size, subformat: fixed ? "fixed" : "dynamic", forceSize }, {
    unixSeconds: c.b.u64(12),
    uuid: padded,
  });
  cov.hit(`vpc:${fixed ? "fixed" : "dynamic"}:${forceSize}:${sizeClass(c.size)}`);
  if (!checkResult(r, "vpc-create", cov)) return;
  const p = r.value;
  checkPlan(p, "vpc-create", cov);
  invariant(p.virtualSize <= vpc!.VPC_MAX_SECTORS * 512n, `vpc: virtual size ${p.virtualSize} above the cap`);
  invariant(
    p.virtualSize >= c.size || c.size - p.virtualSize < 512n * 16n * 255n,
    `vpc: virtual size ${p.virtualSize} far below the requested ${c.size}`,
  );
  const at = fixed ? p.fileSize - 512n : 0n;
  invariant(at >= 0n, "vpc: file shorter than a footer");
  const f = bytesAt(p, at, 512);
  invariant(new TextDecoder().decode(f.subarray(0, 8)) === "conectix", `vpc: no footer cookie at ${at}`);
  const stored = new DataView(f.buffer).getUint32(64);
  const copy = f.slice();
  copy.fill(0, 64, 68);
  invariant(vpc!.vpcChecksum(copy) === stored, "vpc: footer checksum does not match");
  invariant(
    new DataView(f.buffer).getBigUint64(48) === p.virtualSize,
    "vpc: footer current size differs from the plan",
  );
  if (!fixed) {
    const tail = bytesAt(p, p.fileSize - 512n, 512);
    invariant(tail.every((v, i) => v === f[i]), "vpc: dynamic image's trailing footer copy differs");
  }
}

function runOutput(d: Uint8Array, cov: Cov) {
  const c = common(d);
  const o: Qcow2Output.Qcow2OutputOptions = {
    clusterSize: c.clusterSize,
    refcountBits: c.refcountBits,
    compat: c.flags & 1 ? "0.10" : "1.1",
    extendedL2: (c.flags & 2) !== 0,
    lazyRefcounts: (c.flags & 4) !== 0,
    compressionType: c.flags & 8 ? "zstd" : "zlib",
  };
  const pro = qcowOutput!.qcow2OutputPrologue(o, c.size);
  if (!checkResult(pro, "qcow2-output-prologue", cov)) return;
  const start = pro.value.dataStart;
  invariant(start % c.clusterSize === 0n && start > 0n, `output: data start ${start} unaligned`);
  const cs = c.clusterSize;
  const runs: Qcow2Output.DataRun[] = [], compressed: Qcow2Output.CompressedCluster[] = [];
  let at = 24, host = start;
  while (at + 11 <= d.length && runs.length + compressed.length < 256) {
    const tag = d[at++] % 2;
    const g = BigInt(c.b.u32(at));
    if (tag === 0) {
      const n = BigInt(c.b.u32(at + 4) & 0xffff) % 64n + 1n;
      host += BigInt(c.b.u32(at + 6) & 0xff) * cs;
      runs.push({ guestCluster: g, count: n, hostOffset: host });
      host += n * cs;
      at += 10;
    } else {
      const len = BigInt(c.b.u32(at + 4) & 0xffff) % (2n * cs) + 1n;
      compressed.push({ guestCluster: g, hostOffset: host, length: len });
      host += len;
      at += 6;
    }
  }
  const dataEnd = host + BigInt(c.b.u32(12) & 0xffff);
  cov.hit(`output:runs:${sizeClass(BigInt(runs.length))}:${sizeClass(BigInt(compressed.length))}`);
  const r = qcowOutput!.qcow2OutputFinish(o, c.size, dataEnd, runs, compressed);
  if (!checkResult(r, "qcow2-output", cov)) return;
  checkPlan(r.value, "qcow2-output", cov);
  invariant(
    r.value.fileSize >= dataEnd,
    `output: file size ${r.value.fileSize} below the data end ${dataEnd}`,
  );
  for (const p of r.value.patches) {
    const end = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
    invariant(
      p.offset >= dataEnd || end <= start,
      `output: metadata patch [${p.offset}, ${end}) inside the data area`,
    );
  }
  reparseQcow2(
    r.value,
    { version: o.compat === "0.10" ? 2 : 3, clusterSize: cs, size: c.size, refcountBits: o.refcountBits },
    "qcow2-output",
    cov,
  );
}

function runRaw(d: Uint8Array, cov: Cov) {
  const c = common(d);
  const r = raw!.rawCreatePlan(c.size, c.preallocation);
  cov.hit(`raw:${c.preallocation}:${sizeClass(c.size)}`);
  if (!checkResult(r, "raw-create", cov)) return;
  checkPlan(r.value, "raw-create", cov);
  invariant(
    r.value.fileSize >= c.size && r.value.fileSize - c.size < 512n && r.value.fileSize % 512n === 0n,
    `raw: file size ${r.value.fileSize} for size ${c.size}`,
  );
}

function runVhdx(d: Uint8Array, cov: Cov) {
  const c = common(d);
  const guid = (at: number) => {
    const g = new Uint8Array(16);
    g.set(d.subarray(at, at + 16));
    return g;
  };
  const opts: VhdxCreate.VhdxCreateOptions = {
    size: c.size,
    logSize: c.flags & 4 ? BigInt(c.b.u32(20)) : undefined,
    blockSize: c.flags & 8 ? BigInt(c.b.u32(12)) : undefined,
    subformat: c.flags & 64 ? "fixed" : "dynamic",
    blockStateZero: (c.flags & 128) === 0,
  };
  const seq = c.b.u32(16);
  cov.hit(
    `vhdx:${opts.subformat}:${sizeClass(c.size)}:${opts.logSize !== undefined}:${
      opts.blockSize !== undefined
    }`,
  );
  const r = vhdx!.planVhdxCreate(opts, {
    sequenceNumber: seq,
    fileWriteGuid: guid(24),
    dataWriteGuid: guid(40),
    page83Guid: guid(56),
  });
  if (!checkResult(r, "vhdx-create", cov)) return;
  const p = r.value;
  checkPlan(p, "vhdx-create", cov);
  invariant(
    p.layout.fileSize <= p.fileSize,
    `vhdx: layout file size ${p.layout.fileSize} > plan ${p.fileSize}`,
  );
  invariant(p.layout.virtualSize >= c.size, `vhdx: virtual size ${p.layout.virtualSize} below ${c.size}`);
  const id = bytesAt(p, 0n, 8);
  invariant(new TextDecoder().decode(id) === "vhdxfile", "vhdx: no file identifier");
  const h1 = bytesAt(p, 0x10000n, 16), h2 = bytesAt(p, 0x20000n, 16);
  for (const h of [h1, h2]) {
    invariant(new TextDecoder().decode(h.subarray(0, 4)) === "head", "vhdx: header signature");
  }
  const s1 = new DataView(h1.buffer).getBigUint64(8, true),
    s2 = new DataView(h2.buffer).getBigUint64(8, true);
  // Seed 002 bug B's class: sequence numbers are 64-bit; +1 must not wrap at 32.
  invariant(s2 === s1 + 1n, `vhdx: header sequence numbers ${s1} and ${s2}`);
  invariant(p.layout.batOffset + p.layout.batLength <= p.fileSize, "vhdx: BAT past the file end");
}

const emitters: ((d: Uint8Array, cov: Cov) => void)[] = [];
if (qcowCreate) emitters.push(runQcow2Create);
if (vpc) emitters.push(runVpc);
if (qcowOutput) emitters.push(runOutput);
if (raw) emitters.push(runRaw);
if (vhdx) emitters.push(runVhdx);

export const target: TsTarget = {
  description: `create planners and the convert output emitter (${emitters.length} present)`,
  run(data, cov) {
    if (!emitters.length || data.length < 24) return;
    emitters[data[0] % emitters.length](data, cov);
  },
};
