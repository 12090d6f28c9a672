// Plans `qemu-img bitmap` on a qcow2 image: replays what qemu 7.2 does
// (img_bitmap, block/dirty-bitmap.c, block/qcow2-bitmap.c) on the metadata
// the bitmap_scan guest reported, with qemu's allocator (refcounts.ts), so
// the file ends up as qemu-img leaves it. Pure: no I/O, bounded output.
//
// qemu's sequence, replayed:
//  1. open read-write (qcow2_load_dirty_bitmaps): every bitmap gets the
//     in-use flag, written into the directory in place between two header
//     writes (autoclear bit off, directory, autoclear bit on);
//  2. the actions in order, in memory; --remove alone writes at once
//     (qcow2_co_remove_persistent_dirty_bitmap: a new directory without the
//     bitmap, the header, then the old directory and the bitmap's clusters
//     freed); the first failing action stops the list (its message is
//     returned), but what ran before it is still stored, as qemu does;
//  3. close (qcow2_store_persistent_dirty_bitmaps): every bitmap is written
//     anew, in directory order (new ones last): its data clusters holding a
//     set bit, then its table; then the new directory, the header, and the
//     old directory, old tables and old data clusters are freed.
//
// Crash-safe order of the steps (each synced before the next): every
// header write is one epoch; within an epoch, (a) the new structures
// (data clusters, tables, directory) are written into clusters free at the
// epoch's start, (b) the refcount blocks with the new clusters counted and
// nothing yet released, (c) the header naming the new directory, (d) the
// refcount blocks with the old structures released, (e) the data clusters
// released are discarded (qemu's QCOW2_DISCARD_ALWAYS punches them). When
// an allocation needs a new refcount block (alloc_refcount_block), the
// block is written in (b) and its table entry in a step of its own between
// (b) and (c); when it finds the refcount table full (qcow2_refcount_area),
// the move is three synced steps at that point of the epoch, before any of
// its writes (refcount_growth.ts: the blocks with every count raised so far
// and the new table, the old table's hook-ups, the header's refcount table
// fields). A crash between two steps leaves at most leaked clusters
// (qemu-img check -r leaks).
// Data clusters are moved verbatim (copy patches: the host never reads
// them); a bitmap whose data must be combined (--merge of two non-empty
// bitmaps, from another file) is refused.
import { bitmapState } from "../../abi/spec.ts";
import { fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import { encodeHeader, type Qcow2Header, setRefcount } from "./encode.ts";
import type { Qcow2Model } from "./model.ts";
import { dirtyBlockPatches, hookupPatches, tableMoveSteps } from "./refcount_growth.ts";
import { RefcountError, RefcountModel, type RefRun } from "./refcounts.ts";

export const BME_FLAG_IN_USE = 1;
export const BME_FLAG_AUTO = 2;
const BME_MAX_GRANULARITY_BITS = 31;
const BME_MIN_GRANULARITY_BITS = 9;
const BME_MAX_PHYS_SIZE = 0x20000000n;
const BME_MAX_TABLE_SIZE = 0x8000000n;
const BME_MAX_NAME_SIZE = 1023;
const QCOW2_MAX_BITMAPS = 65535;
const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024n * 65535n;
/** Most bitmap data clusters one plan moves. */
export const MAX_BITMAP_CLUSTERS = 256n * 1024n;
const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
/** A bitmap table entry of value 1: the cluster's range all ones (qemu stores it back as a data cluster). */
export const ALL_ONES = 1n;

export interface BitmapScanEntry {
  /** Table index. */
  index: bigint;
  /** Raw table entry (a data cluster offset, or ALL_ONES: every bit of its range set, no cluster). */
  value: bigint;
  /** The cluster has a set bit inside the bitmap. */
  nonzero: boolean;
  /**
   * The cluster also has set bits past the bitmap's end (a shrink's scan,
   * BITMAP_CUT): qemu's truncated bitmap keeps its first `keep` bytes, then
   * `byte` (the boundary byte with the bits past the end cleared), then zeroes.
   */
  cut?: BitmapCut;
}

export interface BitmapCut {
  keep: bigint;
  byte?: number;
}

export interface BitmapScanDir {
  name: Uint8Array;
  flags: number;
  granularityBits: number;
  tableOffset: bigint;
  tableSize: bigint;
  /** bitmapState bits (guest findings the planner refuses). */
  state: number;
  /** Loaded with bits past its end (bitmap_tail.ts): a merge into it ORs its last word whole. */
  tail?: boolean;
  entries: BitmapScanEntry[];
}

/** What the planner starts from: guest facts only, re-validated here. */
export interface Qcow2BitmapScan {
  model: Qcow2Model;
  fileSize: bigint;
  reftableOffset: bigint;
  reftableClusters: bigint;
  reftable: Map<number, bigint>;
  runs: RefRun[];
  dirOffset: bigint;
  dirSize: bigint;
  bitmaps: BitmapScanDir[];
}

export type BitmapAction =
  | { act: "add" | "remove" | "clear" | "enable" | "disable" }
  | { act: "merge"; src: Uint8Array };

export interface BitmapRequest {
  name: Uint8Array;
  /** -g; 0 = the default (cluster size clamped to 4 KiB..64 KiB). */
  granularity: bigint;
  actions: BitmapAction[];
  /** The node name qemu's messages name the image by. */
  nodeName: string;
  /** -b: the source image's bitmaps (merge sources are looked up there); its virtual size. */
  source?: { bitmaps: BitmapScanDir[]; virtualSize: bigint };
  /** The merge the guest computed for the first --merge that combines data (see MergeJob):
   * the result's data clusters (table index -> staging offset) and the file's length with them. */
  merged?: { data: Map<bigint, bigint>; fileEnd: bigint };
  /**
   * Only part of qemu's sequence (resize, lib/formats/qcow2/resize_bitmaps.ts):
   * "open" plans the in-use marking alone; "store" skips it (the caller
   * marked them and passes the bitmaps as loaded) and stores at close.
   */
  phase?: "open" | "store";
  /** "store" after a resize: qemu's free_cluster_index as the resize left it (the store's
   * allocations continue from there, not from the first free cluster). */
  freeIndex?: bigint;
  /**
   * "store" with `merged` (its fileEnd): data the guest staged for loaded
   * bitmaps (directory index -> table index -> offset), stored in place of
   * their own (commit's dirty bits in a base's enabled bitmaps).
   */
  stagedData?: Map<number, Map<bigint, bigint>>;
  /**
   * Bitmaps already in use (inconsistent) are carried as qemu carries them
   * through a read-write reopen that changes no bitmap by name (commit):
   * loaded as inconsistent, never stored, their directory entry and
   * clusters left as they are (qcow2_store_persistent_dirty_bitmaps skips
   * them). Only with "open"/"store" phases and no actions.
   */
  inUseKept?: boolean;
}

/** What the guest must compute for a --merge that combines bits (bitmap_scan's merge mode). */
export interface MergeJob {
  /** Directory index of the destination in the image, or undefined for an empty one. */
  dest?: number;
  /** Directory index of the source (in the -b source when external). */
  src: number;
  external: boolean;
  granularityBits: number;
  /** Where the guest writes the result's clusters: past anything the plan allocates. */
  staging: bigint;
}

export interface BitmapPlan {
  /** Set instead of steps when a merge needs the guest first: run it, then plan again with `merged`. */
  mergeJob?: MergeJob;
  steps: FilePlan[];
  /** qemu's failure of an action ("Operation add on bitmap b failed: ..."), after which the steps still apply. */
  error?: string;
}

const dec = new TextDecoder();
const key = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const text = (b: Uint8Array) => dec.decode(b.indexOf(0) >= 0 ? b.subarray(0, b.indexOf(0)) : b);

/** A BdrvDirtyBitmap: data are the file's data clusters holding its bits (table index -> offset). */
interface Mem {
  /** Directory index while the data are still the file's own bitmap's. */
  origin?: number;
  name: Uint8Array;
  gbits: number;
  enabled: boolean;
  data: Map<bigint, bigint>;
  /** Loaded from an entry in use: inconsistent, skipped by the store (inUseKept). */
  inconsistent?: boolean;
  /** Clusters of data stored cut (a shrink drops the bits past the new end). */
  cuts?: Map<bigint, BitmapCut>;
  /** Bits past the end may be set in its last word (loaded so; see bitmap_tail.ts). */
  tail?: boolean;
}

/** A Qcow2Bitmap of a directory (bm_list). */
interface DirEntry {
  name: Uint8Array;
  flags: number;
  gbits: number;
  tableOffset: bigint;
  tableSize: bigint;
  /** The table's data clusters (every non-zero entry) as in the file. */
  tableData: bigint[];
  mem?: Mem;
}

/** One write or release qemu makes, in its order, grouped by header writes. */
type Event =
  | { kind: "write"; offset: bigint; bytes: Uint8Array }
  | { kind: "copy"; offset: bigint; from: bigint; length: bigint }
  | { kind: "discard"; offset: bigint; length: bigint };

class Refusal extends Error {}
class NeedMerge extends Error {
  constructor(readonly job: MergeJob) {
    super("merge needed");
  }
}

function entrySize(nameLen: number): bigint {
  return BigInt((24 + nameLen + 7) & ~7);
}

function dirBytes(list: DirEntry[]): Uint8Array {
  const size = list.reduce((n, e) => n + Number(entrySize(e.name.length)), 0);
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  let at = 0;
  for (const e of list) {
    dv.setBigUint64(at, e.tableOffset);
    dv.setUint32(at + 8, Number(e.tableSize));
    dv.setUint32(at + 12, e.flags);
    b[at + 16] = 1;
    b[at + 17] = e.gbits;
    dv.setUint16(at + 18, e.name.length);
    dv.setUint32(at + 20, 0);
    b.set(e.name, at + 24);
    at += Number(entrySize(e.name.length));
  }
  return b;
}

/** Why the planner does not take this image (undefined: it does). */
export function bitmapRefusal(s: Qcow2BitmapScan, inUseKept = false): string | undefined {
  const m = s.model, l = m.layout;
  if (m.version !== 3) return undefined; // qemu's own refusals come first
  if (l.unknownExtension) return "the header has an extension instar does not know";
  if (l.cryptMethod !== 0) return "instar does not change bitmaps of an encrypted image";
  if (m.dataFile !== undefined || m.hasDataFileBit) {
    return "instar does not change bitmaps of an image with a data file";
  }
  if ((l.autoclearFeatures & ~1n) !== 0n) return "the header has autoclear feature bits instar does not know";
  if ((l.compatibleFeatures & ~1n) !== 0n) {
    return "the header has compatible feature bits instar does not know";
  }
  if (m.dirty) return "the image is dirty (run qemu-img check -r all first)";
  if (m.corrupt) return "the image is marked corrupt";
  if (m.nbBitmaps > 0 && (l.autoclearFeatures & 1n) === 0n) {
    return "the bitmaps extension is stale (autoclear bit clear); qemu would drop it";
  }
  for (const b of s.bitmaps) {
    const n = text(b.name);
    if ((b.flags & BME_FLAG_IN_USE) && !inUseKept) {
      return `bitmap '${n}' is in use (inconsistent); instar does not change such images`;
    }
    if (b.state !== 0) {
      return `bitmap '${n}' has data instar does not move (all-ones entries or bits past its end)`;
    }
  }
  return undefined;
}

/** Validates the scan against its own bounds; a message when inconsistent. */
export function bitmapScanViolation(s: Qcow2BitmapScan): string | undefined {
  const cb = BigInt(s.model.clusterBits), cs = 1n << cb;
  if (s.reftableClusters < 1n || s.reftableClusters > 1n << 20n) return "refcount table size out of range";
  if (s.reftableOffset % cs !== 0n) return "refcount table offset not aligned";
  let total = 0n;
  const names = new Set<string>();
  for (const b of s.bitmaps) {
    if (b.name.length > BME_MAX_NAME_SIZE) return "bitmap name too long";
    if (names.has(key(b.name))) return "bitmap name repeated";
    names.add(key(b.name));
    if (b.granularityBits < BME_MIN_GRANULARITY_BITS || b.granularityBits > BME_MAX_GRANULARITY_BITS) {
      return "granularity out of range";
    }
    if (
      b.tableOffset % cs !== 0n || b.tableOffset <= 0n || b.tableSize < 1n || b.tableSize > BME_MAX_TABLE_SIZE
    ) {
      return "bitmap table out of range";
    }
    let prev = -1n;
    for (const e of b.entries) {
      if (e.index <= prev || e.index >= b.tableSize) return "bitmap table index out of order";
      prev = e.index;
      if (e.value === ALL_ONES) {
        // A cut on one: the ones loaded or kept up to the end (bitmap_tail.ts).
        if (!e.nonzero || (e.cut && (e.cut.keep > cs || (e.cut.keep === cs && e.cut.byte !== undefined)))) {
          return "all-ones bitmap entry invalid";
        }
        continue;
      }
      const off = e.value & 0x00fffffffffffe00n;
      if (e.value !== off || off === 0n || off % cs !== 0n) return "bitmap data cluster offset invalid";
      // qemu writes whole data clusters: one past the file's end is not its own.
      if (off + cs > s.fileSize) return "bitmap data cluster past the end of the file";
    }
    total += BigInt(b.entries.length);
  }
  if (total > MAX_BITMAP_CLUSTERS) return "too many bitmap data clusters";
  // A data cluster is copied from after earlier epochs freed what they
  // release: it must belong to no other bitmap structure (qemu never
  // shares one), or a freed table reused in the meantime would be copied.
  const spans: [bigint, bigint][] = [];
  const span = (off: bigint, bytes: bigint) => {
    if (bytes > 0n) spans.push([off >> cb, ((off + bytes - 1n) >> cb) + 1n]);
  };
  if (s.bitmaps.length > 0) span(s.dirOffset, s.dirSize);
  for (const b of s.bitmaps) {
    span(b.tableOffset, b.tableSize * 8n);
    for (const e of b.entries) if (e.value !== ALL_ONES) span(e.value, cs);
  }
  spans.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) return "bitmap structures overlap";
  }
  if (s.bitmaps.length > QCOW2_MAX_BITMAPS) return "too many bitmaps";
  if (s.bitmaps.length > 0 && s.model.version !== 3) return "bitmaps in a version 2 image";
  if (s.bitmaps.length > 0 && (s.dirOffset % cs !== 0n || s.dirSize <= 0n)) return "bitmap directory invalid";
  return undefined;
}

