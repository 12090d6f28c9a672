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
//   - with -r all, check_refblocks grows the file to end with a refcount
//     block past its end ("Repairing refcount block N is outside image":
//     the decision's `grow`), and check_refcounts_l2 makes the L2 entry of
//     an unaligned preallocated cluster a zero cluster ("Repairing
//     offset=...", a REPAIR_L2ZERO record: the decision's `zeroes`);
//   - errors qemu prints and counts but never repairs (unaligned data
//     clusters, reserved bits, references past the end of the file, ...)
//     pass through; a rebuild's second calculate_refcounts prints the L1/L2
//     ones again after "Rebuilding refcount structure";
//   - with -r all, an incomplete snapshot table entry ("Repairing snapshot
//     table entry N is incomplete") or one with too much extra data
//     ("Discarding too much extra metadata ...") has
//     qcow2_check_fix_snapshot_table write the table anew after the refcount
//     repairs, the rebuild or the grown file (`snapshots`);
//   - with -r all, overhanging snapshots (past the 65,536th: "Discarding N
//     overhanging snapshots"; from the entry that takes the table past
//     64 MiB: "... (snapshot table is too big)") are dropped: the header's
//     count is written first (`overhang`), their clusters are leaks the
//     refcount repair frees, and the table is written anew only when an
//     entry is also incomplete or has too much extra data;
//   - instar refuses (nothing written) the rest: other L1/L2 entry fixes,
//     an unaligned refcount block qemu reads (it marks the image corrupt),
//     a block too far past the end to grow the file to.
import { records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { checkMessages, formatCheckMessage } from "../../abi/check_messages.ts";
import type { OflagFix, RefcountFix, ZeroFix } from "./repair_plan.ts";
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
const REBUILDS_TOO = code("REFBLOCK_UNALIGNED");
/** A refcount block past the end: -r all grows the file unless the guest
 * left qemu's ERROR line (too far for instar); -r leaks only prints it. */
const OUTSIDE = code("REFBLOCK_OUTSIDE"), OUTSIDE_FIX = code("REFBLOCK_OUTSIDE_REPAIR");
/** qemu read an unaligned refcount block: it marks the image corrupt and stops. */
const STRUCTURE = new Set(["CORRUPT_REFBLOCK_UNALIGNED", "REFCOUNT_EIO"].map(code));
/** L2 entries check_refcounts_l2 rewrites as zero clusters (-r all). */
const ZERO_FIX = code("PREALLOC_UNALIGNED_REPAIR");
/** An incomplete snapshot table entry: -r all writes the table anew. */
const SNAP_FIX = code("SNAPSHOT_INCOMPLETE_REPAIR");
/** Too much extra data in an entry: -r all drops it and writes the table anew. */
const SNAP_DROP = code("SNAPSHOT_EXTRA_DISCARD");
/** Overhanging snapshots (past the 65,536th, or past 64 MiB of table): -r all
 * drops them and writes the header's count at once. */
const OVERHANG = new Set(["SNAPSHOT_OVERHANG_DISCARD", "SNAPSHOT_TOO_BIG_DISCARD"].map(code));
/** Errors qemu's -r all prints and counts but does not repair; a rebuild's
 * second calculate_refcounts prints them again (REPRINT). */
const REPRINT = new Set(
  [
    "L2_RESERVED_BITS",
    "COMPRESSED_COPIED",
    "SUBCLUSTER_BITMAP_CORRUPT",
    "DATA_UNALIGNED",
    "UNALLOCATED_BITMAP",
    "L1_RESERVED_BITS",
  ].map(code),
);
/** ...and those only passed through when there is no rebuild (what they
 * count may change with the file's length). */
const PRINT_ONLY = new Set([...REPRINT, code("REGION_PAST_EOF")]);

export type RepairDecision =
  /** Print `lines` (the first check's stderr), then fail as qemu does: EIO. */
  | { kind: "rebuild_error"; lines: string[] }
  /** Nothing written; `why` is instar's refusal. */
  | { kind: "refuse"; why: string }
  /** -r all rebuilds the refcount structures: print `before`, "Rebuilding
   * refcount structure", `again`, the planner's leak lines, then `after`. */
  | {
    kind: "rebuild";
    before: string[];
    again: string[];
    after: string[];
    grow: bigint[];
    zeroes: ZeroFix[];
    rebuild: Pick<RebuildInput, "nbClusters" | "runs" | "oldMeta">;
    oflags: OflagFix[];
    snapshots: boolean;
    overhang: bigint;
  }
  /** Print `lines`; apply `fixes` and `oflags` (maybe none). */
  | {
    kind: "repair";
    lines: string[];
    fixes: RefcountFix[];
    oflags: OflagFix[];
    grow: bigint[];
    zeroes: ZeroFix[];
    /** Write the snapshot table anew after the repairs. */
    snapshots: boolean;
    /** Snapshots dropped from the end of the table (the header's count goes down by this). */
    overhang: bigint;
  };

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
  // -r all's L2 entries made zero clusters, and refcount blocks the file grows to hold.
  const zeroes: ZeroFix[] = recs.filter((r) => r.type === records.REPAIR_L2ZERO).map((r) => ({
    offset: r.fields.index as bigint,
    to: r.fields.value as bigint,
  }));
  const zeroLines = msgs.filter((m) => m.fields.code === ZERO_FIX).length;
  const grow = msgs.filter((m) => m.fields.code === OUTSIDE_FIX).map((m) => (m.fields.a as bigint[])[1]);
  if (mode === "leaks" && (zeroLines || grow.length || zeroes.length)) {
    throw new Error("check sent -r all repairs with -r leaks");
  }
  if (zeroes.length > zeroLines) throw new Error("check sent an L2 entry without its repair");
  if (zeroes.length < zeroLines) {
    return { kind: "refuse", why: "instar makes at most 64 L2 entries zero clusters in one repair" };
  }
  if (oflags.length > 0 && mode === "leaks" && (counts.corruptions !== 0n || counts.leaks !== 0n)) {
    throw new Error("check repaired flags with -r leaks over errors left");
  }
  let rebuild = false;
  let overhang = 0n;
  for (const [i, m] of msgs.entries()) {
    const c = m.fields.code as number, a = m.fields.a as bigint[];
    if (OVERHANG.has(c)) {
      if (mode === "leaks" || a[0] === 0n || a[0] > 0xffffffffn) throw new Error("check sent a bad overhang");
      overhang += a[0];
    } else if (c === MISMATCH) {
      if (mismatches.has(a[1]) || a[2] === a[3]) throw new Error("check sent a repeated or empty mismatch");
      mismatches.set(a[1], { cluster: a[1], r1: a[2], r2: a[3] });
      lastMismatch = i;
    } else if (OFLAG.has(c)) {
      if (i < lastMismatch) throw new Error("check sent OFLAG_COPIED before the refcounts");
    } else if (REBUILDS.has(c) || c === REBUILDS_TOO) {
      rebuild = true; // qemu's check_refblocks sets *rebuild
    } else if (STRUCTURE.has(c)) {
      return { kind: "refuse", why: "instar does not repair a refcount block qemu cannot read" };
    } else if (c === OUTSIDE && mode === "all") {
      return { kind: "refuse", why: "instar does not grow the file this far for a refcount block" };
    } else if (
      mode === "all" && !PRINT_ONLY.has(c) && c !== ZERO_FIX && c !== OUTSIDE_FIX && c !== SNAP_FIX &&
      c !== SNAP_DROP
    ) {
      return { kind: "refuse", why: "instar does not repair the snapshot table or these L1/L2 entries" };
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
  const snapshots = msgs.some((m) => m.fields.code === SNAP_FIX || m.fields.code === SNAP_DROP);
  if (snapshots && mode === "leaks") throw new Error("check sent -r all repairs with -r leaks");
  if (rebuild) {
    if (msgs.some((m) => PRINT_ONLY.has(m.fields.code as number) && !REPRINT.has(m.fields.code as number))) {
      return {
        kind: "refuse",
        why: "instar does not rebuild refcount structures with references past the end of the file",
      };
    }
    const again = texts.filter((_, i) => REPRINT.has(msgs[i].fields.code as number));
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
    return {
      kind: "rebuild",
      before,
      again,
      after,
      rebuild: { nbClusters, runs, oldMeta },
      oflags,
      grow,
      zeroes,
      snapshots,
      overhang,
    };
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
  return { kind: "repair", lines, fixes, oflags, grow, zeroes, snapshots, overhang };
}
