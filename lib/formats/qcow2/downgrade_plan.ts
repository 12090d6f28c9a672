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
// Crash order (each step synced before the next): 1. the data clusters of
// preallocated zero clusters are zeroed (nothing points at them as data
// yet: their entries still read as zero); 2. the L2 entries are rewritten
// (a v3 image reads the same whichever entries were reached); 3. the header,
// last, switches the image to version 2. No cluster is allocated or freed,
// so refcounts never change and a crash leaves a valid v3 image.
//
// What instar does not do yet is refused before anything is written: a
// plain zero cluster in an image with a backing file (qemu allocates a
// cluster for it), a zstd compression type, and what planHeaderRewrite
// refuses (bitmaps, autoclear or unknown compatible bits, a dirty image).
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
  // shared model replays qemu's first fit; a new refcount block or a moved
  // refcount table is refused (not replayed here yet).
  let model: RefcountModel | undefined, grew = false;
  const allocate = (): bigint | undefined => {
    if (!model) {
      const table = new Map<bigint, bigint>();
      for (const [i, v] of scan.reftable) table.set(BigInt(i), v & 0xfffffffffffffe00n);
      model = new RefcountModel({
        clusterBits: scan.clusterBits,
        refcountOrder: scan.refcountOrder,
        tableOffset: scan.reftableOffset,
        tableClusters: BigInt(scan.reftableClusters),
        table,
        runs: scan.runs,
      });
      model.listener = { blockCreated: () => (grew = true), tableMoved: () => (grew = true) };
    }
    try {
      const c = model.alloc(1n);
      const at = c << BigInt(scan.clusterBits);
      // qemu's overlap check: never over the header, the refcount table or a block
      const cs = 1n << BigInt(scan.clusterBits);
      const rt = scan.reftableOffset, rtEnd = rt + BigInt(scan.reftableClusters) * cs;
      if (c === 0n || (at < rtEnd && rt < at + cs) || [...model.table.values()].includes(at)) {
        return undefined;
      }
      return grew ? undefined : at;
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
      const got = l2Ref === 1n ? allocate() : undefined;
      if (got === undefined) {
        return {
          kind: "refuse",
          why: "instar does not yet expand these zero clusters of an image with a backing file " +
            "(a shared L2 table, or new refcount structures)",
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
  const header = planHeaderRewrite(m, {
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
  // merged) and raise the refcounts of the new ones
  const zp: Patch[] = [];
  const refWrites: Patch[] = [];
  if (model) {
    for (const t of model.takeDirty()) {
      const at = model.table.get(t)!;
      if (at < hdrEnd || at + cs > end || zeroClusters.has(at)) {
        return { kind: "refuse", why: "a refcount block lies outside the file (the image is corrupt)" };
      }
      refWrites.push({ kind: "write", offset: at, bytes: model.blockBytes(t) });
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
    steps: [...chunk([...zp, ...refWrites], newEnd), ...chunk(ep, newEnd), {
      ...header.value,
      fileSize: newEnd,
    }],
    l1Entries,
  };
}