/** qemu's default granularity (bdrv_get_default_bitmap_granularity). */
export function defaultGranularity(clusterSize: bigint): bigint {
  return clusterSize < 4096n ? 4096n : clusterSize > 65536n ? 65536n : clusterSize;
}

/** Table entries a bitmap of granularity 2^gbits over `len` bytes needs (serialized in 64-bit words). */
export function tableSizeFor(len: bigint, gbits: number, clusterSize: bigint): bigint {
  const bits = len > 0n ? ((len - 1n) >> BigInt(gbits)) + 1n : 0n;
  const bytes = ((bits + 63n) / 64n) * 8n;
  return (bytes + clusterSize - 1n) / clusterSize;
}

export function planQcow2Bitmap(s: Qcow2BitmapScan, req: BitmapRequest): PlanResult<BitmapPlan> {
  const bad = bitmapScanViolation(s);
  if (bad) return fail("invalid_size", bad);
  try {
    return ok(new Replay(s, req).run());
  } catch (e) {
    if (e instanceof Refusal) return fail("unsupported", e.message);
    if (e instanceof NeedMerge) return ok({ mergeJob: e.job, steps: [] });
    if (e instanceof RefcountError) return fail(e.kind === "too_big" ? "overflow" : "unsupported", e.message);
    throw e;
  }
}

