// instar commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] FILE
//
// qemu-img's img_commit: the data every layer above the base allocates is
// written into the base (qemu's active commit, a mirror job), the base
// grown first when it is shorter; then, without -d, the overlay is emptied
// (bdrv_make_empty). The base is the overlay's backing file, or the layer
// -b names. Which clusters move is read by the map guest; a qcow2 base's
// metadata by the resize_scan guest; the pure planners
// (lib/formats/qcow2/write_plan.ts, commit_plan.ts) place them; the copy_runs
// guest moves the bytes into the base (lib/cli/write_rounds.ts). Every
// backing file passes the allowlist; writes go to the base and the overlay.
import { runScan } from "./scan_guest.ts";
import { formats } from "../abi/spec.ts";
import { getopt } from "./getopt.ts";
import { cvtnum } from "./options.ts";
import { CliError, usageError } from "./messages.ts";
import {
  CACHE_MODES,
  DATA_LONGS_HEAD,
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
} from "./common.ts";
import {
  chainInputs,
  chainNeedsNoKey,
  needsNoKey,
  openChain,
  type OpenedImage,
  OpenError,
  openFailure,
  openImage,
} from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { LockError, LOCKS, takeLock } from "../vmm/image_lock.ts";
import { applySteps } from "./apply_steps.ts";
import { mapRuns } from "./map_runs.ts";
import { applyWritePlan, type Move, moveData } from "./write_rounds.ts";
import { planQcow2Writes, type WritePlan } from "../formats/qcow2/write_plan.ts";
import {
  commitOps,
  existingRuns,
  makeEmptyMethod,
  mirrorOps,
  planMakeEmpty,
} from "../formats/qcow2/commit_plan.ts";
import {
  prepareBitmapReopen,
  type ReopenHost,
  storeBitmapsAtClose,
  truncateRefused,
} from "../formats/qcow2/bitmaps_reopen.ts";
import { bitmapScanOf, stageDirty } from "./commit_dirty.ts";
import { COMPRESSED_ENTRIES, scanQcow2 } from "./scan_qcow2.ts";
import { planDiscardEmpty } from "../formats/qcow2/make_empty_discard.ts";
import type { FilePlan } from "../formats/plan.ts";
import { Progress } from "./progress.ts";
import type { ResizeHost } from "../formats/types.ts";
import { hostPath } from "../host/context.ts";

