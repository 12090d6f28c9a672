// Plans the writes of qemu-img check -r for qcow2: compare_refcounts with
// fix (qcow2-refcount.c) sets each repaired refcount to the reference count
// calculate_refcounts found, a refcount that drops to zero discards its
// cluster (update_refcount with QCOW2_DISCARD_ALWAYS), the dirty bit is
// cleared (qcow2_mark_clean when the read-write image is closed), and a
// repair that leaves no corruption clears the corrupt bit too
// (qcow2_mark_consistent). check_oflag_copied then flips the OFLAG_COPIED
// bit of L1 and L2 entries whose refcount says otherwise (qcow2_write_l1_entry
// and the L2 table written back: only those bits change). Pure: the guest
// reported where each entry lives (REPAIR_REFCOUNT, REPAIR_OFLAG), the host
// bounds it here.
//
// Crash order, one synced step each: (1) the refcount entries; (2) the
// discards of clusters whose refcount is now zero, after nothing counts
// them; (3) the OFLAG_COPIED flags, after the refcounts they follow, as
// qemu writes them (a flag alone never loses data: a set flag only allows
// in-place writes to a cluster whose refcount is now 1); (4) the header's
// incompatible-feature bits, last, so an interrupted repair leaves the
// image marked as it was, and a second check finds only what is left to
// repair.
import { fail, type FilePlan, MAX_PATCHES, ok, type Patch, type PlanResult } from "../plan.ts";

/** One refcount the repair rewrites. */
export interface RefcountFix {
  cluster: bigint;
  /** File offset of the refcount block holding the entry. */
  refblock: bigint;
  /** Widths below 8 bits: the byte holding the entry, as read. */
  oldByte: number;
  /** The refcount now and the one it gets (the reference count). */
  from: bigint;
  to: bigint;
}

/** One L1 or L2 entry whose OFLAG_COPIED bit (bit 63) the repair flips. */
export interface OflagFix {
  /** File offset of the entry. */
  offset: bigint;
  /** The entry as read, and as written. */
  from: bigint;
  to: bigint;
}

/** One L2 entry -r all rewrites as a zero cluster (check_refcounts_l2 on an
 * unaligned preallocated cluster): QCOW_OFLAG_ZERO, or 0 with extended L2
 * entries (the allocation bitmap, left as it is, already says zero). */
export interface ZeroFix {
  /** File offset of the entry. */
  offset: bigint;
  /** The entry written: 0 or 1 (QCOW_OFLAG_ZERO). */
  to: bigint;
}

const COPIED = 1n << 63n;

/**
 * The zero-cluster entries of check -r all, one synced step, applied first:
 * qemu writes them while counting references, before any refcount repair,
 * and the entry then references nothing (a crash leaves at most a leak).
 * Entries are 8-aligned, past the header cluster, inside the file, each once.
 */
export function planEntryZeroes(
  clusterBits: number,
  fileSize: bigint,
  zeroes: ZeroFix[],
): PlanResult<FilePlan[]> {
  if (clusterBits < 9 || clusterBits > 21) return fail("invalid_option", "cluster size out of range");
  if (fileSize < 0n || fileSize > (1n << 63n) - 1n) return fail("invalid_size", "file size out of range");
  if (zeroes.length > MAX_PATCHES) return fail("invalid_option", "too many L2 entry repairs");
  const cs = 1n << BigInt(clusterBits);
  const seen = new Set<bigint>();
  const writes: { offset: bigint; bytes: Uint8Array }[] = [];
  for (const z of zeroes) {
    if (
      z.offset < cs || z.offset % 8n !== 0n || z.offset + 8n > fileSize || seen.has(z.offset) ||
      (z.to !== 0n && z.to !== 1n)
    ) {
      return fail("invalid_option", `L2 entry repair at ${z.offset} out of range`);
    }
    seen.add(z.offset);
    writes.push({ offset: z.offset, bytes: bigEndian(z.to, 8) });
  }
  writes.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  return ok(steps(joinWrites(writes), fileSize));
}

export interface RepairInput {
  clusterBits: number;
  refcountBits: number;
  fileSize: bigint;
  fixes: RefcountFix[];
  /** Flags to flip after the refcounts (maybe none). */
  oflags?: OflagFix[];
  /** Entries planEntryZeroes rewrites: no flag repair may touch them. */
  zeroed?: bigint[];
  /** The header's incompatible features, written back with `clear` cleared. */
  header?: { incompatible: bigint; clear: bigint };
}

/** Offset of the incompatible_features field of a version 3 header. */
const INCOMPAT_OFFSET = 72n;