class Replay {
  readonly cs: bigint;
  readonly cb: bigint;
  readonly len: bigint;
  readonly rc: RefcountModel;
  /** Events of the current epoch, and the steps so far. */
  events: Event[] = [];
  steps: FilePlan[] = [];
  fileSize: bigint;
  /** Clusters released in the current epoch, with their counts before. */
  released: [bigint, bigint][] = [];
  /** Header state: the bitmaps extension and the autoclear bit. */
  dir: { nb: number; dirSize: bigint; dirOffset: bigint };
  autoclear: bigint;
  /** The image's directory as qemu would load it now (bm_list). */
  fileDir: DirEntry[];
  /** In-memory bitmaps in creation order. */
  mems: Mem[] = [];
  moved = 0n;
  /** The file length qemu leaves (the staging area of a merge is cut off at the end). */
  qemuSize: bigint;
  staging: bigint;
  mergeUsed = false;

  constructor(readonly s: Qcow2BitmapScan, readonly req: BitmapRequest) {
    this.cb = BigInt(s.model.clusterBits);
    this.cs = 1n << this.cb;
    this.len = s.model.virtualSize & ~511n;
    this.fileSize = s.fileSize;
    const table = new Map<bigint, bigint>();
    for (const [i, v] of s.reftable) table.set(BigInt(i), v & REFT_OFFSET_MASK);
    this.rc = new RefcountModel({
      clusterBits: s.model.clusterBits,
      refcountOrder: Math.log2(s.model.refcountBits),
      tableOffset: s.reftableOffset,
      tableClusters: s.reftableClusters,
      table,
      runs: s.runs,
    });
    if (req.freeIndex !== undefined) {
      if (req.freeIndex < 0n || req.freeIndex > (1n << 56n) >> this.cb) {
        throw new Refusal("free cluster index out of range");
      }
      this.rc.freeIndex = req.freeIndex;
    }
    this.rc.listener = {
      // A new block is written with the epoch's raised blocks, its table
      // entry after them (publish).
      blockCreated: (t) => this.belowStaging(this.rc.table.get(t)!, this.cs),
      // qcow2_refcount_area: allocations come before releases in every
      // epoch, so the dirty blocks hold raised counts only and are written
      // as they stand; the old table is freed right after (not discarded).
      tableMoved: (move) => {
        this.belowStaging(this.rc.tableOffset, this.rc.tableClusters << this.cb);
        if (this.released.length > 0) throw new Refusal("refcount table moved after a release");
        for (const step of tableMoveSteps(this.rc, move, dirtyBlockPatches(this.rc))) this.push(step);
      },
    };
    this.dir = { nb: s.bitmaps.length, dirSize: s.dirSize, dirOffset: s.dirOffset };
    this.autoclear = s.model.layout.autoclearFeatures;
    this.fileDir = s.bitmaps.map((b) => ({
      name: b.name,
      flags: b.flags,
      gbits: b.granularityBits,
      tableOffset: b.tableOffset,
      tableSize: b.tableSize,
      tableData: b.entries.filter((e) => e.value !== ALL_ONES).map((e) => e.value),
    }));
    for (const [i, b] of s.bitmaps.entries()) {
      const data = new Map<bigint, bigint>(), cuts = new Map<bigint, BitmapCut>();
      for (const e of b.entries) {
        if (e.nonzero) data.set(e.index, e.value);
        if (e.nonzero && e.cut) cuts.set(e.index, e.cut);
      }
      const staged = req.stagedData?.get(i);
      this.mems.push({
        origin: staged ? undefined : i,
        name: b.name,
        gbits: b.granularityBits,
        enabled: (b.flags & BME_FLAG_AUTO) !== 0,
        inconsistent: (b.flags & BME_FLAG_IN_USE) !== 0 || undefined,
        data: staged ?? data,
        cuts: staged ? undefined : cuts,
        tail: (!staged && b.tail) || undefined,
      });
    }
    this.qemuSize = s.fileSize;
    if (req.merged) this.fileSize = req.merged.fileEnd;
    this.staging = stagingOffset(s);
  }