export async function commitCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let fmt: string | undefined, baseName: string | undefined, cache = "writeback";
  let drop = false, progress = false, quiet = false;
  const operands = getopt(argv, ":f:ht:b:dpqr:", [
    ...DATA_LONGS_HEAD,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "f":
        fmt = value;
        break;
      case "t":
        cache = value!;
        break;
      case "b":
        baseName = value;
        // -b implies -d (qemu: the intermediate images become invalid).
        drop = true;
        break;
      case "d":
        drop = true;
        break;
      case "p":
        progress = true;
        break;
      case "q":
        quiet = true;
        break;
      case "r":
        // Checked as qemu checks it; there is no job to throttle (docs/quirks.md).
        cvtnum("rate limit", value!);
        break;
      case "object":
      case "image-opts":
        throw new CliError([`--${id} is not supported by instar`]);
    }
  });
  if (quiet) progress = false;
  if (operands.length !== 1) throw usageError("Expecting one image file name");
  const filename = operands[0];
  if (!CACHE_MODES.includes(cache)) throw new CliError([`Invalid cache option: ${cache}`]);

  let chain: OpenedImage[];
  try {
    const top = await openImage(filename, { format: fmt, unsafeQuirks: o.unsafeQuirks, lock: LOCKS.write });
    needsNoKey(top);
    chain = await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks);
    chainNeedsNoKey(chain);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(filename, e);
    throw e;
  }
  const top = chain[0];
  if (chain.length < 2) throw new CliError(["Image does not have a backing file"]);
  let depth = 1;
  if (baseName !== undefined) {
    const want = await realPathOr(baseName);
    const real = await Promise.all(chain.map((l) => realPathOr(l.openPath)));
    depth = chain.findIndex((l, i) =>
      i > 0 && (l.filename === baseName || (want !== "" && real[i] === want))
    );
    if (depth < 1) throw new CliError([`Did not find '${baseName}' in the backing chain of '${filename}'`]);
  }
  const baseImg = chain[depth];
  // The layers read take qemu's read lock; the base is written.
  for (let i = 1; i < chain.length; i++) {
    try {
      await takeLock(chain[i].openPath, i === depth ? LOCKS.write : LOCKS.read, chain[i].filename, true);
    } catch (e) {
      if (e instanceof LockError) throw new CliError([`Could not open '${filename}': ${e.message}`]);
      throw e;
    }
  }
  const refuse = (why: string) =>
    new CliError([`Could not commit '${filename}': ${why}; nothing was written`]);
  if (top.format !== "qcow2" || !top.qcow2) throw refuse("instar commits only qcow2 overlays");
  if (baseImg.format !== "qcow2" && baseImg.format !== "raw") {
    throw refuse("instar commits only into qcow2 or raw");
  }
  for (let i = 0; i < depth; i++) {
    if (chain[i].format !== "qcow2" && chain[i].format !== "raw") {
      throw refuse("instar commits only qcow2 layers");
    }
  }
  const bq = baseImg.qcow2;
  if (bq) {
    if (bq.corrupt) {
      throw new CliError([
        `Could not open '${baseImg.filename}': qcow2: Image is corrupt; cannot be opened read/write`,
      ]);
    }
    if (bq.dirty) throw refuse("the base has the dirty bit set (run qemu-img check -r all first)");
    // Bitmaps: disabled ones are carried (marked in use, stored anew, lib/formats/qcow2/bitmaps_reopen.ts).
    if (bq.hasBitmapsExt && bq.nbBitmaps === 0) {
      throw refuse("instar does not commit into an image with bitmaps");
    }
    if (bq.hasDataFileBit || bq.extendedL2 || bq.layout.cryptMethod !== 0) {
      throw refuse("instar does not commit into images with a data file, extended L2 entries or encryption");
    }
  }
  const empty = drop ? undefined : makeEmptyMethod(top.qcow2);
  if (typeof empty === "object") throw refuse(empty.refused);

  const p = new Progress(progress ? "line" : "off", 1, io);
  p.set(0);
  const what = `Could not commit '${filename}'`;
  const size = top.virtualSize;

  // qcow2_make_empty's fallback (every mapped cluster of the overlay
  // discarded) is planned before anything is written: the commit does not
  // change the overlay, and a refusal must come first.
  let emptyPlan: WritePlan | undefined;
  let emptySteps: FilePlan[] | undefined;
  if (empty === "discard" && top.qcow2.nbSnapshots > 0) {
    // Tables shared with a snapshot are replaced, shared clusters keep their snapshot's reference.
    const topMap = await mapRuns([{ path: top.openPath, format: formats.QCOW2, nofollow: false }], what);
    const plan = planDiscardEmpty({
      scan: await scanQcow2(top, what, COMPRESSED_ENTRIES),
      existing: existingRuns(topMap, top.qcow2.clusterBits),
    });
    if (!plan.ok) throw refuse(plan.error.message);
    emptySteps = plan.value;
  } else if (empty === "discard") {
    const tq = top.qcow2;
    const topMap = await mapRuns([{ path: top.openPath, format: formats.QCOW2, nofollow: false }], what);
    const existing = existingRuns(topMap, tq.clusterBits);
    const plan = planQcow2Writes({
      // With its compressed clusters: discarding one frees what it spans.
      scan: await scanQcow2(top, what, COMPRESSED_ENTRIES),
      version: tq.version,
      existing,
      // The whole disk, as qemu does: tables it lacks are made (write_plan.ts).
      ops: [{ cluster: 0n, count: (size + tq.clusterSize - 1n) >> BigInt(tq.clusterBits), kind: "discard" }],
      sourceSize: 0n,
    });
    if (!plan.ok) throw refuse(plan.error.message);
    emptyPlan = plan.value;
  }
  // The overlay's persistent bitmaps: marked in use when qemu opens it,
  // stored anew when it closes it (lib/formats/qcow2/bitmaps_reopen.ts); the
  // emptying does not dirty them (a driver-level discard).
  const topSteps = async (steps: FilePlan[]) => {
    await applySteps(top, steps, what, "off", "discard");
    if (steps.length > 0) top.fileSize = steps[steps.length - 1].fileSize;
  };
  const reopenHost: ReopenHost = {
    bitmapScan: () => bitmapScanOf(top, what),
    applySteps: topSteps,
    fail: (lines) => new CliError(lines),
    refuse,
  };
  const topBitmaps = top.qcow2.nbBitmaps > 0 ? await prepareBitmapReopen(reopenHost, filename) : undefined;
  // The base's: marked in use when the commit job reopens it read-write,
  // stored when it is reopened read-only at the job's end. An enabled bitmap
  // would record every write (qemu's block layer sets its bits): refused.
  const baseSteps = async (steps: FilePlan[]) => {
    await applySteps(baseImg, steps, what, "off", "discard");
    if (steps.length > 0) baseImg.fileSize = steps[steps.length - 1].fileSize;
  };
  const baseHost: ReopenHost = {
    bitmapScan: () => bitmapScanOf(baseImg, what),
    applySteps: baseSteps,
    fail: (lines) => new CliError(lines),
    refuse,
  };
  const baseBitmaps = bq && bq.nbBitmaps > 0
    ? await prepareBitmapReopen(baseHost, baseImg.filename)
    : undefined;
  if (topBitmaps) await topSteps(topBitmaps.openSteps);
  if (baseBitmaps) await baseSteps(baseBitmaps.openSteps);
  if (baseBitmaps && baseImg.virtualSize < size && truncateRefused(baseBitmaps)) {
    // The job's bdrv_co_truncate fails before it copies anything; the base
    // is reopened read-only and the overlay closed, each storing its bitmaps.
    await storeBitmapsAtClose(baseHost, baseImg.filename, baseBitmaps);
    if (topBitmaps) await storeBitmapsAtClose(reopenHost, filename, topBitmaps);
    throw new CliError(["Block job failed: Operation not supported"]);
  }
  // Which clusters move: the map of the whole chain (depth = the layer).
  const runs = await mapRuns(chainInputs(chain), what);
  // bdrv_co_truncate of the base when it is shorter.
  if (baseImg.virtualSize < size) await growBase(baseImg, size, what, baseBitmaps !== undefined);
  const cb = bq ? bq.clusterBits : 16;
  // A qcow2 base as qemu's mirror job writes it (chunks, block status runs);
  // a raw base takes the same bytes at the same offsets either way.
  const spans = chain.map((l) =>
    l.qcow2 ? l.qcow2.clusterSize * (l.qcow2.clusterSize / (l.qcow2.extendedL2 ? 16n : 8n)) : undefined
  );
  // The byte ranges the job's requests cover: the dirty bits of the base's enabled bitmaps.
  const written: [bigint, bigint][] = [];
  const writes = bq ? mirrorOps(runs, depth, cb, size, spans, written) : commitOps(runs, depth, cb, size);
  const total = writes.reduce((t, w) => t + (w.count << BigInt(cb)), 0n);
  // The copy guest's progress within its run, after the runs before it.
  let before = 0n;
  let last = 0n;
  const moved = (d: bigint, finished: boolean) => {
    if (finished) {
      before += d;
      last = 0n;
    } else last = d;
    if (total > 0n) p.bytes(before + last > total ? total : before + last, total);
  };
  // The source: the whole chain. A base cluster is written whole; the parts
  // of it no layer above allocates read the base's own data (the guest
  // reads each chunk before it writes it, and nothing it reads moves).
  const source: GuestInput[] = chainInputs(chain);
  if (!bq) {
    const moves: Move[] = writes.map((w) => {
      const from = w.cluster << BigInt(cb);
      const to = (w.cluster + w.count) << BigInt(cb);
      return { from, to: to < size ? to : size, at: from };
    });
    const baseSize = size > baseImg.virtualSize ? size : baseImg.virtualSize;
    await moveData(source, baseImg, moves, baseSize, what, moved);
  } else {
    // Two reads of the base as it now is, independent of each other: run at once.
    const [scan, baseMap] = await Promise.all([
      scanQcow2(baseImg, what, COMPRESSED_ENTRIES),
      mapRuns([{ path: baseImg.openPath, format: formats.QCOW2, nofollow: true }], what),
    ]);
    const plan = planQcow2Writes({
      scan,
      version: bq.version,
      existing: existingRuns(baseMap, cb),
      ops: writes,
      sourceSize: size,
    });
    if (!plan.ok) throw new CliError([`${what}: ${plan.error.message}`]);
    await applyWritePlan(plan.value, source, baseImg, size, what, moved);
    if (baseBitmaps) {
      baseImg.fileSize = BigInt((await Deno.stat(hostPath(baseImg.openPath))).size);
      await storeBitmapsAtClose(baseHost, baseImg.filename, baseBitmaps, stageDirty(baseImg, written, what));
    }
  }
  if (empty === "complete") {
    const st = await Deno.stat(hostPath(top.openPath));
    await applySteps(top, planMakeEmpty(top.qcow2, BigInt(st.size)), what, "off", "write");
  } else if (emptyPlan) {
    await applyWritePlan(emptyPlan, [], top, 0n, what);
    top.fileSize = BigInt((await Deno.stat(hostPath(top.openPath))).size);
  } else if (emptySteps) {
    await topSteps(emptySteps);
  }
  if (topBitmaps) await storeBitmapsAtClose(reopenHost, filename, topBitmaps);
  p.set(100);
  p.end();
  if (!quiet) io.out("Image committed.\n");
  return 0;
}