function bigEndian(v: bigint, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = bytes - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** Joins writes that touch end to end; `sorted` is ordered by offset. */
function joinWrites(sorted: { offset: bigint; bytes: Uint8Array }[]): Patch[] {
  const out: Patch[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i + 1, end = sorted[i].offset + BigInt(sorted[i].bytes.length);
    while (j < sorted.length && sorted[j].offset === end) end += BigInt(sorted[j++].bytes.length);
    const b = new Uint8Array(Number(end - sorted[i].offset));
    for (let k = i; k < j; k++) b.set(sorted[k].bytes, Number(sorted[k].offset - sorted[i].offset));
    out.push({ kind: "write", offset: sorted[i].offset, bytes: b });
    i = j;
  }
  return out;
}

/** Cuts a patch list into steps the applier accepts (MAX_PATCHES each). */
function steps(patches: Patch[], fileSize: bigint): FilePlan[] {
  const out: FilePlan[] = [];
  for (let i = 0; i < patches.length; i += MAX_PATCHES) {
    out.push({ patches: patches.slice(i, i + MAX_PATCHES), fileSize });
  }
  return out;
}

export function planQcow2Repair(x: RepairInput): PlanResult<FilePlan[]> {
  const { clusterBits, refcountBits: bits, fileSize } = x;
  if (clusterBits < 9 || clusterBits > 21) return fail("invalid_option", "cluster size out of range");
  if (![1, 2, 4, 8, 16, 32, 64].includes(bits)) return fail("invalid_option", "refcount width out of range");
  if (fileSize < 0n || fileSize > (1n << 63n) - 1n) return fail("invalid_size", "file size out of range");
  const cs = 1n << BigInt(clusterBits);
  const perBlock = (cs * 8n) / BigInt(bits);
  const max = (1n << BigInt(bits)) - 1n;
  // References may reach past the end of the file (qemu's refcount array grows
  // with them); the entry itself must lie in a refcount block in the file.
  const nbClusters = ((1n << 63n) - 1n) / cs;
  const seen = new Set<bigint>();
  // refblock index -> refblock offset: one block per index, one index per block
  const blockOf = new Map<bigint, bigint>(), indexOf = new Map<bigint, bigint>();
  const bytes = new Map<bigint, number>(); // sub-byte widths: file offset -> new byte
  const writes: { offset: bigint; bytes: Uint8Array }[] = [];
  const freed: bigint[] = [];
  for (const f of x.fixes) {
    if (f.cluster < 0n || f.cluster >= nbClusters || seen.has(f.cluster)) {
      return fail("invalid_option", `refcount repair of cluster ${f.cluster} out of range`);
    }
    seen.add(f.cluster);
    if (f.from === f.to || f.from === 0n || f.from > max || f.to < 0n || f.to > max) {
      return fail("invalid_option", `refcount repair of cluster ${f.cluster} out of range`);
    }
    if (f.refblock < cs || f.refblock % cs !== 0n || f.refblock + cs > fileSize) {
      return fail("invalid_option", `refcount block at ${f.refblock} out of range`);
    }
    const idx = f.cluster / perBlock;
    if ((blockOf.get(idx) ?? f.refblock) !== f.refblock || (indexOf.get(f.refblock) ?? idx) !== idx) {
      return fail("invalid_option", `refcount block at ${f.refblock} named inconsistently`);
    }
    blockOf.set(idx, f.refblock);
    indexOf.set(f.refblock, idx);
    const bit = (f.cluster % perBlock) * BigInt(bits);
    const at = f.refblock + bit / 8n;
    if (bits >= 8) {
      writes.push({ offset: at, bytes: bigEndian(f.to, bits / 8) });
    } else {
      // Entries share bytes, least significant bits first (qemu's get_refcount_ro0..2).
      if (!Number.isInteger(f.oldByte) || f.oldByte < 0 || f.oldByte > 255) {
        return fail("invalid_option", `refcount byte of cluster ${f.cluster} out of range`);
      }
      const shift = Number(bit % 8n), mask = ((1 << bits) - 1) << shift;
      const cur = bytes.get(at) ?? f.oldByte;
      bytes.set(at, (cur & ~mask) | ((Number(f.to) << shift) & mask));
    }
    if (f.to === 0n) freed.push(f.cluster);
  }
  for (const [offset, b] of bytes) writes.push({ offset, bytes: Uint8Array.of(b) });
  writes.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  // A freed cluster is never a refcount block the repair writes into.
  for (const c of freed) {
    if (indexOf.has(c * cs)) return fail("invalid_option", `cluster ${c} is a refcount block being repaired`);
  }
  freed.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const discards: Patch[] = [];
  for (let i = 0; i < freed.length;) {
    let j = i + 1;
    while (j < freed.length && freed[j] === freed[j - 1] + 1n) j++;
    const start = freed[i] * cs;
    const end = (freed[j - 1] + 1n) * cs < fileSize ? (freed[j - 1] + 1n) * cs : fileSize;
    if (start < end) discards.push({ kind: "zero", offset: start, length: end - start });
    i = j;
  }
  // Entries: 8-aligned, past the header cluster, inside the file, only bit 63
  // changing, each once, never in a refcount block written or a cluster freed.
  const flagWrites: { offset: bigint; bytes: Uint8Array }[] = [];
  const flagAt = new Set<bigint>(x.zeroed ?? []), freedSet = new Set(freed);
  for (const o of x.oflags ?? []) {
    if (
      o.offset < cs || o.offset % 8n !== 0n || o.offset + 8n > fileSize || flagAt.has(o.offset) ||
      o.from < 0n || o.from >= 1n << 64n || (o.from ^ o.to) !== COPIED ||
      indexOf.has(o.offset / cs * cs) || freedSet.has(o.offset / cs)
    ) {
      return fail("invalid_option", `OFLAG_COPIED repair at ${o.offset} out of range`);
    }
    flagAt.add(o.offset);
    flagWrites.push({ offset: o.offset, bytes: bigEndian(o.to, 8) });
  }
  flagWrites.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  const plan = [
    ...steps(joinWrites(writes), fileSize),
    ...steps(discards, fileSize),
    ...steps(joinWrites(flagWrites), fileSize),
  ];
  if (x.header && (x.header.incompatible & x.header.clear) !== 0n) {
    const v = x.header.incompatible & ~x.header.clear;
    if (v < 0n || v >= 1n << 64n || fileSize < INCOMPAT_OFFSET + 8n) {
      return fail("invalid_option", "header features out of range");
    }
    plan.push({ patches: [{ kind: "write", offset: INCOMPAT_OFFSET, bytes: bigEndian(v, 8) }], fileSize });
  }
  return ok(plan);
}
