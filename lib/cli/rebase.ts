// instar rebase [-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-U] -u [-b backing_file [-F backing_fmt]] FILE
// The unsafe mode only (-u: the backing file name and format in the header
// change, no data moves; nova and cinder use it). qemu-img opens the image
// read-write without its backing chain; so does this, through the guest,
// and lib/formats/qcow2/rebase_plan.ts rebuilds the header cluster, which
// lib/cli/apply_steps.ts writes. Safe mode (copying the clusters that
// differ between the old and the new backing file): lib/cli/rebase_safe.ts.
// An encrypted image opens with its --image-opts key-secret (unlockForRead);
// safe mode into an encrypted qcow2 is refused after that check (the copy
// does not encrypt yet, docs/rebase.md).
import { getopt } from "./getopt.ts";
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
import { type OpenedImage, openForWrite, unlockForRead } from "./image.ts";
import { applySteps } from "./apply_steps.ts";
import { imageRef } from "./image_ref.ts";
import { FORMATS } from "../formats/mod.ts";
import { type BitmapsExt, planQcow2Rebase, rebaseRefusal } from "../formats/qcow2/rebase_plan.ts";
import { carriedBitmaps } from "./carried_bitmaps.ts";
import { copyDifferences, openForSafeRebase } from "./rebase_safe.ts";

export async function rebaseCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let fmt: string | undefined, backing: string | undefined, backingFmt: string | undefined;
  let unsafe = false, progress = false, quiet = false;
  let cache = "writeback", srcCache = "writeback";
  const operands = getopt(argv, ":hf:F:b:upt:T:qU", [
    ...DATA_LONGS_HEAD,
    { name: "force-share", hasArg: false, id: "U" },
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "f":
        fmt = value;
        break;
      case "F":
        backingFmt = value;
        break;
      case "b":
        backing = value;
        break;
      case "u":
        unsafe = true;
        break;
      case "p":
        progress = true;
        break;
      case "t":
        cache = value!;
        break;
      case "T":
        srcCache = value!;
        break;
      case "q":
        quiet = true;
        break;
    }
  });
  if (quiet) progress = false;
  if (operands.length !== 1) throw usageError("Expecting one image file name");
  if (!unsafe && backing === undefined) {
    throw usageError("Must specify backing file (-b) or use unsafe mode (-u)");
  }
  // --image-opts: one local file (lib/cli/image_ref.ts); qemu names the operand as given.
  const ref = imageRef(operands[0], fmt, o.imageOpts, io.err);
  const filename = ref.filename;
  fmt = ref.format;
  if (backingFmt !== undefined && !FORMATS.some((d) => d.name === backingFmt)) {
    throw new CliError([`Invalid format name: '${backingFmt}'`]);
  }
  if (!CACHE_MODES.includes(cache)) throw new CliError([`Invalid cache option: ${cache}`]);
  if (!CACHE_MODES.includes(srcCache)) throw new CliError([`Invalid source cache option: ${srcCache}`]);
  const name = backing ?? "";
  const changeFailed = (why: string) =>
    new CliError([`Could not change the backing file to '${name}': ${why}`]);
  const write = (pct: string) => progress && io.out(`    (${pct}/100%)\r`);
  let img;
  // Persistent bitmaps ride along in the rewritten header (rebase_plan.ts).
  let bitmaps: BitmapsExt | undefined;
  // An encrypted image opens only with its key (--image-opts key-secret=), as qemu's open checks it.
  const unlock = (i: OpenedImage) => unlockForRead(i, ref.keySecret, ref.keySecretOption, o.secrets, [i]);
  if (unsafe) {
    // -u / amend: qemu opens the image read-write, without its backing chain.
    img = await openForWrite(filename, fmt, o.unsafeQuirks, unlock, ref.display);
    if (name !== "" && backingFmt === undefined) throw changeFailed("backing format must be specified");
  } else {
    // Safe mode: the old chain and the new backing file are opened too,
    // and the clusters that differ copied before the header changes.
    const { old, neu } = await openForSafeRebase({
      filename,
      display: ref.display,
      fmt,
      backing: name,
      backingFmt,
      unsafeQuirks: o.unsafeQuirks,
      backingDirs: o.backingDirs,
      unlock,
    });
    img = old[0];
    if (img.qcow2 && img.qcow2.layout.cryptMethod !== 0) {
      // The copy would have to encrypt the clusters it writes: not done yet (docs/rebase.md).
      throw new CliError([
        `Could not rebase '${filename}': instar does not copy clusters into an encrypted image ` +
        `(use -u); nothing was written`,
      ]);
    }
    const sq = img.qcow2;
    if (img.format !== "qcow2" || !sq) throw changeFailed("Operation not supported");
    if (sq.corrupt) {
      throw new CliError([
        `Could not open '${ref.display}': qcow2: Image is corrupt; cannot be opened read/write`,
      ]);
    }
    // The copy writes into the image: an enabled bitmap would have to record
    // those writes, as qemu's do, so only disabled bitmaps are carried here.
    bitmaps = await carriedBitmaps(img, true);
    // Internal snapshots: the clusters they share are copied on write (write_plan.ts).
    const why = rebaseRefusal(sq, bitmaps !== undefined);
    if (why) throw new CliError([`Could not rebase '${filename}': ${why}; nothing was written`]);
    write("0.00");
    await copyDifferences(old, neu, `Could not rebase '${filename}'`);
    // qemu copies first and only then finds the format missing.
    if (name !== "" && backingFmt === undefined) throw changeFailed("backing format must be specified");
  }
  const q = img.qcow2;
  // Drivers without bdrv_change_backing_file (raw, vpc, vhdx, ...).
  if (img.format !== "qcow2" || !q) throw changeFailed("Operation not supported");
  if (q.corrupt) {
    throw new CliError([
      `Could not open '${ref.display}': qcow2: Image is corrupt; cannot be opened read/write`,
    ]);
  }
  if (unsafe) write("0.00");
  if (unsafe) bitmaps = await carriedBitmaps(img, false);
  const plan = planQcow2Rebase(
    q,
    {
      backingFile: name === "" ? undefined : new TextEncoder().encode(name),
      backingFormat: name === "" ? undefined : backingFmt,
    },
    img.fileSize,
    bitmaps,
  );
  if (!plan.ok) {
    if (plan.error.kind === "unsupported") {
      throw new CliError([`Could not rebase '${filename}': ${plan.error.message}; nothing was written`]);
    }
    throw changeFailed(plan.error.message);
  }
  await applySteps(img, [plan.value], `Could not change the backing file to '${name}'`, "off", "write");
  write("100.00");
  if (progress) io.out("\n");
  return 0;
}
