// The in-place qcow2 cluster writer's planner: given the target's metadata
// (the resize_scan guest's L1 entries, refcount table and refcounts), the
// state of the guest clusters about to be written (from the map guest) and
// the writes in the order qemu issues them (commit's mirror job, rebase's
// copy loop), it replays qemu's qcow2 write path on the shared refcount
// model (refcounts.ts): get_cluster_table (a missing L2 table is allocated,
// first fit, before the data; one an internal snapshot shares, without
// OFLAG_COPIED in its L1 entry, is copied to a new cluster by l2_allocate
// and loses one reference), handle_copied (a COPIED cluster, or a zero
// cluster with a preallocated offset, is written in place; a cluster a
// snapshot shares gets a new one by handle_alloc and loses one reference
// once the new entry is linked), handle_alloc
// (first fit for the rest; a compressed cluster is always reallocated and
// its old data freed after the new entry is linked, qcow2_free_any_cluster:
// one reference less on each host cluster it spans), and for zero writes
// qcow2_subcluster_zeroize with BDRV_REQ_MAY_UNMAP (entries become
// QCOW_OFLAG_ZERO, allocated and compressed clusters are freed). Pure: no I/O; the data never passes here. The
// planner says which guest clusters go to which host offsets (`copies`);
// the guest (convert, raw output at fixed offsets) moves the bytes.
//
// Crash-safe order, per round: (0) the guest writes the data into clusters
// nothing references yet (or in place into the cluster already mapped
// there, as qemu does); (A0) copies of shared L2 tables (and of a shared
// cluster's tail past the source's end) into new clusters, verbatim; (A) new refcount blocks and increased counts, new
// L2 tables and the entries of copied ones, zero tails of partial clusters; (B) new refcount blocks hooked
// into the refcount table (a table that had to grow is written and switched
// by its own steps first); (C) the entries of existing L2 tables and the L1
// entries of new tables, pointing at data and tables that are on disk and
// counted; (D) counts lowered for the clusters the zero writes and discards
// freed and for the shared tables and clusters replaced by copies, after
// nothing active points at them; (E) the bytes of discarded clusters
// dropped (a hole punched, best effort). Each step is synced before the next. A round ends
// after a write that frees clusters, so a later allocation never reuses a
// cluster whose reference is not yet withdrawn on disk. A crash between any
// two steps leaves at most leaked clusters; the header, when a command
// changes it (rebase's backing file), is written last by the command.
import { fail, type FilePlan, ok, type Patch, type PlanResult, planViolation } from "../plan.ts";
import { RefcountError, type RefcountModel } from "./refcounts.ts";
import {
  be64,
  blockPatches,
  COPIED,
  hookupPatches,
  L1E_OFFSET_MASK,
  modelOf,
  type Qcow2ResizeScan,
  scanViolation,
  StepLog,
} from "./resize_plan.ts";

const ZERO_FLAG = 1n;

/** What a guest cluster of the target holds before the writes. */
export type ClusterKind = "normal" | "zero_alloc" | "zero_plain" | "compressed";

/** A run of guest clusters of the target that is not unallocated (map of the target alone). */
export interface ExistingRun {
  cluster: bigint;
  count: bigint;
  kind: ClusterKind;
  /** normal / zero_alloc: the host byte offset of the first cluster (the rest follow). */
  host?: bigint;
}

/**
 * One write in qemu's order: whole guest clusters of the target. "discard"
 * is qcow2_cluster_discard with full_discard (qcow2_make_empty's fallback):
 * entries cleared, clusters freed and their bytes discarded (a hole), L2
 * tables that do not exist left so.
 */
export interface WriteOp {
  cluster: bigint;
  count: bigint;
  kind: "data" | "zero" | "discard";
  /**
   * A data write that covers only these guest byte ranges (convert -n -B:
   * one cluster; convert -n with a source ending inside a cluster of a
   * larger target: the op's clusters, the last in part): the caller copies
   * just them; where a cluster is newly allocated the rest is qemu's
   * copy-on-write (zeroes, the old cluster's bytes, or the target's own).
   */
  only?: [bigint, bigint][];
  /**
   * With `only`: a write-zeroes request reached the cluster first and made
   * it a zero cluster (qcow2_subcluster_zeroize, its host cluster freed)
   * before this data write allocates it anew (convert -n -B into a zero
   * cluster with an allocation).
   */
  zeroFirst?: boolean;
  /**
   * qemu's write request began inside the cluster before `cluster`, which
   * the previous op wrote (convert -n's requests, request_ops.ts): that
   * cluster is written in place and the same qcow2_alloc_host_offset call
   * goes on right behind its host cluster (qcow2_alloc_clusters_at, as many
   * as are free there) before any first-fit allocation.
   */
  continues?: boolean;
}

