// Fuzz target repair_planner: check -r's refcount repair planner
// (lib/formats/qcow2/repair_plan.ts) on what a hostile guest could report.
//
// Input:
//   0      cluster_bits = 9 + (b % 13)
//   1      refcount width = 2^(b % 8) (2^7 = 128: invalid)
//   2      flags: bit 0 header present, bit 1 clear the dirty bit, bit 2 the corrupt bit,
//          bit 4 rebuild mode, bit 5 zero-entry mode (below),
//          bit 3 every second 25-byte record is an OFLAG_COPIED fix (below)
//   3-10   file size (u64 LE)          11-18 incompatible features (u64 LE)
//   19..   fixes, 25 bytes each: cluster (u64 LE), refcount block offset (u64 LE),
//          old byte (u8), refcount now (u32 LE), refcount after (u32 LE)
//          or, as an OFLAG_COPIED fix: entry offset (u64 LE), entry now (u64 LE),
//          mode (u8: bit 0 flips bit 63 only, else the next u32 LE is XORed in too)
//
// Invariants on every plan (seed 003's list, and the repair's own):
//   1. every step passes checkPlan (inside the file, no overlap, bounded);
//   2. entry writes lie inside a refcount block some fix named, and for
//      widths of 8 bits and more hold exactly the new refcount;
//   3. discards cover only clusters whose new refcount is zero, never a
//      refcount block written;
//   4. the header write, if any, is the last step and only the
//      incompatible_features field, with only dirty/corrupt bits cleared;
//   5. flag writes come after every refcount write and discard, cover only
//      named entries (8-aligned, past the header cluster), each holding its
//      entry with only bit 63 flipped, never in a refcount block written or
//      a cluster freed; every flag fix is written exactly once.
import { type FilePlan } from "../../lib/formats/plan.ts";
import type * as RepairPlan from "../../lib/formats/qcow2/repair_plan.ts";
import type * as RebuildPlan from "../../lib/formats/qcow2/rebuild_plan.ts";
import { Bytes, type Cov, invariant, sizeClass, type TsTarget } from "../engine/ts_target.ts";
import { checkPlan, checkResult, optional } from "../engine/plan_checks.ts";

const COPIED = 1n << 63n;
const mod = await optional<typeof RepairPlan>("../../lib/formats/qcow2/repair_plan.ts");
const rebuildMod = await optional<typeof RebuildPlan>("../../lib/formats/qcow2/rebuild_plan.ts");

/** Big-endian unsigned value of `bytes`. */
function be(bytes: Uint8Array, at: number, n: number): bigint {
  let v = 0n;
  for (let k = 0; k < n; k++) v = (v << 8n) | BigInt(bytes[at + k]);
  return v;
}