  run(): BitmapPlan {
    const keep = this.req.inUseKept === true;
    if (keep && (this.req.phase === undefined || this.req.actions.length > 0)) {
      throw new Refusal("in-use bitmaps are kept only by a reopen");
    }
    const why = this.s.model.version === 3 ? bitmapRefusal(this.s, keep) : undefined;
    if (why) throw new Refusal(why);
    if (this.req.phase !== "store") this.open();
    if (this.req.phase === "open") return { steps: this.steps };
    let error: string | undefined;
    for (const a of this.req.actions) {
      const msg = this.action(a);
      if (msg !== undefined) {
        error = `Operation ${a.act} on bitmap ${text(this.req.name)} failed: ${msg}`;
        break;
      }
    }
    this.store();
    // A merge's staging area goes: the file ends where qemu's does.
    if (this.fileSize !== this.qemuSize) this.steps.push({ patches: [], fileSize: this.qemuSize });
    return { steps: this.steps, error };
  }

  // --- qemu's actions -------------------------------------------------------

  find(name: Uint8Array, list = this.mems): Mem | undefined {
    const k = key(name);
    return list.find((m) => key(m.name) === k);
  }

  action(a: BitmapAction): string | undefined {
    const name = this.req.name, n = text(name);
    if (a.act === "add") {
      if (name.length === 0) return "Bitmap name cannot be empty";
      let g = this.req.granularity;
      if (g !== 0n) {
        if (g < 512n || (g & (g - 1n)) !== 0n || g > 0xffffffffn) {
          return "Granularity must be power of 2 and at least 512";
        }
      } else {
        g = defaultGranularity(this.cs);
      }
      const gbits = g.toString(2).length - 1;
      if (this.find(name)) return `Bitmap already exists: ${n}`;
      const prefix = `Can't make bitmap '${n}' persistent in '${this.req.nodeName}': `;
      if (this.s.model.version < 3) return prefix + "Cannot store dirty bitmaps in qcow2 v2 files";
      const c = this.constraints(name, gbits);
      if (c) return prefix + c;
      const nb = this.mems.length + 1;
      const dsize = [...this.mems, { name }].reduce((t, m) => t + entrySize(m.name.length), 0n);
      if (nb > QCOW2_MAX_BITMAPS) return prefix + "Maximum number of persistent bitmaps is already reached";
      if (dsize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) return prefix + "Not enough space in the bitmap directory";
      this.mems.push({ name, gbits, enabled: true, data: new Map() });
      return undefined;
    }
    const m = this.find(name);
    if (!m) return `Dirty bitmap '${n}' not found`;
    switch (a.act) {
      case "remove":
        this.remove(m);
        return undefined;
      case "clear":
        m.data = new Map();
        m.cuts = undefined;
        m.origin = undefined;
        m.tail = undefined;
        return undefined;
      case "enable":
        m.enabled = true;
        return undefined;
      case "disable":
        m.enabled = false;
        return undefined;
      case "merge": {
        const src = this.req.source ? this.sourceBitmap(a.src) : this.find(a.src);
        if (!src) return `Dirty bitmap '${text(a.src)}' not found`;
        if (this.req.source && this.req.source.virtualSize !== this.s.model.virtualSize) {
          return "Bitmaps are incompatible and can't be merged";
        }
        // qemu 7.2 merges into a new bitmap: with the same granularity the words of both ORed whole
        // (bits past the end too, even from a source set past its end only); with another, range by
        // range inside the bitmap (the destination's bits past its end dropped).
        const same = src.gbits === m.gbits;
        if (src === m || (src.data.size === 0 && !(same ? src.tail : m.tail))) return undefined;
        if (!this.req.source && m.data.size === 0 && !m.tail && src.gbits === m.gbits) {
          // The destination becomes a copy of the source's clusters (its last word whole).
          m.data = new Map(src.data);
          m.cuts = src.cuts;
          m.origin = undefined;
          m.tail = src.tail;
          return undefined;
        }
        // Bits to combine: the guest computes the result (once per command).
        if (this.mergeUsed) {
          throw new Refusal("more than one --merge that combines bits is not supported by instar yet");
        }
        if ((m.data.size > 0 || m.tail) && m.origin === undefined) {
          throw new Refusal(
            "merging into a bitmap changed earlier in the same command is not supported by instar yet",
          );
        }
        if (src.origin === undefined) {
          throw new Refusal(
            "merging from a bitmap changed earlier in the same command is not supported by instar yet",
          );
        }
        if (!this.req.merged) {
          throw new NeedMerge({
            // A destination with bits past its end keeps them (hbitmap_merge ORs whole words).
            dest: m.data.size > 0 || m.tail ? m.origin : undefined,
            src: src.origin,
            external: this.req.source !== undefined,
            granularityBits: m.gbits,
            staging: this.staging,
          });
        }
        this.mergeUsed = true;
        m.data = new Map(this.req.merged.data);
        m.cuts = undefined;
        m.origin = undefined;
        m.tail = undefined;
        return undefined;
      }
    }
  }

