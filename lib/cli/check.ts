// instar check [-f fmt] [--output human|json] [-r leaks|all] [-q] [-U] FILE
// Exit codes as qemu-img: 0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 no checks.
// -r (qcow2 only): the check guest reports what qemu's repair would fix,
// lib/formats/qcow2/repair.ts decides as qemu does, repair_plan.ts plans the
// writes, apply_steps.ts applies them, and the check runs again.
import { runScan } from "./scan_guest.ts";
import { imageRef } from "./image_ref.ts";
import { checkOpFlags, nameKinds, ops, records } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { nameBytes } from "../abi/records.ts";
import { getopt } from "./getopt.ts";
import { CliError, usageError } from "./messages.ts";
import {
  CACHE_MODES,
  expectOneFile,
  IMAGE_LONGS_HEAD,
  IMAGE_LONGS_TAIL,
  imageCommandOption,
  type ImageCommandOptions,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
  outputFormat,
  readLock,
} from "./common.ts";
import { chainInputs, openChain, OpenError, openFailure, openImage, unlockForRead } from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { runGuest } from "../vmm/guest.ts";
import { formatCheckMessage } from "../abi/check_messages.ts";
import { type CheckFacts, checkHuman, checkJson } from "../output/check.ts";
import { errorRecordMessage } from "../formats/qcow2/errors.ts";
import { decideRepair, type RepairMode } from "../formats/qcow2/repair.ts";
import { planEntryZeroes, planQcow2Repair } from "../formats/qcow2/repair_plan.ts";
import { fixSnapshotTable } from "../formats/qcow2/snapshot_fix.ts";
import { snapshotCountPatch } from "../formats/qcow2/snapshot_plan.ts";
import { planQcow2Rebuild } from "../formats/qcow2/rebuild_plan.ts";
import type { FilePlan } from "../formats/plan.ts";
import { resizeHost } from "./resize_host.ts";
import {
  type BitmapResize,
  prepareBitmapResize,
  storeBitmapsAfterResize,
} from "../formats/qcow2/resize_bitmaps.ts";
import { decodeBitmapScan } from "../formats/qcow2/bitmap_scan.ts";
import { BME_FLAG_IN_USE } from "../formats/qcow2/bitmap_plan.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { MAX_SPOOL_LONG, openStdin, parseMaxSpool } from "./stdin_image.ts";
import { DEFAULT_MAX_SPOOL } from "../host/stdio_stream.ts";

