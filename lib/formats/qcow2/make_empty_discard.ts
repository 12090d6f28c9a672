// qcow2_make_empty's fallback for an overlay with internal snapshots, pure:
// qcow2_cluster_discard(0, disk size, QCOW2_DISCARD_SNAPSHOT, full_discard)
// as qemu 7.2 runs it, one L2 table after another (discard_in_l2_slice; the
// default l2-cache-entry-size makes a slice the whole table). For each L1
// index of the disk, get_cluster_table: a table whose L1 entry lacks
// OFLAG_COPIED (shared with a snapshot, or missing) is replaced by
// l2_allocate (a new cluster, first fit, the L1 entry pointing at it with
// COPIED) and the old one loses a reference (QCOW2_DISCARD_OTHER: never
// punched); then every entry of the disk range is cleared and
// qcow2_free_any_cluster drops one reference from what it mapped (a
// compressed entry: each host cluster its data spans). A cluster whose
// count reaches 0 is discarded (QCOW2_DISCARD_SNAPSHOT passes discards by
// default: a hole); a shared one (a snapshot still maps it) only loses the
// reference. The new tables end up all zeroes (every entry cleared), so
// they are written as zeroes. The file is not cut.
//
// Crash-safe order, one round per table that frees something (the clusters
// it frees may be the next table's): (A) counts raised and the new tables
// written, nothing points at them yet; (B) new refcount blocks hooked up;
// (C) the L1 entries switched and the tables kept in place cleared
// (references withdrawn); (D) the counts lowered; (E) the clusters that
// reached 0 punched. A crash between two steps leaves at most leaked
// clusters (qemu-img check -r leaks).
import { fail, type FilePlan, ok, type Patch, type PlanResult, planViolation } from "../plan.ts";
import { RefcountError } from "./refcounts.ts";
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
import type { ExistingRun } from "./write_plan.ts";

/** Most L2 tables one plan handles (a table's round is a few steps). */
export const MAX_DISCARD_TABLES = 1n << 16n;

export interface DiscardEmptyInput {
  /** The overlay's metadata, with the compressed entries (resize_scan arg[1] bit 2). */
  scan: Qcow2ResizeScan;
  /** The overlay's own clusters (a map of it alone), ascending and disjoint. */
  existing: ExistingRun[];
}

class Refusal extends Error {}

/** The steps of qcow2_make_empty's discard over the whole disk; a typed refusal when beyond instar. */
export function planDiscardEmpty(x: DiscardEmptyInput): PlanResult<FilePlan[]> {
  const bad = scanViolation(x.scan);
  if (bad) return fail("unsupported", `Inconsistent image metadata: ${bad}`);
  if (x.scan.extendedL2) return fail("unsupported", "instar does not empty images with extended L2 entries");
  try {
    const steps = run(x);
    for (const s of steps) {
      const v = planViolation(s);
      if (v) return fail("unsupported", `Emptying plan broke an invariant: ${v}`);
    }
    return ok(steps);
  } catch (e) {
    if (e instanceof Refusal) return fail("unsupported", e.message);
    if (e instanceof RefcountError) return fail(e.kind === "too_big" ? "overflow" : "unsupported", e.message);
    if (e instanceof RangeError) return fail("overflow", e.message);
    throw e;
  }
}