  sourceBitmap(name: Uint8Array): Mem | undefined {
    const list = this.req.source!.bitmaps;
    const i = list.findIndex((x) => key(x.name) === key(name));
    if (i < 0) return undefined;
    const b = list[i];
    if (b.flags & BME_FLAG_IN_USE) {
      throw new Refusal(`source bitmap '${text(b.name)}' is in use (inconsistent)`);
    }
    const data = new Map<bigint, bigint>();
    for (const e of b.entries) if (e.nonzero) data.set(e.index, e.value);
    const tail = b.tail || (b.state & bitmapState.TAIL_BITS) !== 0 || undefined;
    return { origin: i, name: b.name, gbits: b.granularityBits, enabled: true, data, tail };
  }

  /** check_constraints_on_bitmap. */
  constraints(name: Uint8Array, gbits: number): string | undefined {
    if (gbits > BME_MAX_GRANULARITY_BITS) {
      return `Granularity exceeds maximum (${1n << BigInt(BME_MAX_GRANULARITY_BITS)} bytes)`;
    }
    if (gbits < BME_MIN_GRANULARITY_BITS) {
      return `Granularity is under minimum (${1n << BigInt(BME_MIN_GRANULARITY_BITS)} bytes)`;
    }
    const g = 1n << BigInt(gbits);
    const bytes = ((this.len + g - 1n) / g + 7n) / 8n;
    if (bytes > BME_MAX_PHYS_SIZE || bytes > BME_MAX_TABLE_SIZE * this.cs) {
      return "Too much space will be occupied by the bitmap. Use larger granularity";
    }
    if (name.length > BME_MAX_NAME_SIZE) {
      return `Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`;
    }
    return undefined;
  }

