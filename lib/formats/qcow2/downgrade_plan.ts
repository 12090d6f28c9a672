// The qcow2 downgrade planner (amend -o compat=0.10): a pure function from
// the header model and the guest's downgrade scan (resize_scan with arg[1]
// bit 1: refcount runs, every zero-flagged L2 entry in
// qcow2_expand_zero_clusters' visiting order, each snapshot's disk and VM
// state size) to the writes qemu 7.2's qcow2_downgrade makes: its refusals
// in its order and words, the zero clusters expanded (a plain zero cluster
// of an image without a backing file becomes unallocated; a preallocated
// one has its cluster zeroed and the flag dropped, OFLAG_COPIED set when the
// L2 table's refcount is 1), the feature bits cleared and the header
// rewritten as a version 2 header (planHeaderRewrite).
//
// A plain zero cluster of an image with a backing file gets a new cluster
// of zeroes (qcow2_alloc_clusters, first fit, on the shared refcount model:
// new refcount blocks hooked into the table, a full table moved by
// qcow2_refcount_area); in an L2 table a snapshot shares, qemu gives the new
// cluster the table's refcount.
//
// Crash order (each step synced before the next): 0. a moved refcount
// table: its blocks (every count raised so far) and the table, the entries
// hooked into the table it replaces, the header's refcount-table fields
// (the image stays a valid v3 image); 1. the data clusters of zero
// clusters are zeroed (nothing points at them as data yet: their entries
// still read as zero) and the refcount blocks with the raised counts
// written; then new blocks' entries in the table; 2. the L2 entries are
// rewritten (a v3 image reads the same whichever entries were reached);
// 3. the header, last, switches the image to version 2. Refcounts only
// rise, before anything points at the new clusters: a crash leaves a valid
// v3 image with at most leaked clusters.
//
// What instar does not do yet is refused before anything is written: a
// zstd compression type, and what planHeaderRewrite refuses (bitmaps,
// autoclear or unknown compatible bits, a dirty image).
import { type FilePlan, MAX_PATCHES, type Patch } from "../plan.ts";
import type { Qcow2Model } from "./model.ts";
import { planHeaderRewrite } from "./rebase_plan.ts";
import { RefcountError, RefcountModel, type RefRun } from "./refcounts.ts";

const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;
const ZERO_FLAG = 1n;
const UINT32_MAX = 0xffffffffn;
const UINT64_MAX = (1n << 64n) - 1n;
const INCOMPAT_DIRTY = 1n;
const INCOMPAT_COMPRESSION = 8n;
/** Header fields: refcount_table_offset (u64) then refcount_table_clusters (u32). */
const HDR_REFTABLE = 48n;

function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v & UINT64_MAX);
  return b;
}

/** One zero-flagged L2 entry: the file offset of the entry and its raw value. */
export interface ZeroEntry {
  at: bigint;
  value: bigint;
}

/** One internal snapshot's sizes (diskSize undefined: not recorded, the image's size). */
export interface SnapSizes {
  diskSize?: bigint;
  vmStateSize: bigint;
  /** Entries of its L1 table (qemu's progress counts them). */
  l1Size?: bigint;
}

export interface DowngradeScan {
  clusterBits: number;
  refcountOrder: number;
  reftableOffset: bigint;
  reftableClusters: number;
  /** Refcount-table entries with an offset (raw values). */
  reftable: Map<number, bigint>;
  fileSize: bigint;
  /** Non-zero refcounts, ascending. */
  runs: RefRun[];
  zeros: ZeroEntry[];
  snapshots: SnapSizes[];
  hasBacking: boolean;
}

export type DowngradeResult =
  | { kind: "error"; message: string }
  | { kind: "refuse"; why: string }
  /** l1Entries: the L1 entries qemu's walk visits (its progress counts them). */
  | { kind: "write"; steps: FilePlan[]; l1Entries: bigint };

/** The refusals qcow2_downgrade makes before it reads any L2 table (its order, its words). */
export function downgradeError(m: Qcow2Model, snaps: SnapSizes[]): DowngradeResult | undefined {
  if (m.refcountBits !== 16) return { kind: "error", message: "compat=0.10 requires refcount_bits=16" };
  if (m.hasDataFileBit) return { kind: "error", message: "Cannot downgrade an image with a data file" };
  for (const s of snaps) {
    if (s.vmStateSize > UINT32_MAX || (s.diskSize ?? m.virtualSize) !== m.virtualSize) {
      return { kind: "error", message: "Internal snapshots prevent downgrade of image" };
    }
  }
  if (m.dirty) {
    return {
      kind: "refuse",
      why: "the image is dirty (qemu would repair it on opening it read-write)",
    };
  }
  const rest = m.incompatibleFeatures & ~INCOMPAT_DIRTY & ~INCOMPAT_COMPRESSION;
  if (rest !== 0n) {
    return {
      kind: "error",
      message: `Cannot downgrade an image with incompatible features 0x${rest.toString(16)} set`,
    };
  }
  if ((m.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n) {
    return { kind: "refuse", why: "instar does not downgrade images with a zstd compression type yet" };
  }
  return undefined;
}

function refcountOf(runs: RefRun[], cluster: bigint): bigint {
  let lo = 0, hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const r = runs[mid];
    if (cluster < r.start) hi = mid;
    else if (cluster >= r.start + r.count) lo = mid + 1;
    else return r.refcount;
  }
  return 0n;
}