// Rebuild mode (flags bit 4): check -r all's refcount structure rebuild
// (lib/formats/qcow2/rebuild_plan.ts planQcow2Rebuild).
//   0 cluster_bits = 9 + (b % 5)   1 refcount width = 2^(b % 8)   3-6 nb_clusters = 1 + (u32 % 20000)
//   19.. 8-byte records: byte 0 bit 0 clear: a reference run (gap u16, count u16 % 600 + 1,
//   refcount u8; a gap of 0xffff puts it before the last run's end); set: an old structure
//   cluster (cluster u16, count u8, refcount u8 % 2: 0 = a guarded, uncounted block).
// Invariants: every step passes checkPlan; the new blocks and table lie in clusters no
// reference and no guarded block uses; the header switch (12 bytes at 48) comes after them and
// names the table written; the table names each block written once; every block holds, for
// each of its clusters, the references less the old structures, plus one for each new block
// and the table; every cluster with a count lies in a block the table names; discards come
// last and cover only clusters left at zero, never a new structure; each leak line goes from
// the rebuilt count down to that count.
function runRebuild(d: Uint8Array, cov: Cov): void {
  if (!rebuildMod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (b.u8(0) % 5), refcountBits = 1 << (b.u8(1) % 8);
  const nb = 1 + (b.u32(3) % 20000);
  const cs = 1 << clusterBits;
  const runs: RebuildPlan.RebuildInput["runs"] = [], oldMeta: RebuildPlan.RebuildInput["oldMeta"] = [];
  let end = 0;
  for (let at = 19; at + 8 <= d.length && runs.length + oldMeta.length < 4096; at += 8) {
    if ((b.u8(at) & 1) === 0) {
      const gap = b.u8(at + 1) | (b.u8(at + 2) << 8);
      const start = gap === 0xffff ? Math.max(0, end - 1) : end + gap;
      const count = ((b.u8(at + 3) | (b.u8(at + 4) << 8)) % 600) + 1;
      runs.push({ start: BigInt(start), count: BigInt(count), refcount: BigInt(b.u8(at + 5)) });
      end = start + count;
    } else {
      const start = b.u8(at + 1) | (b.u8(at + 2) << 8);
      oldMeta.push({ start: BigInt(start), count: BigInt(b.u8(at + 3)), refcount: BigInt(b.u8(at + 4) % 2) });
    }
  }
  const fileSize = BigInt(nb) * BigInt(cs) - BigInt(b.u8(7) % 2) * 512n;
  cov.hit(`rebuild:bits:${refcountBits}:cb:${clusterBits}:runs:${sizeClass(BigInt(runs.length))}`);
  const r = rebuildMod.planQcow2Rebuild({
    clusterBits,
    refcountBits,
    fileSize,
    nbClusters: BigInt(nb),
    runs,
    oldMeta,
  });
  if (!checkResult(r, "rebuild", cov)) return;
  const plan = r.value;
  // the expected counts: references less the old structures
  const refs = new Map<number, bigint>(), guarded = new Set<number>();
  for (const x of runs) {
    for (let c = Number(x.start); c < Number(x.start + x.count); c++) refs.set(c, x.refcount);
  }
  for (const m of oldMeta) {
    for (let c = Number(m.start); c < Number(m.start + m.count); c++) {
      if (m.refcount === 0n) guarded.add(c);
      else refs.set(c, refs.get(c)! - 1n);
    }
  }
  const switchAt = plan.steps.findIndex((s) => s.patches.some((p) => p.offset === 48n));
  invariant(switchAt > 0, "rebuild: no header switch after the new structures");
  const sw = plan.steps[switchAt].patches;
  invariant(
    sw.length === 1 && sw[0].kind === "write" && sw[0].bytes.length === 12,
    "rebuild: header switch shape",
  );
  const rtOffset = be(sw[0].bytes, 0, 8), rtClusters = Number(be(sw[0].bytes, 8, 4));
  invariant(
    rtOffset === plan.reftableOffset && rtClusters === plan.reftableClusters,
    "rebuild: switch names another table",
  );
  const writes = new Map<bigint, Uint8Array>();
  for (const [i, s] of plan.steps.entries()) {
    checkPlan(s, "rebuild", cov);
    for (const p of s.patches) {
      if (i < switchAt) {
        invariant(
          p.kind === "write" && p.offset % BigInt(cs) === 0n,
          "rebuild: a new structure off a cluster",
        );
        writes.set(p.offset, p.bytes);
      } else if (i > switchAt) {
        invariant(p.kind === "zero", `rebuild: a ${p.kind} after the switch`);
      }
    }
  }
  const table = writes.get(rtOffset);
  invariant(table !== undefined && table.length === rtClusters * cs, "rebuild: the table is not written");
  const newClusters = new Set<number>();
  for (let k = 0; k < rtClusters; k++) newClusters.add(Number(rtOffset / BigInt(cs)) + k);
  const perBlock = (cs * 8) / refcountBits;
  const blocks = new Map<number, Uint8Array>();
  for (let idx = 0; idx < table.length / 8; idx++) {
    const off = be(table, idx * 8, 8);
    if (!off) continue;
    const blk = writes.get(off);
    invariant(
      blk !== undefined && blk.length === cs && off !== rtOffset,
      `rebuild: table entry ${idx} names no block`,
    );
    const c = Number(off / BigInt(cs));
    invariant(!newClusters.has(c), `rebuild: block ${c} named twice`);
    newClusters.add(c);
    blocks.set(idx, blk);
  }
  invariant(writes.size === blocks.size + 1, "rebuild: a block written the table does not name");
  for (const c of newClusters) {
    invariant(!(refs.get(c) ?? 0n) && !guarded.has(c), `rebuild: new structure over used cluster ${c}`);
    refs.set(c, 1n);
  }
  for (const [c, v] of refs) {
    if (v) invariant(blocks.has(Math.floor(c / perBlock)), `rebuild: cluster ${c} has no block`);
  }
  for (const [idx, blk] of blocks) {
    for (let k = 0; k < perBlock; k++) {
      const c = idx * perBlock + k;
      const v = refcountBits >= 8 ? be(blk, (k * refcountBits) / 8, refcountBits / 8) : BigInt(
        (blk[Math.floor((k * refcountBits) / 8)] >> ((k * refcountBits) % 8)) & ((1 << refcountBits) - 1),
      );
      invariant(v === (refs.get(c) ?? 0n), `rebuild: cluster ${c} counted ${v}, not ${refs.get(c) ?? 0n}`);
    }
  }
  for (const s of plan.steps.slice(switchAt + 1)) {
    for (const p of s.patches) {
      if (p.kind !== "zero") continue;
      for (let c = Number(p.offset / BigInt(cs)); BigInt(c * cs) < p.offset + p.length; c++) {
        invariant(!(refs.get(c) ?? 0n) && !newClusters.has(c), `rebuild: discard of used cluster ${c}`);
      }
      cov.hit("rebuild:discard");
    }
  }
  for (const l of plan.leaks) {
    invariant(
      l.from > l.to && l.to === (refs.get(Number(l.cluster)) ?? 0n),
      `rebuild: leak line of ${l.cluster}`,
    );
  }
  cov.hit(`rebuild:blocks:${sizeClass(BigInt(blocks.size))}:table:${rtClusters}`);
}

// Zero-entry mode (flags bit 5): check -r all's L2 entries made zero clusters
// (planEntryZeroes), and planQcow2Repair told of them.
//   0 cluster_bits = 9 + (b % 13)   3-10 file size (u64 LE)
//   19.. 9-byte records: entry offset (u64 LE), new entry (u8; only 0 and 1 are valid)
// Invariants: every step passes checkPlan; the writes cover exactly the named
// entries, 8 bytes each holding its new entry, each once; planQcow2Repair
// refuses an OFLAG_COPIED fix of an entry made zero.
function runZeroes(d: Uint8Array, cov: Cov): void {
  if (!mod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (b.u8(0) % 13);
  const fileSize = b.u64(3) & ((1n << 63n) - 1n);
  const zeroes: RepairPlan.ZeroFix[] = [];
  for (let at = 19; at + 9 <= d.length && zeroes.length < 256; at += 9) {
    zeroes.push({ offset: b.u64(at), to: BigInt(b.u8(at + 8)) });
  }
  cov.hit(`zeroes:cb:${clusterBits}:n:${sizeClass(BigInt(zeroes.length))}`);
  const r = mod.planEntryZeroes(clusterBits, fileSize, zeroes);
  if (!checkResult(r, "zeroes", cov)) return;
  const want = new Map(zeroes.map((z) => [z.offset, z.to]));
  const seen = new Set<bigint>();
  for (const s of r.value) {
    checkPlan(s, "zeroes", cov);
    for (const p of s.patches) {
      invariant(p.kind === "write" && p.bytes.length % 8 === 0, "zeroes: not an entry write");
      for (let o = 0; o < p.bytes.length; o += 8) {
        const at = p.offset + BigInt(o),
          v = new DataView(p.bytes.buffer, p.bytes.byteOffset + o).getBigUint64(0);
        invariant(want.get(at) === v && (v === 0n || v === 1n), `zeroes: entry ${at} gets ${v}`);
        invariant(!seen.has(at), `zeroes: entry ${at} written twice`);
        seen.add(at);
      }
    }
  }
  invariant(seen.size === zeroes.length, "zeroes: an entry was not written");
  if (zeroes.length) {
    const z = zeroes[0].offset;
    const clash = mod.planQcow2Repair({
      clusterBits,
      refcountBits: 16,
      fileSize,
      fixes: [],
      oflags: [{ offset: z, from: 0n, to: COPIED }],
      zeroed: [z],
    });
    invariant(!clash.ok, "zeroes: a flag fix over an entry made zero");
    cov.hit("zeroes:clash");
  }
}

function run(d: Uint8Array, cov: Cov): void {
  if ((d[2] & 32) !== 0) return runZeroes(d, cov);
  if ((d[2] & 16) !== 0) return runRebuild(d, cov);
  if (!mod) return;
  const b = new Bytes(d);
  const clusterBits = 9 + (b.u8(0) % 13);
  const refcountBits = 1 << (b.u8(1) % 8);
  const flags = b.u8(2);
  const fileSize = b.u64(3) & ((1n << 63n) - 1n);
  const incompatible = b.u64(11);
  const fixes: RepairPlan.RefcountFix[] = [];
  const oflags: RepairPlan.OflagFix[] = [];
  for (let at = 19, k = 0; at + 25 <= d.length && fixes.length + oflags.length < 512; at += 25, k++) {
    if ((flags & 8) !== 0 && k % 2 === 1) {
      const from = b.u64(at + 8);
      const to = from ^ COPIED ^ ((b.u8(at + 16) & 1) !== 0 ? 0n : BigInt(b.u32(at + 17)));
      oflags.push({ offset: b.u64(at), from, to });
      continue;
    }
    fixes.push({
      cluster: b.u64(at),
      refblock: b.u64(at + 8),
      oldByte: b.u8(at + 16),
      from: BigInt(b.u32(at + 17)),
      to: BigInt(b.u32(at + 21)),
    });
  }
  const clear = ((flags & 2) !== 0 ? 1n : 0n) | ((flags & 4) !== 0 ? 2n : 0n);
  const header = (flags & 1) !== 0 ? { incompatible, clear } : undefined;
  cov.hit(`repair:bits:${refcountBits}:cb:${clusterBits}:fixes:${sizeClass(BigInt(fixes.length))}`);
  if (oflags.length) cov.hit(`repair:oflags:${sizeClass(BigInt(oflags.length))}`);
  const r = mod.planQcow2Repair({ clusterBits, refcountBits, fileSize, fixes, oflags, header });
  if (!checkResult(r, "repair", cov)) return;
  const steps: FilePlan[] = r.value;
  const cs = 1n << BigInt(clusterBits);
  const blocks = new Set(fixes.map((f) => f.refblock));
  const freed = new Set(fixes.filter((f) => f.to === 0n).map((f) => f.cluster));
  const flagAt = new Map(oflags.map((o) => [o.offset, o]));
  const flagsWritten = new Set<bigint>();
  let lastRefcountStep = -1, firstFlagStep = Infinity;
  for (const [i, s] of steps.entries()) {
    checkPlan(s, "repair", cov);
    for (const p of s.patches) {
      const len = p.kind === "write" ? BigInt(p.bytes.length) : p.length;
      if (p.kind === "write" && p.offset === 72n && len === 8n && header) {
        invariant(i === steps.length - 1, "repair: header write is not the last step");
        const v = new DataView(p.bytes.buffer, p.bytes.byteOffset).getBigUint64(0);
        invariant(v === (incompatible & ~clear), `repair: header features ${v}`);
        cov.hit("repair:header");
        continue;
      }
      if (p.kind === "write" && flagAt.has(p.offset) && !blocks.has(p.offset / cs * cs)) {
        invariant(len % 8n === 0n && p.offset >= cs, `repair: flag write at ${p.offset} of ${len}`);
        for (let o = 0n; o < len; o += 8n) {
          const f = flagAt.get(p.offset + o);
          invariant(f !== undefined, `repair: flag write at ${p.offset + o} not named`);
          invariant(!flagsWritten.has(f.offset), `repair: flag at ${f.offset} written twice`);
          flagsWritten.add(f.offset);
          const v = new DataView(p.bytes.buffer, p.bytes.byteOffset + Number(o)).getBigUint64(0);
          invariant(v === f.to && (f.from ^ f.to) === COPIED, `repair: flag entry ${f.offset} gets ${v}`);
          invariant(!freed.has(f.offset / cs), `repair: flag in freed cluster ${f.offset / cs}`);
        }
        firstFlagStep = Math.min(firstFlagStep, i);
        cov.hit("repair:flags");
        continue;
      }
      lastRefcountStep = i;
      if (p.kind === "write") {
        // entry writes in adjacent blocks are joined: every cluster touched is a named block
        for (let block = p.offset / cs * cs; block < p.offset + len; block += cs) {
          invariant(blocks.has(block), `repair: write at ${p.offset} off a block`);
        }
        cov.hit("repair:entries");
      } else if (p.kind === "zero") {
        for (let c = p.offset / cs; c * cs < p.offset + len; c++) {
          invariant(freed.has(c), `repair: discard of cluster ${c} not freed`);
          invariant(!blocks.has(c * cs), `repair: discard of refcount block ${c}`);
        }
        cov.hit("repair:discard");
      } else {
        invariant(false, `repair: unexpected ${p.kind} patch`);
      }
    }
  }
  invariant(flagsWritten.size === oflags.length, "repair: a flag fix was not written");
  invariant(lastRefcountStep < firstFlagStep, "repair: a refcount write after the flags");
  if (refcountBits >= 8) {
    // Each fix's entry, read back from the planned writes, holds its new refcount.
    for (const f of fixes) {
      const perBlock = (cs * 8n) / BigInt(refcountBits);
      const at = f.refblock + (f.cluster % perBlock) * BigInt(refcountBits / 8);
      const w = steps.flatMap((s) => s.patches).find((p) =>
        p.kind === "write" && p.offset <= at && at < p.offset + BigInt(p.bytes.length)
      );
      invariant(w !== undefined && w.kind === "write", `repair: no write for cluster ${f.cluster}`);
      let v = 0n;
      for (let k = 0; k < refcountBits / 8; k++) v = (v << 8n) | BigInt(w.bytes[Number(at - w.offset) + k]);
      invariant(v === f.to, `repair: cluster ${f.cluster} gets ${v}, not ${f.to}`);
    }
  }
}

export const target: TsTarget = {
  description: mod ? "check -r refcount repair planner" : "none present yet",
  run(data, cov) {
    if (data.length < 19) return;
    run(data, cov);
  },
};