  // --- qemu's writes ---------------------------------------------------------

  alloc(bytes: bigint): bigint {
    const n = (bytes + this.cs - 1n) / this.cs;
    const at = this.rc.alloc(n) << this.cb;
    this.belowStaging(at, n << this.cb);
    return at;
  }

  /** A merge's result is staged past the file: nothing the plan places may reach it. */
  belowStaging(at: bigint, bytes: bigint) {
    if (this.req.merged && at + bytes > this.staging) {
      throw new Refusal("the bitmaps' clusters would reach the merge staging area");
    }
  }

  /** qcow2_free_clusters over [offset, offset + bytes); discard when `punch`. */
  free(offset: bigint, bytes: bigint, punch: boolean) {
    const first = offset >> this.cb, n = ((offset + bytes + this.cs - 1n) >> this.cb) - first;
    for (let c = first; c < first + n; c++) this.released.push([c, this.rc.get(c)]);
    this.rc.update(first, n, -1n);
    if (punch) this.events.push({ kind: "discard", offset: first << this.cb, length: n << this.cb });
  }

  header(): Uint8Array {
    const m = this.s.model, l = m.layout;
    const h: Qcow2Header = {
      version: m.version,
      clusterBits: m.clusterBits,
      virtualSize: m.virtualSize,
      l1Size: l.l1Size,
      l1TableOffset: l.l1TableOffset,
      refcountTableOffset: this.rc.tableOffset,
      refcountTableClusters: Number(this.rc.tableClusters),
      refcountOrder: Math.log2(m.refcountBits),
      compressionType: m.compressionType,
      extendedL2: m.extendedL2,
      lazyRefcounts: m.lazyRefcounts,
      extraIncompatible: 0n,
      nbSnapshots: m.nbSnapshots,
      snapshotsOffset: l.snapshotsOffset,
      backingFile: m.backingFile,
      backingFormat: m.backingFile ? m.backingFormat : undefined,
      bitmaps: this.dir,
      autoclear: this.autoclear,
    };
    const b = encodeHeader(h);
    if (!b.ok) throw new Refusal(b.error.message);
    return b.value;
  }