/** Splits patches into steps of at most MAX_PATCHES each (same order). */
function chunk(patches: Patch[], fileSize: bigint): FilePlan[] {
  const out: FilePlan[] = [];
  for (let i = 0; i < patches.length; i += MAX_PATCHES) {
    out.push({ patches: patches.slice(i, i + MAX_PATCHES), fileSize });
  }
  return out;
}

/** qcow2_downgrade to version 2 of a v3 image, as bounded steps. */
export function planQcow2Downgrade(m: Qcow2Model, scan: DowngradeScan): DowngradeResult {
  const early = downgradeError(m, scan.snapshots);
  if (early) return early;
  const cs = 1n << BigInt(scan.clusterBits);
  const end = scan.fileSize;
  // The active pass rewrites shared L2 tables in place, so a snapshot's
  // later visit of the same entry finds it expanded already: first visit wins.
  // qcow2_alloc_clusters for the plain zero clusters of a backed image: the
  // shared model replays qemu's first fit, new refcount blocks (hooked into
  // the table) and a moved refcount table (qcow2_refcount_area: its blocks
  // and table, the entries hooked into the table it replaces and the
  // header's refcount-table fields, each a step written before anything
  // else; the old table freed, not discarded).
  let model: RefcountModel | undefined;
  const moves: Patch[][] = [];
  const blockWrites = (m: RefcountModel): Patch[] =>
    m.takeDirty().map((t) => ({ kind: "write" as const, offset: m.table.get(t)!, bytes: m.blockBytes(t) }));
  const allocate = (l2Ref: bigint): bigint | undefined => {
    if (!model) {
      const table = new Map<bigint, bigint>();
      for (const [i, v] of scan.reftable) table.set(BigInt(i), v & 0xfffffffffffffe00n);
      const m = model = new RefcountModel({
        clusterBits: scan.clusterBits,
        refcountOrder: scan.refcountOrder,
        tableOffset: scan.reftableOffset,
        tableClusters: BigInt(scan.reftableClusters),
        table,
        runs: scan.runs,
      });
      m.listener = {
        tableMoved: (move) => {
          moves.push([...blockWrites(m), { kind: "write", offset: m.tableOffset, bytes: m.tableBytes() }]);
          moves.push(move.oldHookups.map((t) => ({
            kind: "write" as const,
            offset: move.oldOffset + t * 8n,
            bytes: be64(move.oldEntries.get(t)!),
          })));
          const f = new Uint8Array(12);
          new DataView(f.buffer).setBigUint64(0, m.tableOffset);
          new DataView(f.buffer).setUint32(8, Number(m.tableClusters));
          moves.push([{ kind: "write", offset: HDR_REFTABLE, bytes: f }]);
        },
      };
    }
    try {
      const c = model.alloc(1n);
      const at = c << BigInt(scan.clusterBits);
      // qemu's overlap check: never over the header, the refcount table or a block
      const cs = 1n << BigInt(scan.clusterBits);
      const rt = model.tableOffset, rtEnd = rt + model.tableClusters * cs;
      if (c === 0n || (at < rtEnd && rt < at + cs) || [...model.table.values()].includes(at)) {
        return undefined;
      }
      // A shared L2 table: qemu gives the new cluster the table's refcount.
      if (l2Ref > 1n) model.set(c, l2Ref);
      return at;
    } catch (e) {
      if (e instanceof RefcountError) return undefined;
      throw e;
    }
  };
  const seen = new Set<bigint>();
  const zeroClusters = new Set<bigint>();
  let newEnd = end;
  const entries: { at: bigint; value: bigint }[] = [];
  for (const z of scan.zeros) {
    if (seen.has(z.at)) continue;
    seen.add(z.at);
    if ((z.value & ZERO_FLAG) === 0n || (z.value & COMPRESSED) !== 0n) {
      return { kind: "refuse", why: "the scan reported an L2 entry that is not a zero cluster" };
    }
    if (z.at < 0n || z.at + 8n > end || z.at % 8n !== 0n) {
      return { kind: "refuse", why: "an L2 entry lies outside the file (the image is corrupt)" };
    }
    let host = z.value & L2E_OFFSET_MASK;
    const l2Ref = refcountOf(scan.runs, z.at >> BigInt(scan.clusterBits));
    if (host === 0n) {
      if (!scan.hasBacking) {
        entries.push({ at: z.at, value: 0n });
        continue;
      }
      if (l2Ref === 0n) {
        return { kind: "refuse", why: "an L2 table has no refcount (the image is corrupt)" };
      }
      const got = allocate(l2Ref);
      if (got === undefined) {
        return {
          kind: "refuse",
          why: "an allocation for a zero cluster would overwrite metadata or fail " +
            "(the image is corrupt; run qemu-img check)",
        };
      }
      host = got;
      newEnd = host + cs > newEnd ? host + cs : newEnd;
    } else if (host % cs !== 0n || host + cs > end) {
      return { kind: "refuse", why: "a zero cluster lies outside the file (the image is corrupt)" };
    }
    zeroClusters.add(host);
    entries.push({ at: z.at, value: l2Ref === 1n ? host | COPIED : host });
  }
  // An entry must not lie inside a cluster this plan zeroes (that would be
  // an L2 table used as data: corrupt).
  for (const e of entries) {
    if (zeroClusters.has(e.at - (e.at % cs))) {
      return { kind: "refuse", why: "an L2 table is also used as a data cluster (the image is corrupt)" };
    }
  }
  // The header names the refcount table where it stands after any move.
  const hm: Qcow2Model = model && model.tableOffset !== scan.reftableOffset
    ? {
      ...m,
      layout: {
        ...m.layout,
        refcountTableOffset: model.tableOffset,
        refcountTableClusters: Number(model.tableClusters),
      },
    }
    : m;
  const header = planHeaderRewrite(hm, {
    version: 2,
    lazyRefcounts: false,
    backingFile: m.backingFile,
    backingFormat: m.backingFormat,
  }, end);
  if (!header.ok) {
    return header.error.kind === "unsupported"
      ? { kind: "refuse", why: header.error.message }
      : { kind: "error", message: `Failed to update the image header: ${header.error.message}` };
  }
  const hdrEnd = BigInt((header.value.patches[0] as { bytes: Uint8Array }).bytes.length);
  for (const e of entries) {
    if (e.at < hdrEnd) {
      return { kind: "refuse", why: "an L2 entry lies inside the header (the image is corrupt)" };
    }
  }
  for (const c of zeroClusters) {
    if (c < hdrEnd) {
      return { kind: "refuse", why: "a zero cluster lies inside the header (the image is corrupt)" };
    }
  }

  // 1. zero the preallocated and the newly allocated clusters (adjacent ones
  // merged) and raise the refcounts of the new ones; then hook new refcount
  // blocks into the table
  const zp: Patch[] = [];
  const refWrites: Patch[] = [];
  const hookups: Patch[] = [];
  const moved = moves.flat();
  if (model) {
    refWrites.push(...blockWrites(model));
    for (const t of model.takeHookups()) {
      hookups.push({ kind: "write", offset: model.tableOffset + t * 8n, bytes: be64(model.table.get(t)!) });
    }
    // (A table qemu moved away from may be reused for a zero cluster: its
    // hookups are written before the cluster is zeroed, as qemu orders them.)
    for (const p of [...moved, ...refWrites]) {
      if (p.offset === HDR_REFTABLE) continue; // a moved table's header fields
      const current = refWrites.includes(p) || [...model.table.values()].includes(p.offset);
      if (p.offset < hdrEnd || (current && zeroClusters.has(p.offset - (p.offset % cs)))) {
        return { kind: "refuse", why: "a refcount block lies outside the file (the image is corrupt)" };
      }
      const e = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : 0n);
      if (e > newEnd) newEnd = e;
    }
  }
  for (const c of [...zeroClusters].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    const last = zp[zp.length - 1];
    if (last && last.kind === "zero" && last.offset + last.length === c) last.length += cs;
    else zp.push({ kind: "zero", offset: c, length: cs });
  }
  // 2. the L2 entries (adjacent ones in one write)
  entries.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  const ep: Patch[] = [];
  let run: { offset: bigint; values: bigint[] } | undefined;
  const flush = () => {
    if (!run) return;
    const bytes = new Uint8Array(run.values.length * 8);
    const v = new DataView(bytes.buffer);
    run.values.forEach((x, i) => v.setBigUint64(i * 8, x & UINT64_MAX));
    ep.push({ kind: "write", offset: run.offset, bytes });
    run = undefined;
  };
  for (const e of entries) {
    if (run && run.offset + BigInt(run.values.length * 8) === e.at) run.values.push(e.value);
    else {
      flush();
      run = { offset: e.at, values: [e.value] };
    }
  }
  flush();
  // 3. the version 2 header
  let l1Entries = BigInt(m.layout.l1Size);
  for (const s of scan.snapshots) l1Entries += s.l1Size ?? 0n;
  return {
    kind: "write",
    steps: [
      ...moves.filter((p) => p.length > 0).flatMap((p) => chunk(p, newEnd)),
      ...chunk([...zp, ...refWrites], newEnd),
      ...chunk(hookups, newEnd),
      ...chunk(ep, newEnd),
      {
        ...header.value,
        fileSize: newEnd,
      },
    ],
    l1Entries,
  };
}
