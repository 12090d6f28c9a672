// qemu-img check -r for qcow2, decided from the check guest's records (run
// with checkOpFlags.REPAIR_*): which of qemu 7.2's paths the repair takes
// (qcow2_check_refcounts with fix), the stderr lines its first check prints,
// and the refcount fixes to plan. qemu's paths:
//   - a mismatch over a zero refcount, a refcount table entry with reserved
//     bits or a refcount block not counted once needs a rebuild of the
//     refcount structures: with -r leaks qemu prints "ERROR need to rebuild
//     refcount structures" and fails with EIO (nothing written), with -r all
//     it rebuilds them (rebuild_plan.ts);
//   - otherwise each mismatch is printed a second time by the fixing pass
//     ("Repairing cluster ..." for those it fixes: leaks, and with -r all
//     refcounts below their references), then OFLAG_COPIED is checked
//     against the fixed refcounts;
//   - check_oflag_copied repairs OFLAG_COPIED flags (the guest's
//     "Repairing" lines, each followed by a REPAIR_OFLAG record) with -r all
//     always, with -r leaks "if that seems safe": no error left by then;
//   - instar refuses (nothing written) what qemu would repair beyond
//     refcounts and flags: L1/L2 entries, refcount blocks and the snapshot
//     table with -r all, and broken refcount tables or blocks.
import { records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { checkMessages, formatCheckMessage } from "../../abi/check_messages.ts";
import type { OflagFix, RefcountFix } from "./repair_plan.ts";
import type { RebuildInput } from "./rebuild_plan.ts";

export type RepairMode = "leaks" | "all";

const code = (name: string) => checkMessages.find((m) => m.name === name)!.code;
const MISMATCH = code("REFCOUNT_MISMATCH");
const OFLAG_L2_FIX = code("OFLAG_COPIED_L2_REPAIR");
const OFLAG_FIX = new Set([OFLAG_L2_FIX, code("OFLAG_COPIED_DATA_REPAIR")]);
const OFLAG = new Set([code("OFLAG_COPIED_L2"), code("OFLAG_COPIED_DATA"), ...OFLAG_FIX]);
/** Refcount-structure errors after which qemu rebuilds the structures (-r all). */
const REBUILDS = new Set(["REFTABLE_RESERVED_BITS", "REFBLOCK_REFCOUNT"].map(code));
/** Refcount-structure errors instar does not repair: an unaligned block
 * (qemu's reads of it fail and mark the image corrupt), a block past the
 * end of the file (qemu grows the file to it). */
const STRUCTURE = new Set(["REFBLOCK_UNALIGNED", "REFBLOCK_OUTSIDE"].map(code));

export type RepairDecision =
  /** Print `lines` (the first check's stderr), then fail as qemu does: EIO. */
  | { kind: "rebuild_error"; lines: string[] }
  /** Nothing written; `why` is instar's refusal. */
  | { kind: "refuse"; why: string }
  /** -r all rebuilds the refcount structures: print `before`, "Rebuilding
   * refcount structure", the planner's leak lines, then `after`. */
  | {
    kind: "rebuild";
    before: string[];
    after: string[];
    rebuild: Pick<RebuildInput, "nbClusters" | "runs" | "oldMeta">;
    oflags: OflagFix[];
  }
  /** Print `lines`; apply `fixes` and `oflags` (maybe none). */
  | { kind: "repair"; lines: string[]; fixes: RefcountFix[]; oflags: OflagFix[] };

interface Mismatch {
  cluster: bigint;
  r1: bigint;
  r2: bigint;
}

/**
 * `recs`: the repair-mode check's records; `texts[i]`: the printed text of
 * the i-th CHECK_MSG (the caller formatted them, names included);
 * `counts`: its CHECK record (leaks and corruptions are those left unfixed).
 */
export function decideRepair(
  mode: RepairMode,
  recs: Rec[],
  texts: string[],
  counts: { checkErrors: bigint; corruptions: bigint; leaks: bigint },
): RepairDecision {
  const msgs = recs.filter((r) => r.type === records.CHECK_MSG);
  if (msgs.length !== texts.length) throw new Error("check messages and their texts disagree");
  const mismatches = new Map<bigint, Mismatch>();
  let lastMismatch = -1;
  // Each "Repairing OFLAG_COPIED" line is followed by its REPAIR_OFLAG record.
  const oflags: OflagFix[] = [];
  let pendingOld: bigint | undefined;
  for (const r of recs) {
    if (r.type === records.CHECK_MSG && OFLAG_FIX.has(r.fields.code as number)) {
      if (pendingOld !== undefined) throw new Error("check sent a flag repair without its entry");
      const a = r.fields.a as bigint[];
      pendingOld = r.fields.code === OFLAG_L2_FIX ? a[1] : a[0];
    } else if (r.type === records.REPAIR_OFLAG) {
      if (pendingOld === undefined) throw new Error("check sent an entry without its flag repair");
      oflags.push({ offset: r.fields.index as bigint, from: pendingOld, to: r.fields.value as bigint });
      pendingOld = undefined;
    }
  }
  if (pendingOld !== undefined) throw new Error("check sent a flag repair without its entry");
  if (oflags.length > 0 && mode === "leaks" && (counts.corruptions !== 0n || counts.leaks !== 0n)) {
    throw new Error("check repaired flags with -r leaks over errors left");
  }
  let rebuild = false;
  for (const [i, m] of msgs.entries()) {
    const c = m.fields.code as number, a = m.fields.a as bigint[];
    if (c === MISMATCH) {
      if (mismatches.has(a[1]) || a[2] === a[3]) throw new Error("check sent a repeated or empty mismatch");
      mismatches.set(a[1], { cluster: a[1], r1: a[2], r2: a[3] });
      lastMismatch = i;
    } else if (OFLAG.has(c)) {
      if (i < lastMismatch) throw new Error("check sent OFLAG_COPIED before the refcounts");
    } else if (REBUILDS.has(c)) {
      rebuild = true; // qemu's check_refblocks sets *rebuild
    } else if (STRUCTURE.has(c)) {
      return { kind: "refuse", why: "instar does not repair refcount tables or blocks" };
    } else if (mode === "all") {
      return { kind: "refuse", why: "instar repairs only refcounts and leaked clusters" };
    }
  }
  if (counts.checkErrors !== 0n) return { kind: "refuse", why: "the check itself failed" };
  const compareEnd = lastMismatch + 1;
  if ([...mismatches.values()].some((m) => m.r1 === 0n)) rebuild = true;
  // Everything before check_oflag_copied, and its lines.
  const isFlag = (i: number) => OFLAG.has(msgs[i].fields.code as number);
  const before = texts.filter((_, i) => !isFlag(i)), after = texts.filter((_, i) => isFlag(i));
  if (rebuild && mode === "leaks") {
    return { kind: "rebuild_error", lines: before.concat("ERROR need to rebuild refcount structures\n") };
  }
  if (rebuild) {
    const runs: RebuildInput["runs"] = [], oldMeta: RebuildInput["oldMeta"] = [];
    let nbClusters: bigint | undefined;
    for (const r of recs) {
      if (
        nbClusters !== undefined && (r.type === records.REPAIR_REFRUN || r.type === records.REPAIR_OLDMETA)
      ) {
        throw new Error("check sent rebuild records after their end");
      }
      const f = r.fields;
      if (r.type === records.REPAIR_REFRUN) {
        runs.push({ start: f.start as bigint, count: f.count as bigint, refcount: f.refcount as bigint });
      } else if (r.type === records.REPAIR_OLDMETA) {
        oldMeta.push({ start: f.start as bigint, count: f.count as bigint, refcount: f.refcount as bigint });
      } else if (r.type === records.REPAIR_REBUILD) {
        if (nbClusters !== undefined) throw new Error("check sent two rebuilds");
        nbClusters = f.index as bigint;
      }
    }
    if (nbClusters === undefined) throw new Error("check sent no rebuild");
    return { kind: "rebuild", before, after, rebuild: { nbClusters, runs, oldMeta }, oflags };
  }
  const fixable = (m: Mismatch) => m.r1 > m.r2 || mode === "all";
  // The fixing pass prints every mismatch again, in the same order.
  const second = [...mismatches.values()].map((m) =>
    formatCheckMessage(MISMATCH, [fixable(m) ? 2n : m.r1 < m.r2 ? 0n : 1n, m.cluster, m.r1, m.r2])
  );
  const lines = [...texts.slice(0, compareEnd), ...second, ...texts.slice(compareEnd)];
  const fixes: RefcountFix[] = [];
  for (const r of recs.filter((r) => r.type === records.REPAIR_REFCOUNT)) {
    const m = mismatches.get(r.fields.cluster as bigint);
    if (!m || !fixable(m) || fixes.some((f) => f.cluster === m.cluster)) {
      throw new Error("check sent a repair without its mismatch");
    }
    fixes.push({
      cluster: m.cluster,
      refblock: r.fields.refblock as bigint,
      oldByte: r.fields.old_byte as number,
      from: m.r1,
      to: m.r2,
    });
  }
  if (fixes.length !== [...mismatches.values()].filter(fixable).length) {
    throw new Error("check sent fewer repairs than mismatches it fixes");
  }
  return { kind: "repair", lines, fixes, oflags };
}