export async function checkCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let quiet = false;
  let cache = "writeback";
  let repair: RepairMode | undefined;
  let maxSpool = DEFAULT_MAX_SPOOL;
  const s: ImageCommandOptions = {};
  const o = newInstarOptions(base);
  const operands = getopt(argv, ":hf:r:T:qU", [
    ...IMAGE_LONGS_HEAD,
    { name: "repair", hasArg: true, id: "r" },
    ...IMAGE_LONGS_TAIL,
    MAX_SPOOL_LONG,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value) || imageCommandOption(s, id, value)) return;
    switch (id) {
      case "r":
        if (value !== "leaks" && value !== "all") {
          throw usageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${value}`);
        }
        repair = value;
        break;
      case "T":
        cache = value!;
        break;
      case "q":
        quiet = true;
        break;
      case "max-spool":
        maxSpool = parseMaxSpool(value!);
        break;
    }
  });
  const { output } = s;
  const ref = imageRef(expectOneFile(operands), s.fmt, o.imageOpts, io.err);
  const filename = ref.filename;
  const fmt = ref.format;
  // `-`: stdin, spooled; nothing to repair in place.
  if (filename === "-" && repair) {
    throw new CliError(["Could not repair '-': an image read from stdin cannot be repaired in place"]);
  }
  const format = outputFormat(output);
  if (!CACHE_MODES.includes(cache)) throw new CliError([`Invalid source cache option: ${cache}`]);

  let top;
  try {
    // check -r opens the image read-write: qemu's write locks.
    const lock = repair ? LOCKS.write : readLock(s.forceShare);
    let chain;
    if (filename === "-") {
      // The check itself reports what lies past the end of a truncated stream.
      top = await openStdin(filename, maxSpool, {
        format: fmt,
        unsafeQuirks: o.unsafeQuirks,
        checkMode: true,
        skipCompleteness: true,
      });
      chain = [top];
    } else {
      top = await openImage(filename, {
        format: fmt,
        unsafeQuirks: o.unsafeQuirks,
        checkMode: true,
        backingDirs: o.backingDirs,
        lock,
        encryptFormat: ref.encryptFormat,
      });
      // qemu-img opens the whole chain (a missing backing file fails the check).
      chain = await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, lock);
    }
    // check opens with I/O: an encrypted image must unlock before "does not support checks".
    await unlockForRead(top, ref.keySecret, ref.keySecretOption, o.secrets, chain);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(ref.display, e);
    throw e;
  }
  if (!top.driver.check) throw new CliError(["This image format does not support checks"], false, 63);

  if (repair && top.format !== "qcow2") {
    throw new CliError([`Could not repair '${filename}': instar repairs only qcow2 images`]);
  }
  const q = top.qcow2;
  // Writes go through one host that follows the file's length from step to step.
  const refuse = (why: string) =>
    new CliError([`Could not repair '${filename}': ${why}; nothing was written`]);
  const host = resizeHost(top, "off", refuse);
  // qemu's read-write open of an image with persistent bitmaps marks them in
  // use, and its close stores every bitmap anew (new clusters, the old ones
  // freed), whatever the check found: the bitmap planner replays both
  // (resize_bitmaps.ts), the store on a scan of the repaired file.
  // Bitmaps already in use (inconsistent) are neither marked nor stored:
  // when every bitmap is, qemu leaves them as they are.
  let bitmaps: BitmapResize | undefined;
  // The check-mode info run lists the bitmaps with their flags.
  const listed = q?.bitmaps;
  if (
    repair && q && (q.nbBitmaps > 0 || q.hasBitmapsExt) && !(listed?.length && listed.every((b) => b.inUse))
  ) {
    if (listed?.some((b) => b.inUse)) {
      throw refuse("instar does not repair images with some bitmaps in use and others not");
    }
    // qemu's check-mode open skips the snapshot table (s->nb_snapshots
    // stays 0), and marking the bitmaps in use rewrites the header from
    // that state: qemu-img 7.2 drops every internal snapshot, then repairs
    // their clusters as leaks. instar does not replicate that loss.
    if (q.nbSnapshots > 0 && q.nbBitmaps > 0) {
      throw refuse(
        "qemu-img would drop every internal snapshot of an image with persistent bitmaps here; instar does not",
      );
    }
    const inUse = new Error("in use");
    try {
      bitmaps = await prepareBitmapResize({ ...host, fail: () => inUse }, filename, top.virtualSize);
    } catch (e) {
      if (e !== inUse) throw e;
      const scan = await host.bitmapScan!();
      let all = false;
      try {
        all = decodeBitmapScan(scan.records, scan.fileSize).bitmaps.every((b) =>
          (b.flags & BME_FLAG_IN_USE) !== 0
        );
      } catch {
        all = false;
      }
      if (!all) throw refuse("instar does not repair images with some bitmaps in use and others not");
    }
  }
  const storeBitmaps = async () => {
    const after = (why: string) => new CliError([`Could not repair '${filename}': ${why}`]);
    if (bitmaps) await storeBitmapsAfterResize({ ...host, refuse: after }, filename, bitmaps);
  };

  const first = await runCheck(chainInputs([top]), filename, repair);
  const f = ended(first, io);
  if (!repair) {
    for (const t of first.texts) io.err(t);
    return report(f, top.format, ref.display, format, quiet, io);
  }

  let d;
  try {
    d = decideRepair(repair, first.recs, first.texts, f);
  } catch (e) {
    throw new CliError([`Check failed: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
  }
  if (d.kind === "refuse") {
    throw new CliError([`Could not repair '${filename}': ${d.why}; nothing was written`]);
  }
  // qemu writes the snapshot table anew after the refcount repairs (the
  // rebuild, the grown file), with its allocator.
  const fixing = d.kind === "repair" || d.kind === "rebuild" ? d : undefined;
  const snapshots = fixing?.snapshots ?? false;
  const overhang = fixing?.overhang ?? 0n;
  // (with bitmaps to mark and store there are no snapshots: refused above)
  // Overhanging snapshots dropped: qemu writes the header's count before
  // anything else (qcow2_check_read_snapshot_table).
  const nbSnapshots = BigInt(q?.nbSnapshots ?? 0) - overhang;
  if (nbSnapshots < 0n) {
    throw new CliError(["Check failed: sandbox failure: more snapshots dropped than held"]);
  }
  // -r all rebuilding the refcount structures: the new blocks and table,
  // then the flags and the header bits below, on the grown file.
  let rebuilt: FilePlan[] = [];
  let fileSize = top.fileSize;
  // -r all first grows the file to end with each refcount block past its
  // end (qemu's bdrv_truncate in check_refblocks), then makes L2 entries of
  // unaligned preallocated clusters zero clusters; both before the rest.
  const early: FilePlan[] = [];
  if (overhang) early.push({ patches: [snapshotCountPatch(Number(nbSnapshots))], fileSize });
  if (d.kind === "rebuild" || d.kind === "repair") {
    const cs = 1n << BigInt(q!.clusterBits);
    for (const off of d.grow) {
      if (off < 0n || off % cs !== 0n || off + cs > 1n << 62n) {
        throw new CliError(["Check failed: sandbox failure: refcount block to grow to out of range"]);
      }
      if (off + cs > fileSize) fileSize = off + cs;
    }
    if (fileSize !== top.fileSize) early.push({ patches: [], fileSize });
    const z = planEntryZeroes(q!.clusterBits, fileSize, d.zeroes);
    if (!z.ok) throw new CliError([`Check failed: sandbox failure: ${z.error.message}`]);
    early.push(...z.value);
  }
  if (d.kind === "rebuild") {
    const r = planQcow2Rebuild({
      clusterBits: q!.clusterBits,
      refcountBits: q!.refcountBits,
      fileSize,
      ...d.rebuild,
    });
    if (!r.ok) {
      if (r.error.kind === "unsupported") {
        throw new CliError([`Could not repair '${filename}': ${r.error.message}; nothing was written`]);
      }
      throw new CliError([`Check failed: sandbox failure: ${r.error.message}`]);
    }
    rebuilt = r.value.steps;
    fileSize = r.value.fileSize;
    for (const t of d.before) io.err(t);
    io.err("Rebuilding refcount structure\n");
    for (const t of d.again) io.err(t);
    for (const l of r.value.leaks) io.err(formatCheckMessage(1, [2n, l.cluster, l.from, l.to]));
    for (const t of d.after) io.err(t);
  } else {
    for (const t of d.lines) io.err(t);
  }
  // The header's incompatible bits: qemu's read-write open and close of
  // the image clears the dirty bit however the check ends (qcow2_inactivate
  // calls qcow2_mark_clean), and a check that leaves no corruption clears
  // the corrupt bit too (qcow2_mark_consistent). qemu rewrites the header
  // then; only the incompatible_features field differs.
  const failed = d.kind === "rebuild_error";
  const clean = !failed && f.checkErrors === 0n && f.corruptions === 0n;
  const header = q!.version === 3
    ? { incompatible: q!.incompatibleFeatures, clear: clean ? 3n : 1n }
    : undefined;
  const plan = planQcow2Repair({
    clusterBits: q!.clusterBits,
    refcountBits: q!.refcountBits,
    fileSize,
    fixes: d.kind === "repair" ? d.fixes : [],
    oflags: d.kind === "rebuild_error" ? [] : d.oflags,
    zeroed: d.kind === "rebuild_error" ? [] : d.zeroes.map((z) => z.offset),
    // with a snapshot table to write, the header's bits come after it
    header: snapshots ? undefined : header,
  });
  if (!plan.ok) throw new CliError([`Check failed: sandbox failure: ${plan.error.message}`]);
  if (bitmaps) await host.applySteps(bitmaps.openSteps, "Check failed", "discard", true);
  await host.applySteps([...early, ...rebuilt, ...plan.value], "Check failed", "discard", true);
  if (snapshots) {
    const size = await fixSnapshotTable({
      scan: (args) => scanSnapshots(top, filename, args),
      applySteps: (steps) => host.applySteps(steps, "Check failed", "discard", true),
      fail: (why) => new CliError([`Could not repair '${filename}': ${why}`]),
    }, Number(nbSnapshots));
    const bits = planQcow2Repair({
      clusterBits: q!.clusterBits,
      refcountBits: q!.refcountBits,
      fileSize: size,
      fixes: [],
      header,
    });
    if (!bits.ok) throw new CliError([`Check failed: sandbox failure: ${bits.error.message}`]);
    await host.applySteps(bits.value, "Check failed", "discard", true);
  }
  if (failed) {
    await storeBitmaps();
    throw new CliError(["Check failed: Input/output error"]);
  }
  if (f.leaksFixed === 0n && f.corruptionsFixed === 0n) {
    const code = report(f, top.format, ref.display, format, quiet, io);
    await storeBitmaps();
    return code;
  }
  if (format === "human" && !quiet) {
    io.out(
      "The following inconsistencies were found and repaired:\n\n" +
        `    ${f.leaksFixed} leaked clusters\n    ${f.corruptionsFixed} corruptions\n\n` +
        "Double checking the fixed image now...\n",
    );
  }
  const again = await runCheck(chainInputs([top]), filename, undefined);
  const g = ended(again, io);
  for (const t of again.texts) io.err(t);
  const code = report(
    { ...g, leaksFixed: f.leaksFixed, corruptionsFixed: f.corruptionsFixed },
    top.format,
    ref.display,
    format,
    quiet,
    io,
  );
  await storeBitmaps();
  return code;
}