/** Grows the base to `size` as bdrv_co_truncate does (its format's resize). */
async function growBase(img: OpenedImage, size: bigint, what: string, bitmapsHeld: boolean) {
  const support = img.driver.resize;
  if (!support) throw new CliError([`${what}: Image format driver does not support resize`]);
  const host: ResizeHost = {
    scan: (code, args) =>
      runScan(
        "resize_scan",
        img,
        { format: code, nofollow: true, args },
        (why) => new CliError([`${what}: ${why}`]),
      ),
    applySteps: (steps, w, zeroInside) => applySteps(img, steps, w, "off", zeroInside),
    fail: (lines) => new CliError(lines),
    refuse: (why) => new CliError([`${what}: ${why}`]),
  };
  await support.run({
    filename: img.filename,
    image: img,
    newSize: size,
    shrink: false,
    preallocation: "off",
    bitmapsHeld,
  }, host);
  // The image's facts after the resize: its size and length changed.
  const st = await Deno.stat(hostPath(img.openPath));
  img.fileSize = BigInt(st.size);
  img.virtualSize = size;
  if (img.qcow2) img.qcow2.virtualSize = size;
}

/** The real path of `name`, or "" when it cannot be resolved. */
async function realPathOr(name: string): Promise<string> {
  try {
    return await Deno.realPath(hostPath(name));
  } catch {
    return "";
  }
}