function run(x: DiscardEmptyInput): FilePlan[] {
  const scan = x.scan;
  const log = new StepLog(scan.fileSize);
  const rc = modelOf(scan, log);
  const cb = BigInt(scan.clusterBits), cs = 1n << cb, perL2 = cs / 8n;
  const clusters = (scan.virtualSize + cs - 1n) >> cb;
  const tables = (clusters + perL2 - 1n) / perL2;
  if (tables > BigInt(scan.l1Size)) throw new Refusal("the L1 table is shorter than the disk");
  if (tables > MAX_DISCARD_TABLES) throw new Refusal("too many L2 tables to empty");
  const ex = [...x.existing].sort((a, b) => (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0));
  let end = 0n;
  for (const e of ex) {
    if (e.count <= 0n || e.cluster < end) throw new Refusal("inconsistent cluster map of the image");
    if ((e.kind === "normal" || e.kind === "zero_alloc") && (e.host === undefined || e.host % cs !== 0n)) {
      throw new Refusal("inconsistent cluster map of the image");
    }
    end = e.cluster + e.count;
  }
  if (end > clusters) throw new Refusal("the cluster map passes the disk's end");

  // The round being built.
  let a: Patch[] = [];
  let c: Patch[] = [];
  let frees: [bigint, bigint][] = [];
  let freeCount = 0;
  /** One reference less on host cluster h (contiguous clusters as one run). */
  const free = (h: bigint) => {
    const last = frees[frees.length - 1];
    if (last && last[1] === h) last[1]++;
    else frees.push([h, h + 1n]);
    freeCount++;
  };
  let punchIfFree: bigint[] = [];
  const endRound = () => {
    log.push([...blockPatches(rc), ...a]);
    log.push(hookupPatches(rc));
    log.push(c);
    for (const [s, e] of frees) rc.update(s, e - s, -1n);
    log.push(blockPatches(rc));
    const punches: Patch[] = [];
    for (const h of [...new Set(punchIfFree)].sort((p, q) => (p < q ? -1 : p > q ? 1 : 0))) {
      // A punch never grows the file (compressed data may end inside its last cluster).
      const at = h << cb, len = at + cs < log.size ? cs : log.size - at;
      if (rc.get(h) === 0n && len > 0n) punches.push({ kind: "zero", offset: at, length: len });
    }
    log.push(punches);
    a = [];
    c = [];
    frees = [];
    freeCount = 0;
    punchIfFree = [];
  };

  let k = 0;
  for (let idx = 0n; idx < tables; idx++) {
    const from = idx * perL2, to = from + perL2 < clusters ? from + perL2 : clusters;
    const e = scan.l1.get(Number(idx)) ?? 0n;
    const off = e & L1E_OFFSET_MASK;
    if (off % cs !== 0n) throw new Refusal("an L2 table offset is not cluster aligned");
    let freed = false;
    if (!(e & COPIED)) {
      // l2_allocate, then the old table's reference dropped.
      const at = rc.alloc(1n) << cb;
      a.push({ kind: "write", offset: at, bytes: new Uint8Array(Number(cs)) });
      c.push({ kind: "write", offset: scan.l1Offset + idx * 8n, bytes: be64(at | COPIED) });
      if (off) {
        free(off >> cb);
        freed = true;
      }
    } else {
      // Cleared in place: the entries of the disk range.
      c.push({ kind: "write", offset: off, bytes: new Uint8Array(Number((to - from) * 8n)) });
    }
    // The entries' references, in guest order.
    while (k < ex.length && ex[k].cluster + ex[k].count <= from) k++;
    if (k < ex.length && ex[k].cluster < to && !off) {
      throw new Refusal("inconsistent cluster map of the image (a cluster without an L2 table)");
    }
    for (let j = k; j < ex.length && ex[j].cluster < to; j++) {
      const r = ex[j];
      const s = r.cluster > from ? r.cluster : from, t = r.cluster + r.count < to ? r.cluster + r.count : to;
      for (let g = s; g < t; g++) {
        if (r.kind === "normal" || r.kind === "zero_alloc") {
          const h = (r.host! >> cb) + (g - r.cluster);
          free(h);
          punchIfFree.push(h);
          freed = true;
        } else if (r.kind === "compressed") {
          const m = scan.compressed?.get(g);
          if (!m) {
            throw new Refusal(
              "inconsistent cluster map of the image (a compressed cluster the scan did not list)",
            );
          }
          for (let h = m.first; h < m.first + m.count; h++) {
            free(h);
            punchIfFree.push(h);
          }
          freed = true;
        }
      }
      if (freeCount > 1 << 22) throw new Refusal("too many clusters to free");
    }
    // The clusters this table freed may be the next table's.
    if (freed || a.length + c.length >= 1024) endRound();
  }
  endRound();
  return log.steps;
}