export interface WriteInput {
  scan: Qcow2ResizeScan;
  version: 2 | 3;
  existing: ExistingRun[];
  ops: WriteOp[];
  /**
   * The source's virtual size: bytes of a written cluster past it are not
   * copied but written as zeroes (qemu's copy-on-write reads zeroes there).
   */
  sourceSize: bigint;
  /**
   * Whether clusters a zero write frees are discarded too (their bytes
   * punched out): qemu passes the discard when the target was opened with
   * BDRV_O_UNMAP (convert), not otherwise (commit).
   */
  discardFreed?: boolean;
}

/** Guest clusters [cluster, +count) go to host bytes [host, +count clusters). */
export interface DataCopy {
  cluster: bigint;
  count: bigint;
  host: bigint;
}

/** Guest bytes [from, to) of the target itself, as it reads before the round's steps, to host offset `at`. */
export interface SelfCopy {
  from: bigint;
  to: bigint;
  at: bigint;
}

export interface WriteRound {
  /** Data the guest writes before the steps (ascending guest clusters). */
  copies: DataCopy[];
  /**
   * Then (still before the steps) the target's own bytes (through its
   * backing chain): the rest of a compressed or unallocated cluster written
   * only in part, into its new cluster as qemu's copy-on-write reads it
   * (convert -n -B).
   */
  selfCopies?: SelfCopy[];
  steps: FilePlan[];
}

export interface WritePlan {
  rounds: WriteRound[];
  /** The file's length after the last round. */
  fileSize: bigint;
}

/** The most write ops and existing runs one plan takes (bounded memory and steps). */
export const MAX_WRITE_RUNS = 1 << 20;

class Refusal extends Error {}

interface L2Table {
  offset: bigint;
  fresh: boolean;
  bytes?: Uint8Array;
  /**
   * l2_allocate's copy of a shared table, made this round: the file offset
   * of the old table, copied verbatim (never decoded here) before the
   * entries this round changes are written into the copy.
   */
  copyFrom?: bigint;
  /** Entries changed in an existing table: index -> value. */
  changed: Map<number, bigint>;
}

/** Plans the writes; a typed refusal when the image or the request is beyond it. */
export function planQcow2Writes(x: WriteInput): PlanResult<WritePlan> {
  const bad = scanViolation(x.scan);
  if (bad) return fail("unsupported", `Inconsistent image metadata: ${bad}`);
  if (x.scan.extendedL2) {
    return fail("unsupported", "instar does not write into images with extended L2 entries");
  }
  if (x.ops.length > MAX_WRITE_RUNS || x.existing.length > MAX_WRITE_RUNS) {
    return fail("unsupported", "too many separate runs to write");
  }
  try {
    const plan = new Planner(x).run();
    for (const r of plan.rounds) {
      for (const s of r.steps) {
        const v = planViolation(s);
        if (v) return fail("unsupported", `Write plan broke an invariant: ${v}`);
      }
    }
    return ok(plan);
  } catch (e) {
    if (e instanceof Refusal) return fail("unsupported", e.message);
    if (e instanceof RefcountError) {
      return fail(e.kind === "too_big" ? "overflow" : "unsupported", e.message);
    }
    if (e instanceof RangeError) return fail("overflow", e.message);
    throw e;
  }
}

