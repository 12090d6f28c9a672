// instar amend [-p] [-q] [-f fmt] [-t cache] [--force] -o options FILE
// qemu-img amend for qcow2 (other formats: qemu's refusal). The image is
// opened through the guest (without its backing chain, as qemu's amend does
// not need it), lib/formats/qcow2/amend.ts decides as qcow2_amend_options
// does and plans the header rewrite, lib/cli/apply_steps.ts writes it; a new
// size goes through qcow2's resize (qcow2_co_truncate, shrinking allowed as
// amend allows it) and a downgrade through lib/formats/qcow2/downgrade.ts,
// each on the image as the previous phase left it (read again, without a
// second lock: the command holds the write lock throughout).
import { carriedBitmaps } from "./carried_bitmaps.ts";
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
import {
  kdfMaxIters,
  type OpenedImage,
  OpenError,
  openFailure,
  openForWrite,
  openImage,
  unlockForRead,
} from "./image.ts";
import { imageRef } from "./image_ref.ts";
import { amendLuks, LUKS_AMEND_OPTS, LuksAmendError, parseLuksAmend } from "../formats/luks/amend.ts";
import { luksGuestErrorText } from "../formats/luks/create.ts";
import type { SecretStore } from "../secrets/objects.ts";
import { applySteps } from "./apply_steps.ts";
import { resizeHost } from "./resize_host.ts";
import { qcow2Resize } from "../formats/qcow2/resize.ts";
import { prepareBitmapResize, storeBitmapsAfterResize } from "../formats/qcow2/resize_bitmaps.ts";
import { qcow2Downgrade } from "../formats/qcow2/downgrade.ts";
import { qcow2ChangeRefcountOrder } from "../formats/qcow2/refcount_order.ts";
import { AmendProgress } from "../formats/qcow2/amend_progress.ts";
import { accumulateOptions, hasHelpOption, optionHelp } from "../formats/options.ts";
import { parseAmendOptions, planQcow2Amend, QCOW2_AMEND_OPTS } from "../formats/qcow2/amend.ts";
import { FORMATS } from "../formats/mod.ts";

function amendHelp(fmt: string): CliError | string {
  if (fmt === "luks") return `Amend options for 'luks':\n${optionHelp(LUKS_AMEND_OPTS)}`;
  if (fmt !== "qcow2") {
    if (!FORMATS.some((d) => d.name === fmt)) return new CliError([`Unknown file format '${fmt}'`]);
    return new CliError([`Format driver '${fmt}' does not support option amendment`]);
  }
  return `Amend options for 'qcow2':\n${optionHelp(QCOW2_AMEND_OPTS)}`;
}