/** The snapshot_scan guest on the image being repaired. */
async function scanSnapshots(
  img: { openPath: string; formatCode: number; dev: bigint; ino: bigint },
  filename: string,
  args: bigint[],
) {
  return await runScan(
    "snapshot_scan",
    img,
    { format: img.formatCode, args },
    (why, kind) =>
      new CliError([kind === "sandbox" ? `Check failed: ${why}` : `Could not repair '${filename}': ${why}`]),
  );
}

type CheckRun = {
  recs: Rec[];
  /** The stderr text of each CHECK_MSG, in order. */
  texts: string[];
} & ({ facts: CheckFacts; fail?: undefined } | { facts: undefined; fail: CliError });

/** A run that ended in qemu's error: its diagnostics, then the error. */
function ended(run: CheckRun, io: Io): CheckFacts {
  if (run.facts) return run.facts;
  for (const t of run.texts) io.err(t);
  throw run.fail;
}

/** One run of the check guest; throws qemu's errors for a failed check. */
async function runCheck(
  inputs: ReturnType<typeof chainInputs>,
  filename: string,
  repair: RepairMode | undefined,
): Promise<CheckRun> {
  let result;
  try {
    result = await runGuest({
      op: "check",
      opCode: ops.CHECK,
      inputs,
      flags: repair === "all" ? checkOpFlags.REPAIR_ALL : repair === "leaks" ? checkOpFlags.REPAIR_LEAKS : 0,
    });
  } catch (e) {
    throw new CliError([`Check failed: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
  }
  const recs = result.records;
  const texts: string[] = [];
  let pendingNames: string[] = [];
  for (const r of recs) {
    // Snapshot ids/names a diagnostic quotes arrive as NAME records just before it.
    if (
      r.type === records.NAME &&
      (r.fields.kind === nameKinds.SNAPSHOT_ID || r.fields.kind === nameKinds.SNAPSHOT_NAME)
    ) {
      pendingNames.push(new TextDecoder().decode(nameBytes(r)));
    }
    if (r.type === records.CHECK_MSG) {
      try {
        texts.push(
          formatCheckMessage(r.fields.code as number, r.fields.a as bigint[], "instar", pendingNames),
        );
      } catch (e) {
        throw new CliError([`Check failed: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
      }
      pendingNames = [];
    }
  }
  const err = recs.find((r) => r.type === records.ERROR);
  if (err) {
    const msg = errorRecordMessage(err);
    return { recs, texts, facts: undefined, fail: new CliError([`Could not open '${filename}': ${msg}`]) };
  }
  const checks = recs.filter((r) => r.type === records.CHECK);
  if (checks.length !== 1) throw new CliError(["Check failed: sandbox failure: no check result"]);
  const c = checks[0].fields;
  // A non-zero CHECK.flags is the errno of a check qemu ends early
  // (bdrv_check returned an error): qemu prints no summary, only this.
  const errno = c.flags as number;
  if (errno !== 0) {
    const why = CHECK_ERRNO_TEXT[errno] ?? `Unknown error ${errno}`;
    return { recs, texts, facts: undefined, fail: new CliError([`Check failed: ${why}`]) };
  }
  const n = (k: string) => c[k] as bigint;
  const facts: CheckFacts = {
    filename,
    format: "",
    checkErrors: n("check_errors"),
    corruptions: n("corruptions"),
    leaks: n("leaks"),
    corruptionsFixed: n("corruptions_fixed"),
    leaksFixed: n("leaks_fixed"),
    imageEndOffset: n("image_end_offset"),
    totalClusters: n("total_clusters"),
    allocatedClusters: n("allocated_clusters"),
    fragmentedClusters: n("fragmented_clusters"),
    compressedClusters: n("compressed_clusters"),
  };
  // Counters are printed as int64 by qemu; anything larger is a lying guest.
  for (const [k, v] of Object.entries(facts)) {
    if (typeof v === "bigint" && v >= 1n << 63n) {
      throw new CliError([`Check failed: sandbox failure: ${k} out of range`]);
    }
  }
  return { recs, texts, facts };
}

/** Prints a check's summary; returns qemu-img's exit code for it. */
function report(
  facts: CheckFacts,
  fmt: string,
  filename: string,
  format: string,
  quiet: boolean,
  io: Io,
): number {
  const f = { ...facts, filename, format: fmt };
  if (!quiet) io.out(format === "json" ? checkJson(f) : checkHuman(f));
  if (f.checkErrors !== 0n) {
    io.err("instar: Check failed\n");
    return 1;
  }
  if (f.corruptions !== 0n) return 2;
  if (f.leaks !== 0n) return 3;
  return 0;
}

/** strerror() of the errnos the check guest can report (Linux numbering). */
const CHECK_ERRNO_TEXT: Record<number, string> = {
  1: "Operation not permitted",
  5: "Input/output error",
  12: "Cannot allocate memory",
  22: "Invalid argument",
  27: "File too large",
  28: "No space left on device",
  75: "Value too large for defined data type",
  84: "Invalid or incomplete multibyte or wide character",
  95: "Operation not supported",
};