class Planner {
  private readonly log: StepLog;
  private readonly rc: RefcountModel;
  private readonly cb: bigint;
  private readonly cs: bigint;
  private readonly perL2: bigint;
  private readonly l1: Map<bigint, bigint>;
  private readonly virtualClusters: bigint;
  private tables = new Map<bigint, L2Table>();
  private l1Changed = new Set<bigint>();
  private copies: DataCopy[] = [];
  /** The guest cluster the last data write placed, and where (WriteOp.continues). */
  private lastPlaced?: { cluster: bigint; host: bigint };
  private tails: Patch[] = [];
  private frees: [bigint, bigint][] = [];
  /** Freed clusters whose bytes are discarded after their counts are lowered. */
  private punches: Patch[] = [];
  /** Host clusters of freed compressed data, discarded when their count reaches 0. */
  private punchIfFree: bigint[] = [];
  /** File bytes copied verbatim before the round's step A: COW'd L2 tables, old tails of COW'd clusters. */
  private fileCopies: Patch[] = [];
  private selfCopies: SelfCopy[] = [];
  /** Guest clusters whose state this plan changed before a later write to them (zeroFirst). */
  private readonly left = new Map<bigint, { kind: ClusterKind | "unallocated"; host: bigint }>();
  private readonly rounds: WriteRound[] = [];
  private readonly existing: ExistingRun[];
  /** Steps before this index belong to earlier rounds (a moved refcount table adds its own). */
  private roundStart = 0;

  constructor(private readonly x: WriteInput) {
    this.log = new StepLog(x.scan.fileSize);
    this.rc = modelOf(x.scan, this.log);
    this.cb = BigInt(x.scan.clusterBits);
    this.cs = 1n << this.cb;
    this.perL2 = this.cs / 8n;
    this.l1 = new Map([...x.scan.l1].map(([i, v]) => [BigInt(i), v]));
    this.virtualClusters = (x.scan.virtualSize + this.cs - 1n) >> this.cb;
    this.existing = [...x.existing].sort((
      a,
      b,
    ) => (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0));
    let end = 0n;
    for (const e of this.existing) {
      if (e.count <= 0n || e.cluster < end) throw new Refusal("inconsistent cluster map of the target");
      if (
        (e.kind === "normal" || e.kind === "zero_alloc") && (e.host === undefined || e.host % this.cs !== 0n)
      ) {
        throw new Refusal("inconsistent cluster map of the target");
      }
      end = e.cluster + e.count;
    }
    if (end > this.virtualClusters) throw new Refusal("the cluster map passes the disk's end");
  }