export async function amendCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let fmt: string | undefined, options: string | undefined;
  let progress = false, quiet = false, cache = "writeback", force = false;
  const operands = getopt(argv, ":ho:f:t:pqU", [
    ...DATA_LONGS_HEAD,
    { name: "force", hasArg: false, id: "force" },
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "force":
        force = true;
        break;
      case "o": {
        const next = accumulateOptions(options, value!);
        if (next === undefined) throw new CliError([`Invalid option list: ${value}`]);
        options = next;
        break;
      }
      case "f":
        fmt = value;
        break;
      case "t":
        cache = value!;
        break;
      case "p":
        progress = true;
        break;
      case "q":
        quiet = true;
        break;
    }
  });
  if (options === undefined) throw usageError("Must specify options (-o)");
  if (quiet) progress = false;
  if (fmt && hasHelpOption(options)) {
    const h = amendHelp(fmt);
    if (h instanceof CliError) throw h;
    io.out(h);
    return 0;
  }
  if (operands.length !== 1) throw new CliError(["Expecting one image file name"]);
  // --image-opts: one local file, and a LUKS image's key-secret (lib/cli/image_ref.ts).
  const ref = imageRef(operands[0], fmt, o.imageOpts, io.err);
  const filename = ref.filename;
  fmt = ref.format;
  if (!CACHE_MODES.includes(cache)) throw new CliError([`Invalid cache option: ${cache}`]);

  // -u / amend: qemu opens the image read-write, without its backing chain (a LUKS image unlocked).
  const img = await openForWrite(
    filename,
    fmt,
    o.unsafeQuirks,
    (i) => unlockForRead(i, ref.keySecret, ref.keySecretOption, o.secrets, [i]),
    ref.display,
  );
  if (hasHelpOption(options)) {
    const h = amendHelp(img.format);
    if (h instanceof CliError) throw h;
    io.out(h);
    return 0;
  }
  if (img.format === "luks" && img.luks && img.secret) {
    return await amendLuksImage(io, img, options, force, progress, o.secrets);
  }
  const q = img.qcow2;
  if (img.format !== "qcow2" || !q) {
    throw new CliError([`Format driver '${img.format}' does not support option amendment`]);
  }
  if (q.corrupt) {
    throw new CliError([
      `Could not open '${filename}': qcow2: Image is corrupt; cannot be opened read/write`,
    ]);
  }
  const parsed = parseAmendOptions(options);
  if (!parsed.ok) throw new CliError([parsed.error.message]);
  // qemu-img prints the progress around bdrv_amend_options, whatever it returns.
  // Persistent bitmaps ride along in a rewritten header (rebase_plan.ts); a
  // new size stores them anew as qemu's close does (qcow2/resize_bitmaps.ts);
  // a downgrade still refuses them.
  const bitmaps = await carriedBitmaps(img, false);
  const r = planQcow2Amend(q, parsed.value, img.fileSize, bitmaps);
  const prog = new AmendProgress(
    r.kind === "write" ? (r.upgrade || r.downgrade ? 1 : 0) + (r.refcountOrder !== undefined ? 1 : 0) : 0,
  );
  const flush = () => {
    for (const pct of prog.out.splice(0)) if (progress) io.out(`    (${pct}/100%)\r`);
  };
  prog.print(0);
  flush();
  try {
    if (r.kind === "error") throw new CliError([r.lines.join("\n")]);
    if (r.kind === "refuse") {
      throw new CliError([`Could not amend '${filename}': ${r.why}; nothing was written`]);
    }
    let wrote = false;
    // qemu's read-write open marks the bitmaps in use and its close stores
    // them anew (qcow2/resize_bitmaps.ts, as for a resize); a new size does
    // both itself, a downgrade refuses bitmaps.
    const around = bitmaps !== undefined && q.nbBitmaps > 0 && r.newSize === undefined && !r.downgrade
      ? await prepareBitmapResize(
        resizeHost(
          img,
          "off",
          (why) => new CliError([`Could not amend '${filename}': ${why}; nothing was written`]),
        ),
        filename,
        q.virtualSize,
      )
      : undefined;
    if (around) {
      await applySteps(img, around.openSteps, "Error while amending options", "off", "write");
      wrote = true;
    }
    if (r.plan) {
      await applySteps(img, [r.plan], "Error while amending options", "off", "write");
      wrote = true;
    }
    if (r.upgrade) prog.upgrade();
    flush();
    let cur = img;
    const reread = async (): Promise<OpenedImage> => {
      try {
        return await openImage(filename, { format: img.format, unsafeQuirks: o.unsafeQuirks, noLists: true });
      } catch (e) {
        if (e instanceof OpenError) throw openFailure(filename, e);
        throw e;
      }
    };
    // A later phase's refusal leaves what earlier phases wrote (as qemu does when a later step fails).
    const refuse = (why: string) =>
      new CliError([
        `Could not amend '${filename}': ${why}; ${
          wrote ? "only the changes before it were written" : "nothing was written"
        }`,
      ]);
    if (r.refcountOrder !== undefined) {
      if (r.plan) cur = await reread();
      const w = await qcow2ChangeRefcountOrder(
        filename,
        cur,
        resizeHost(cur, "off", refuse),
        r.refcountOrder,
        bitmaps,
      );
      wrote = true;
      prog.refcountOrder(w.allocWalks, w.oldTableEntries, w.walks, w.writeEntries);
      flush();
    }
    if (around) {
      cur = await reread();
      await storeBitmapsAfterResize(resizeHost(cur, "off", refuse), filename, around);
    }
    if (r.newSize !== undefined) {
      if (r.plan || r.refcountOrder !== undefined) cur = await reread();
      await qcow2Resize.run(
        { filename, image: cur, newSize: r.newSize, shrink: true, preallocation: "off" },
        resizeHost(cur, "off", refuse),
      );
      wrote = true;
    }
    if (r.downgrade) {
      if (r.plan || r.refcountOrder !== undefined || r.newSize !== undefined) cur = await reread();
      const entries = await qcow2Downgrade(filename, cur, resizeHost(cur, "off", refuse));
      prog.downgrade(entries);
      flush();
    }
  } finally {
    prog.print(100);
    flush();
    if (progress) io.out("\n");
  }
  return 0;
}

/** amend of a LUKS image's key slots (lib/formats/luks/amend.ts); qemu-img's progress around it. */
async function amendLuksImage(
  io: Io,
  img: OpenedImage,
  options: string,
  force: boolean,
  progress: boolean,
  secrets: SecretStore,
): Promise<number> {
  const parsed = parseLuksAmend(options);
  if (!parsed.ok) throw new CliError([parsed.error.message]);
  const prog = new AmendProgress(0);
  const flush = () => {
    for (const pct of prog.out.splice(0)) if (progress) io.out(`    (${pct}/100%)\r`);
  };
  prog.print(0);
  flush();
  try {
    await amendLuks(parsed.value, {
      path: img.openPath,
      luks: img.luks!,
      passphrase: img.secret!,
      secret: (id) => secrets.passphrase(id),
      force,
      kdfMaxIters: kdfMaxIters(),
    });
  } catch (e) {
    if (e instanceof LuksAmendError) throw new CliError([e.message]);
    const text = luksGuestErrorText(e);
    if (text !== undefined) throw new CliError([text]);
    throw e;
  } finally {
    prog.print(100);
    flush();
    if (progress) io.out("\n");
  }
  return 0;
}