  push(patches: Patch[]) {
    if (patches.length === 0) return;
    for (const p of patches) {
      const end = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
      if (p.kind !== "zero" && end > this.qemuSize) this.qemuSize = end;
    }
    if (this.qemuSize > this.fileSize) this.fileSize = this.qemuSize;
    this.steps.push({ patches, fileSize: this.fileSize });
  }

  /** Ends an epoch at a header write: the crash-safe steps (see the top of the file). */
  publish() {
    const writes: Patch[] = [], discards: Patch[] = [];
    for (const e of this.events) {
      if (e.kind === "discard") discards.push({ kind: "zero", offset: e.offset, length: e.length });
      else if (e.kind === "copy") {
        writes.push({ kind: "copy", offset: e.offset, from: e.from, length: e.length });
      } else writes.push({ kind: "write", offset: e.offset, bytes: e.bytes });
    }
    this.push(writes);
    const dirty = this.rc.takeDirty();
    const final = dirty.map((t) => ({ t, bytes: this.rc.blockBytes(t) }));
    // Raised: the new clusters counted, the released ones still at their old counts.
    const raised = final.map(({ t, bytes }) => ({ t, bytes: bytes.slice() }));
    for (const [c, v] of this.released) {
      const t = c >> this.rc.rbBits;
      const r = raised.find((x) => x.t === t);
      if (r) setRefcount(r.bytes, Number(c - (t << this.rc.rbBits)), v, this.rc.bits);
    }
    const blocks = (list: { t: bigint; bytes: Uint8Array }[]) =>
      list.map(({ t, bytes }) => ({ kind: "write" as const, offset: this.rc.table.get(t)!, bytes }));
    this.push(blocks(raised));
    this.push(hookupPatches(this.rc));
    this.push([{ kind: "write", offset: 0n, bytes: this.header() }]);
    if (this.released.length > 0) this.push(blocks(final));
    this.push(discards);
    this.events = [];
    this.released = [];
  }

  /** qcow2_load_dirty_bitmaps: the in-use flags, written in place between two header writes. */
  open() {
    if (this.fileDir.length === 0) return;
    for (const e of this.fileDir) e.flags |= BME_FLAG_IN_USE;
    this.autoclear &= ~1n;
    this.push([{ kind: "write", offset: 0n, bytes: this.header() }]);
    this.push([{ kind: "write", offset: this.dir.dirOffset, bytes: dirBytes(this.fileDir) }]);
    this.autoclear |= 1n;
    this.push([{ kind: "write", offset: 0n, bytes: this.header() }]);
  }

  /** update_ext_header_and_dir: a new directory (or none), the header, the old directory freed. */
  updateDir(list: DirEntry[]) {
    const old = { ...this.dir };
    if (list.length > 0) {
      if (list.length > QCOW2_MAX_BITMAPS) throw new Refusal("too many bitmaps");
      const bytes = dirBytes(list);
      const at = this.alloc(BigInt(bytes.length));
      this.events.push({ kind: "write", offset: at, bytes });
      this.dir = { nb: list.length, dirSize: BigInt(bytes.length), dirOffset: at };
      this.autoclear |= 1n;
    } else {
      this.dir = { nb: 0, dirSize: 0n, dirOffset: 0n };
      this.autoclear &= ~1n;
    }
    if (old.dirSize > 0n) this.free(old.dirOffset, old.dirSize, false);
  }

  /** free_bitmap_clusters: each data cluster (discarded), then the table. */
  freeTable(e: DirEntry) {
    for (const off of e.tableData) this.free(off, this.cs, true);
    this.free(e.tableOffset, e.tableSize * 8n, false);
  }

  /** qcow2_co_remove_persistent_dirty_bitmap, then the bitmap is released. */
  remove(m: Mem) {
    this.mems = this.mems.filter((x) => x !== m);
    if (this.dir.nb === 0) return;
    const k = key(m.name);
    const bm = this.fileDir.find((e) => key(e.name) === k);
    if (!bm) return;
    this.fileDir = this.fileDir.filter((e) => e !== bm);
    this.epoch(this.fileDir, () => this.freeTable(bm));
  }

  /** One header write: the allocations and writes before it (in this.events), the directory, the frees after. */
  epoch(list: DirEntry[], after: () => void) {
    this.updateDir(list);
    after();
    this.publish();
  }