  /** The state of guest cluster c before the plan (or as this plan left it). */
  private state(c: bigint): { kind: ClusterKind | "unallocated"; host: bigint } {
    const now = this.left.size > 0 ? this.left.get(c) : undefined;
    if (now) return now;
    const ex = this.existing;
    let lo = 0, hi = ex.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = ex[mid];
      if (c < r.cluster) hi = mid - 1;
      else if (c >= r.cluster + r.count) lo = mid + 1;
      else {
        const host = r.host === undefined ? 0n : r.host + ((c - r.cluster) << this.cb);
        return { kind: r.kind, host };
      }
    }
    return { kind: "unallocated", host: 0n };
  }

  run(): WritePlan {
    let prevEnd = 0n;
    for (const op of this.x.ops) {
      if (op.count <= 0n || op.cluster < prevEnd || op.cluster + op.count > this.virtualClusters) {
        throw new Refusal("write runs out of order or past the disk's end");
      }
      prevEnd = op.cluster + op.count;
      if (op.kind === "discard") this.discard(op);
      else if (op.kind === "zero" && this.x.version === 3) this.zero(op, false, this.x.discardFreed ?? false);
      // Without zero clusters (compat=0.10) qemu discards where no backing
      // file shows through, and writes zeroes as data where one would.
      else if (op.kind === "zero" && !this.x.scan.hasBacking) {
        this.zero(op, true, this.x.discardFreed ?? false);
      } else this.data(op);
    }
    this.endRound();
    return { rounds: this.rounds, fileSize: this.log.size };
  }

  /** get_cluster_table: the L2 table for L1 index idx, allocated (zeroed) when missing. */
  private table(idx: bigint): L2Table {
    let t = this.tables.get(idx);
    if (t) return t;
    if (idx >= BigInt(this.x.scan.l1Size)) throw new Refusal("a write past the L1 table");
    const e = this.l1.get(idx) ?? 0n;
    const off = e & L1E_OFFSET_MASK;
    if (off && !(e & COPIED)) {
      // l2_allocate: a table an internal snapshot shares (no OFLAG_COPIED)
      // is copied to a new cluster (first fit), the L1 entry points at the
      // copy with OFLAG_COPIED, and the old table loses one reference
      // (get_cluster_table's qcow2_free_clusters). The data clusters it
      // maps keep their counts: each L1 table holds one reference to them.
      const oc = off >> this.cb;
      // A count of 1 without the flag is an inconsistency qemu-img check
      // reports (and repairs); freeing the table would reuse a cluster the
      // disk still points at before the new L1 entry is down.
      if (this.rc.get(oc) < 2n) {
        throw new Refusal(
          "inconsistent image: an L2 table without OFLAG_COPIED is not shared (run qemu-img check -r all)",
        );
      }
      const at = this.rc.alloc(1n) << this.cb;
      this.l1.set(idx, at | COPIED);
      this.l1Changed.add(idx);
      this.fileCopies.push({ kind: "copy", offset: at, from: off, length: this.cs });
      // Lowered in step D, after the L1 entry no longer names it (2 -> 1 at
      // least: the first fit cannot see the difference).
      this.frees.push([oc, oc + 1n]);
      t = { offset: at, fresh: false, changed: new Map(), copyFrom: off };
    } else if (off) {
      t = { offset: off, fresh: false, changed: new Map() };
    } else {
      const at = this.rc.alloc(1n) << this.cb;
      this.l1.set(idx, at | COPIED);
      this.l1Changed.add(idx);
      t = { offset: at, fresh: true, bytes: new Uint8Array(Number(this.cs)), changed: new Map() };
    }
    this.tables.set(idx, t);
    return t;
  }

  private setEntry(c: bigint, v: bigint) {
    const t = this.table(c / this.perL2);
    const i = Number(c % this.perL2);
    if (t.fresh) new DataView(t.bytes!.buffer).setBigUint64(i * 8, v);
    else t.changed.set(i, v);
  }

  /**
   * Records that guest cluster c's data goes to host byte offset h; `old`:
   * the shared cluster it replaces (copy-on-write), whose bytes past the
   * source's end are the cluster's tail (qemu's COW region reads them).
   */
  private place(c: bigint, h: bigint, old?: bigint) {
    this.lastPlaced = { cluster: c, host: h };
    const last = this.copies[this.copies.length - 1];
    if (last && last.cluster + last.count === c && last.host + (last.count << this.cb) === h) last.count++;
    else this.copies.push({ cluster: c, count: 1n, host: h });
    // Bytes of the cluster past the source's end read as zeroes.
    const from = c << this.cb, src = this.x.sourceSize;
    if (from + this.cs > src) {
      const keep = src > from ? src - from : 0n;
      if (old !== undefined) {
        this.fileCopies.push({ kind: "copy", offset: h + keep, from: old + keep, length: this.cs - keep });
      } else {this.tails.push({
          kind: "write",
          offset: h + keep,
          bytes: new Uint8Array(Number(this.cs - keep)),
        });}
    }
  }

  private data(op: WriteOp) {
    const rc = this.rc;
    let c = op.cluster;
    const end = op.cluster + op.count;
    // qcow2_alloc_host_offset gathers one contiguous host range per call:
    // after in-place or new clusters, the next new ones are allocated right
    // behind them (qcow2_alloc_clusters_at, as many as are free there); when
    // none are, the call ends and the next one allocates first fit. `next`:
    // the host byte offset the current call continues at.
    let next: bigint | undefined;
    if (op.continues) {
      // Where the previous op placed cluster c - 1.
      const p = this.lastPlaced;
      if (!p || p.cluster + 1n !== c) throw new Refusal("a continued write not after its cluster");
      next = p.host + this.cs;
    }
    if (op.zeroFirst) {
      if (!op.only || op.count !== 1n || this.x.version !== 3) {
        throw new Refusal("a zero write first, not in part");
      }
      // qcow2_subcluster_zeroize with BDRV_REQ_MAY_UNMAP: the round ends
      // where it freed a cluster, so the allocation below may reuse it.
      this.zero({ cluster: c, count: 1n, kind: "zero" }, false, this.x.discardFreed ?? false);
      this.left.set(c, { kind: "zero_plain", host: 0n });
    }
    while (c < end) {
      this.table(c / this.perL2);
      const s = this.state(c);
      if (this.inPlace(s)) {
        // handle_copied: written in place (a zero_alloc entry loses its flag).
        // One not right behind the last ends the call; the next call takes it.
        if (s.kind === "zero_alloc") this.setEntry(c, s.host | COPIED);
        this.place(c, s.host);
        next = s.host + this.cs;
        // A partial write into a zero cluster: the rest is its zeroes (COW).
        if (op.only && s.kind === "zero_alloc") this.zeroOutside(c, s.host, op.only);
        c++;
        continue;
      }
      // handle_alloc: the run of clusters needing allocation, within this
      // L2 table (count_single_write_clusters, cluster_needs_new_alloc:
      // unallocated, zero without an offset, compressed and shared clusters
      // alike; a compressed one is never written in place).
      const tableEnd = (c / this.perL2 + 1n) * this.perL2;
      let n = 1n;
      while (c + n < end && c + n < tableEnd && !this.inPlace(this.state(c + n))) n++;
      let host: bigint;
      if (next === undefined) host = rc.alloc(n) << this.cb;
      else {
        const got = rc.allocAt(next >> this.cb, n);
        if (got === 0n) {
          next = undefined; // the call ends here; the next one allocates first fit
          continue;
        }
        n = got;
        host = next;
      }
      next = host + (n << this.cb);
      let freed = false;
      for (let i = 0n; i < n; i++) {
        const s = this.state(c + i);
        this.setEntry(c + i, (host + (i << this.cb)) | COPIED);
        this.place(c + i, host + (i << this.cb), s.kind === "normal" ? s.host : undefined);
        // A partial write (convert -n -B): the rest of a new cluster reads as zeroes.
        // A shared cluster's rest is its old bytes (perform_cow: a raw copy),
        // a compressed one's its decompressed bytes (read through the target),
        // an unallocated one's what the target's backing file holds there.
        if (op.only) {
          const h = host + (i << this.cb);
          if (s.kind === "normal") {
            this.outside(
              c + i,
              op.only,
              (f, t) =>
                this.fileCopies.push({ kind: "copy", offset: h + f, from: s.host + f, length: t - f }),
            );
          } else if (s.kind === "compressed" || (s.kind === "unallocated" && this.x.scan.hasBacking)) {
            // (An unallocated cluster of a target with a backing file: the
            // backing file's bytes, read through the target's chain.)
            this.outside(c + i, op.only, (f, t) =>
              this.selfCopies.push({
                from: ((c + i) << this.cb) + f,
                to: ((c + i) << this.cb) + t,
                at: h + f,
              }));
          } else this.zeroOutside(c + i, h, op.only);
        }
        // Copy-on-write of a cluster an internal snapshot shares
        // (qcow2_alloc_cluster_link_l2 then qcow2_free_any_cluster): one
        // reference less, after the new entry is linked (step D); it stays
        // in use by the snapshot, so the round need not end here.
        if (s.kind === "normal" || s.kind === "zero_alloc") this.free(s.host >> this.cb);
        // qcow2_alloc_cluster_link_l2: the old compressed cluster is freed
        // after the new entry is linked (QCOW2_DISCARD_NEVER). Its data is
        // whole in the new cluster: the guest reads the rest of the cluster
        // through the chain, the base's own (decompressed) bytes included,
        // as qemu's copy-on-write does.
        if (this.state(c + i).kind === "compressed") {
          this.freeCompressed(c + i, false);
          freed = true;
        }
      }
      c += n;
      // The freed clusters may be reused by the next allocation.
      if (freed) this.endRound();
    }
  }

  /** Zeroes of cluster c (at host h) outside the written ranges, up to the source's end. */
  private zeroOutside(c: bigint, h: bigint, only: [bigint, bigint][]) {
    this.outside(
      c,
      only,
      (f, t) => this.tails.push({ kind: "write", offset: h + f, bytes: new Uint8Array(Number(t - f)) }),
    );
  }

  /** Calls gap(from, to) (offsets in cluster c) for each part of it outside the written ranges, up to the source's end. */
  private outside(c: bigint, only: [bigint, bigint][], gap: (from: bigint, to: bigint) => void) {
    const base = c << this.cb;
    const end = base + this.cs < this.x.sourceSize ? base + this.cs : this.x.sourceSize;
    let at = base;
    // A write of several clusters: just the ranges inside cluster c.
    const mine = only.filter(([from, to]) => to > base && from < base + this.cs)
      .map(([from, to]) => [from > base ? from : base, to < base + this.cs ? to : base + this.cs]);
    for (const [from, to] of mine.sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      if (from < at || to > end || to <= from) throw new Refusal("partial write ranges out of order");
      if (from > at) gap(at - base, from - base);
      at = to;
    }
    if (end > at) gap(at - base, end - base);
  }

  /**
   * handle_copied's test (cluster_needs_new_alloc): a normal or zero_alloc
   * cluster with OFLAG_COPIED is written in place. The map does not carry
   * the flag; on a consistent image it is set exactly when the count is 1.
   */
  private inPlace(s: { kind: ClusterKind | "unallocated"; host: bigint }): boolean {
    return (s.kind === "normal" || s.kind === "zero_alloc") && this.rc.get(s.host >> this.cb) === 1n;
  }

  /** One reference less on host cluster hc, in step D. */
  private free(hc: bigint) {
    const last = this.frees[this.frees.length - 1];
    if (last && last[1] === hc) last[1]++;
    else this.frees.push([hc, hc + 1n]);
  }

  /** qcow2_free_any_cluster of compressed guest cluster c: one reference less on each host cluster it spans. */
  private freeCompressed(c: bigint, punch: boolean) {
    // Scans without the compressed entries (rebase, convert -n): refused as before.
    const map = this.x.scan.compressed;
    if (!map) throw new Refusal("instar does not overwrite or zero compressed clusters in place");
    const r = map.get(c);
    if (!r) {
      throw new Refusal(
        "inconsistent cluster map of the target (a compressed cluster the scan did not list)",
      );
    }
    const last = this.frees[this.frees.length - 1];
    if (last && last[1] === r.first) last[1] += r.count;
    else this.frees.push([r.first, r.first + r.count]);
    if (punch) { for (let h = r.first; h < r.first + r.count; h++) this.punchIfFree.push(h); }
  }

  /**
   * qcow2_cluster_discard with full_discard, one L2 table at a time:
   * discard_in_l2_slice gets the table through get_cluster_table, which
   * allocates a missing one (empty) even where nothing is mapped, so a v2
   * overlay qemu-img commit empties gains an L2 table for every L1 entry it
   * lacked, first fit after the clusters the earlier tables freed (seed 7
   * #25: image-end-offset one cluster further than without).
   */
  private discard(op: WriteOp) {
    const end = op.cluster + op.count;
    const ex = this.existing;
    let k = 0;
    for (let c = op.cluster; c < end;) {
      const idx = c / this.perL2;
      const tableEnd = (idx + 1n) * this.perL2 < end ? (idx + 1n) * this.perL2 : end;
      this.table(idx);
      // Only the mapped clusters of this table change (entries already 0 stay).
      while (k < ex.length && ex[k].cluster + ex[k].count <= c) k++;
      // One round per table that freed clusters (not one per run).
      let freed = false;
      for (let j = k; j < ex.length && ex[j].cluster < tableEnd; j++) {
        const r = ex[j];
        const from = r.cluster > c ? r.cluster : c;
        const to = r.cluster + r.count < tableEnd ? r.cluster + r.count : tableEnd;
        freed = this.zero({ cluster: from, count: to - from, kind: "discard" }, true, true, false) || freed;
      }
      if (freed) this.endRound();
      c = tableEnd;
    }
  }

  /** Zero writes (discard: entries cleared instead of zero-flagged); `punch`: freed bytes dropped. */
  private zero(op: WriteOp, discard: boolean, punch: boolean, endAtEnd = true): boolean {
    let freed = false;
    for (let c = op.cluster; c < op.cluster + op.count; c++) {
      const s = this.state(c);
      if (discard) {
        // Nothing to discard where nothing is mapped (no table is made for it).
        if (s.kind === "unallocated") continue;
        if (!this.tables.has(c / this.perL2) && !(this.l1.get(c / this.perL2)! & L1E_OFFSET_MASK)) continue;
      }
      this.table(c / this.perL2);
      if (s.kind === "zero_plain" && !discard) continue;
      this.setEntry(c, discard ? 0n : ZERO_FLAG);
      // zero_in_l2_slice / discard_in_l2_slice: a compressed cluster is
      // always unmapped; host clusters whose count reaches 0 are discarded
      // where the request passes discards on.
      if (s.kind === "compressed") {
        this.freeCompressed(c, punch);
        freed = true;
      }
      // A cluster an internal snapshot shares only loses a reference
      // (update_refcount discards at 0 only).
      const shared = (s.kind === "normal" || s.kind === "zero_alloc") && this.rc.get(s.host >> this.cb) > 1n;
      if (punch && !shared && (s.kind === "normal" || s.kind === "zero_alloc")) {
        this.punches.push({ kind: "zero", offset: s.host, length: this.cs });
      }
      if (s.kind === "normal" || s.kind === "zero_alloc") {
        this.free(s.host >> this.cb);
        if (!shared) freed = true;
      }
      // qemu zeroes one L2 table at a time and frees as it goes: the freed
      // clusters may be reused by the next allocation, so their references
      // are withdrawn and the counts lowered (this round) before it.
      if (freed && (c + 1n) % this.perL2 === 0n) {
        this.endRound();
        freed = false;
      }
    }
    if (freed && endAtEnd) this.endRound();
    return freed;
  }

  /** Turns what the round changed into its copies and steps A..D. */
  private endRound() {
    const rc = this.rc, log = this.log;
    // (A) counts raised, new tables, zero tails: nothing points at them yet.
    const a: Patch[] = [...blockPatches(rc), ...this.tails];
    const c: Patch[] = [];
    for (const t of this.tables.values()) {
      if (t.fresh) {
        a.push({ kind: "write", offset: t.offset, bytes: t.bytes! });
        continue;
      }
      // A table copied this round is not published yet: its entries go with step A.
      const into = t.copyFrom === undefined ? c : a;
      for (const [i, v] of [...t.changed].sort((p, q) => p[0] - q[0])) {
        into.push({ kind: "write", offset: t.offset + BigInt(i * 8), bytes: be64(v) });
      }
    }
    for (const i of [...this.l1Changed].sort((p, q) => (p < q ? -1 : p > q ? 1 : 0))) {
      c.push({ kind: "write", offset: this.x.scan.l1Offset + i * 8n, bytes: be64(this.l1.get(i)!) });
    }
    // The data the guest writes may reach past every patch.
    let dataEnd = log.size;
    for (const d of this.copies) {
      const e = d.host + (d.count << this.cb);
      if (e > dataEnd) dataEnd = e;
    }
    let aEnd = dataEnd;
    for (const p of [...a, ...this.fileCopies]) {
      const e = p.offset + (p.kind === "write" ? BigInt(p.bytes.length) : p.length);
      if (e > aEnd) aEnd = e;
    }
    // (A0) copies of shared tables and old tails into clusters nothing
    // points at yet, before step A patches entries into them.
    if (this.fileCopies.length > 0) log.push(this.fileCopies, aEnd);
    log.push(a, aEnd);
    // (B) new refcount blocks hooked up.
    log.push(hookupPatches(rc));
    // (C) the pointers.
    log.push(c);
    // (D) the frees, after nothing points at the clusters.
    for (const [s, e] of this.frees) rc.update(s, e - s, -1n);
    log.push(blockPatches(rc));
    // Sorted and once each: compressed data often shares its host clusters.
    for (const h of [...new Set(this.punchIfFree)].sort((p, q) => (p < q ? -1 : p > q ? 1 : 0))) {
      if (rc.get(h) === 0n) this.punches.push({ kind: "zero", offset: h << this.cb, length: this.cs });
    }
    // (E) the freed clusters discarded (the applier punches zero patches inside the file).
    log.push(this.punches);
    const steps = log.steps.splice(this.roundStart);
    this.roundStart = log.steps.length;
    if (steps.length > 0 || this.copies.length > 0 || this.selfCopies.length > 0) {
      this.rounds.push({
        copies: this.copies,
        ...(this.selfCopies.length > 0 ? { selfCopies: this.selfCopies } : {}),
        steps,
      });
    }
    // The tables this round made are existing ones for the next; the ops
    // are ascending and disjoint, so no later op reads an entry set here.
    this.tables = new Map(
      [...this.tables].map(([i, t]) => [i, { offset: t.offset, fresh: false, changed: new Map() }]),
    );
    this.copies = [];
    this.tails = [];
    this.frees = [];
    this.punches = [];
    this.punchIfFree = [];
    this.fileCopies = [];
    this.selfCopies = [];
    this.l1Changed = new Set();
  }
}