  /** qcow2_store_persistent_dirty_bitmaps at close. */
  store() {
    const list: DirEntry[] = this.dir.nb === 0 ? [] : this.fileDir.map((e) => ({ ...e }));
    const drop: DirEntry[] = [];
    let needWrite = false;
    for (const m of [...this.mems].reverse()) {
      // Inconsistent bitmaps are skipped: their entry stays as it is.
      if (m.inconsistent) continue;
      needWrite = true;
      const k = key(m.name);
      let bm = list.find((e) => key(e.name) === k);
      if (!bm) {
        bm = { name: m.name, flags: 0, gbits: m.gbits, tableOffset: 0n, tableSize: 0n, tableData: [] };
        list.push(bm);
      } else {
        drop.push({ ...bm });
        bm.tableOffset = 0n;
        bm.tableSize = 0n;
        bm.tableData = [];
      }
      bm.flags = m.enabled ? BME_FLAG_AUTO : 0;
      bm.gbits = m.gbits;
      bm.mem = m;
    }
    if (!needWrite) return;
    for (const bm of list) if (bm.mem) this.storeBitmap(bm);
    this.epoch(list, () => {
      for (const tb of drop) this.freeTable(tb);
    });
    this.fileDir = list;
  }

  /** store_bitmap: the data clusters with set bits, in order, then the table. */
  storeBitmap(bm: DirEntry) {
    const m = bm.mem!;
    const size = tableSizeFor(this.len, m.gbits, this.cs);
    if (size === 0n) throw new Refusal("instar does not store a bitmap of an image smaller than one sector");
    const table = new Uint8Array(Number(size * 8n));
    const dv = new DataView(table.buffer);
    const data: bigint[] = [];
    for (const idx of [...m.data.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (idx >= size) throw new Refusal("bitmap data past its table");
      if (++this.moved > MAX_BITMAP_CLUSTERS) throw new Refusal("too many bitmap data clusters");
      const at = this.alloc(this.cs), from = m.data.get(idx)!, cut = m.cuts?.get(idx);
      if (from === ALL_ONES) {
        // hbitmap_deserialize_ones set whole words: up to the end of the word holding the end
        // (or as a resize left them: `cut`, ones up to its keep, then its byte).
        const bits = ((this.len - 1n) >> BigInt(m.gbits)) + 1n, per = this.cs * 8n;
        const here = bits - idx * per < per ? bits - idx * per : per;
        const bytes = new Uint8Array(Number(this.cs));
        bytes.fill(0xff, 0, Number(cut ? cut.keep : ((here + 63n) / 64n) * 8n));
        if (cut?.byte !== undefined) bytes[Number(cut.keep)] = cut.byte;
        this.events.push({ kind: "write", offset: at, bytes });
      } else if (cut) {
        // hbitmap_truncate cleared the bits past the new end; the rest of the cluster is zero.
        if (cut.keep > 0n) this.events.push({ kind: "copy", offset: at, from, length: cut.keep });
        const rest = new Uint8Array(Number(this.cs - cut.keep));
        if (cut.byte !== undefined) rest[0] = cut.byte;
        this.events.push({ kind: "write", offset: at + cut.keep, bytes: rest });
      } else {
        this.events.push({ kind: "copy", offset: at, from, length: this.cs });
      }
      dv.setBigUint64(Number(idx) * 8, at);
      data.push(at);
    }
    const tb = this.alloc(BigInt(table.length));
    this.events.push({ kind: "write", offset: tb, bytes: table });
    bm.tableOffset = tb;
    bm.tableSize = size;
    bm.tableData = data;
  }
}

/** The name as qemu prints it (up to the first NUL). */
export function bitmapNameText(b: Uint8Array): string {
  return text(b);
}

/**
 * Where a merge's result is staged: past every cluster the plan can
 * allocate (new tables, data clusters and directories of every bitmap).
 */
export function stagingOffset(s: Qcow2BitmapScan): bigint {
  const cs = s.model.clusterSize, len = s.model.virtualSize & ~511n;
  const clustersFor = (bytes: bigint) => (bytes + cs - 1n) / cs;
  let n = 4n;
  for (const b of s.bitmaps) n += clustersFor(b.tableSize * 8n) + BigInt(b.entries.length);
  // A new bitmap and the merge's result: the finest table at most, and its data.
  const finest = tableSizeFor(len, BME_MIN_GRANULARITY_BITS, cs);
  n += 2n * (clustersFor(finest * 8n) + finest);
  n += 2n * clustersFor(BigInt(s.bitmaps.length + 1) * 1048n);
  const fileClusters = (s.fileSize + cs - 1n) / cs;
  // Refcount growth (new blocks, a table qcow2_refcount_area moves past
  // the next block boundary, 1.5 times the entries) when the clusters may
  // pass what the table covers; capped at 1 GiB, beyond which a plan that
  // would reach the staging area is refused instead.
  const perBlock = (cs * 8n) / BigInt(s.model.refcountBits);
  const blocks = (fileClusters + n + perBlock - 1n) / perBlock + 2n;
  if (blocks + 2n > s.reftableClusters * (cs / 8n) || s.reftable.size < Number(blocks)) {
    const grow = perBlock + 2n * blocks + 2n * (clustersFor(((blocks * 3n) / 2n + 2n) * 8n) + 1n);
    if (grow * cs <= 1n << 30n) n += grow;
  }
  return (fileClusters + n) * cs;
}
