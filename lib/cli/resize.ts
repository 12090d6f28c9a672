// instar resize [-f fmt] [--shrink] [--preallocation MODE] [-q] FILE [+|-]SIZE
//
// qemu-img's img_resize, step for step: the size is taken off the end of the
// line before option parsing (so "-1G" is not an option), parsed, the image
// opened, the new size worked out and checked, then the format's truncate.
// For qcow2 the guest op resize_scan extracts and checks the metadata, the
// pure planner in lib/formats/qcow2/resize_plan.ts turns it into writes, and
// only then does anything touch the file. Nothing is written unless every
// check passed. docs/resize.md says what a crash mid-way leaves behind.
import { formats, guestErrors, ops, records, resizeFlags } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { getopt } from "./getopt.ts";
import { CliError, usageError } from "./messages.ts";
import {
  DATA_LONGS_HEAD,
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
} from "./common.ts";
import { openFailure, errnoText, openChain, type OpenedImage, OpenError, openImage } from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { fileRange, runGuest } from "../vmm/guest.ts";
import { SizeError, strtosz } from "./options.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import { GuestResultError, qcow2Model } from "../formats/qcow2/model.ts";
import { planQcow2Resize, type Qcow2ResizeScan } from "../formats/qcow2/resize_plan.ts";
import { BDRV_MAX_LENGTH, planRawResize } from "../formats/raw/resize_plan.ts";
import { type FilePlan, planViolation } from "../formats/plan.ts";
import { hostPath } from "../host/context.ts";

const PREALLOC_MODES = ["off", "metadata", "falloc", "full"] as const;
type Prealloc = typeof PREALLOC_MODES[number];

/** Records of one kind the guest may send (guest/qcow2/resize_scan.c RESIZE_MAX_EACH). */
const RESIZE_MAX_EACH = 256 * 1024;

export async function resizeCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  if (argv.length < 3) throw usageError("Not enough arguments");
  const o = newInstarOptions(base);
  const size = argv[argv.length - 1];
  let fmt: string | undefined;
  let quiet = false;
  let shrink = false;
  let prealloc: Prealloc = "off";
  const operands = getopt(argv.slice(0, -1), ":f:hq", [
    ...DATA_LONGS_HEAD,
    { name: "preallocation", hasArg: true, id: "preallocation" },
    { name: "shrink", hasArg: false, id: "shrink" },
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "f":
        fmt = value;
        break;
      case "q":
        quiet = true;
        break;
      case "object":
      case "image-opts":
        throw new CliError([`--${id} is not supported by instar`]);
      case "preallocation":
        if (!(PREALLOC_MODES as readonly string[]).includes(value!)) {
          throw new CliError([`Invalid preallocation mode '${value}'`]);
        }
        prealloc = value as Prealloc;
        break;
      case "shrink":
        shrink = true;
        break;
    }
  });
  if (operands.length !== 1) throw usageError("Expecting image file name and size");
  const filename = operands[0];

  let relative = 0n;
  let text = size;
  if (text.startsWith("+")) [relative, text] = [1n, text.slice(1)];
  else if (text.startsWith("-")) [relative, text] = [-1n, text.slice(1)];
  let n: bigint;
  try {
    // qemu_opt_get_size hands back a uint64 that img_resize keeps in an int64.
    n = BigInt.asIntN(64, strtosz(text));
  } catch (e) {
    if (!(e instanceof SizeError)) throw e;
    if (e.range) throw new CliError([`Value '${text}' is out of range for parameter 'size'`]);
    throw new CliError([
      "Parameter 'size' expects a non-negative number below 2^64\n" +
      "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
      "and exabytes, respectively.",
    ]);
  }

  let img: OpenedImage;
  try {
    img = await openImage(filename, { format: fmt, unsafeQuirks: o.unsafeQuirks });
    // qemu-img opens the backing chain too: a missing backing file fails the resize.
    await openChain(img, await makePolicy(filename, o.backingDirs), o.unsafeQuirks);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(filename, e, 1, true);
    throw e;
  }
  if (img.raw && fmt === undefined) {
    // qemu's raw driver warns on a probed read-write open.
    io.err(
      `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
        "         Automatically detecting the format is dangerous for raw images, " +
        "write operations on block 0 will be restricted.\n" +
        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
    );
  }

  const current = img.virtualSize;
  const total = relative === 0n ? n : BigInt.asIntN(64, current + n * relative);
  if (total <= 0n) throw new CliError(["New image size must be positive"]);
  if (total <= current && prealloc !== "off") {
    throw new CliError(["Preallocation can only be used for growing images"]);
  }
  if (total < current && !shrink) {
    throw new CliError([
      "Use the --shrink option to perform a shrink operation.",
      "warning: Shrinking an image will delete all data beyond the shrunken image's end. " +
      "Before performing such an operation, make sure there is no important data there.",
    ]);
  }
  // bdrv_co_truncate's request check, before the format driver sees it.
  if (total > BDRV_MAX_LENGTH) throw new CliError([`offset(${total}) exceeds maximum(${BDRV_MAX_LENGTH})`]);

  if (img.raw) {
    const plan = planRawResize({ fileSize: img.fileSize, newSize: total, preallocation: prealloc });
    if (!plan.ok) throw new CliError([plan.error.message]);
    await applySteps(img, [plan.value], "Could not resize file", prealloc);
  } else if (img.qcow2) {
    await resizeQcow2(img, total, prealloc);
  } else {
    throw new CliError(["Image format driver does not support resize"]);
  }
  if (!quiet) io.out("Image resized.\n");
  return 0;
}

/** qcow2_co_truncate's own refusals, then the scan, the plan and the writes. */
async function resizeQcow2(img: OpenedImage, total: bigint, prealloc: Prealloc): Promise<void> {
  const q = img.qcow2!;
  if (total % 512n !== 0n) throw new CliError(["The new size must be a multiple of 512"]);
  if (q.nbSnapshots > 0 && q.version < 3) throw new CliError(["Can't resize a v2 image which has snapshots"]);
  // Cases qemu handles that instar refuses before writing (docs/resize.md).
  const refuse = (why: string) => new CliError([`Could not resize '${img.filename}': ${why}`]);
  if (q.corrupt) {
    throw new CliError([
      `Could not open '${img.filename}': qcow2: Image is corrupt; cannot be opened read/write`,
    ]);
  }
  if (q.dirty) {
    throw refuse(
      "the image has the dirty bit set (run qemu-img check -r all first); instar does not repair refcounts",
    );
  }
  if (q.hasDataFileBit) throw refuse("instar does not resize images with an external data file");
  if (q.nbBitmaps > 0 || q.hasBitmapsExt) {
    throw refuse("instar does not resize images with persistent bitmaps");
  }
  if (q.nbSnapshots > 0 && total < q.virtualSize) {
    throw refuse("instar does not shrink images with internal snapshots");
  }

  let result;
  try {
    result = await runGuest({
      op: "resize_scan",
      opCode: ops.RESIZE_SCAN,
      inputs: [{ path: img.openPath, format: formats.QCOW2 }],
      // Preallocation links the new range: the guest checks nothing maps it yet.
      args: [total, prealloc !== "off" ? 1n : 0n],
      resultCap: 64 * 1024 * 1024,
    });
  } catch (e) {
    throw refuse(`sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
  }
  const input = result.inputs[0];
  if (!input || input.dev !== img.dev || input.ino !== img.ino) {
    throw refuse("the file changed while it was being read");
  }
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    const code = f.code as number;
    if (code === guestErrors.INTERNAL) {
      throw refuse(SCAN_REFUSALS[Number(f.a0)]?.(f.a1 as bigint) ?? "metadata check failed");
    }
    const msg = qcow2ErrorMessage({ code, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint });
    throw new CliError([`Could not open '${img.filename}': ${msg}`]);
  }
  if (result.guestStatus !== 0n) throw refuse("sandbox failure: guest reported an error without a reason");
  let scan: Qcow2ResizeScan;
  const summary = result.records.find((r) => r.type === records.RESIZE_SUMMARY);
  const busyTail = summary !== undefined && ((summary.fields.flags as number) & resizeFlags.BUSY_TAIL) !== 0;
  try {
    scan = decodeScan(result.records, input.size);
  } catch (e) {
    if (e instanceof GuestResultError) throw refuse(`sandbox failure: ${e.message}`);
    throw e;
  }
  if (busyTail) throw refuse("instar does not preallocate over clusters the image already maps past its end");
  const plan = planQcow2Resize(scan, { newSize: total, preallocation: prealloc });
  if (!plan.ok) {
    // qemu's own failures keep qemu-img's words; instar's refusals name the file.
    if (
      /^Failed to (grow the L1 table|resize refcount structures|resize underlying file)/.test(
        plan.error.message,
      )
    ) {
      throw new CliError([plan.error.message]);
    }
    throw refuse(plan.error.message);
  }
  await applySteps(img, plan.value.steps, "Could not resize image", prealloc);
}

const hex = (v: bigint) => `0x${v.toString(16)}`;
const SCAN_REFUSALS: Record<number, (a: bigint) => string> = {
  1: (a) => `refcount block offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
  2: (a) => `L2 table offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
  3: (a) => `data cluster offset ${hex(a)} is not cluster aligned (the image is corrupt)`,
};

/** The scan's records as the planner's input, every count and bound re-checked. */
export function decodeScan(recs: Rec[], fileSize: bigint): Qcow2ResizeScan {
  const model = qcow2Model(recs, 0);
  const info = recs.find((r) => r.type === records.QCOW2_INFO)!.fields;
  const summaries = recs.filter((r) => r.type === records.RESIZE_SUMMARY);
  if (summaries.length !== 1 || recs[recs.length - 1].type !== records.RESIZE_SUMMARY) {
    throw new GuestResultError("resize scan incomplete");
  }
  const s = summaries[0].fields;
  if (((s.flags as number) & resizeFlags.TOO_BIG) !== 0) {
    throw new GuestResultError(
      `the image has too much metadata for instar to resize (more than ${RESIZE_MAX_EACH} records of one kind)`,
    );
  }
  const l1 = new Map<number, bigint>();
  const reftable = new Map<number, bigint>();
  const runs = [], frees = [], zeros = [];
  for (const r of recs) {
    const f = r.fields;
    switch (r.type) {
      case records.RESIZE_L1:
      case records.RESIZE_REFTABLE: {
        const idx = f.index as bigint;
        if (idx >= 1n << 32n) throw new GuestResultError("table index out of range");
        const m = r.type === records.RESIZE_L1 ? l1 : reftable;
        if (m.has(Number(idx))) throw new GuestResultError("table index repeated");
        m.set(Number(idx), f.value as bigint);
        break;
      }
      case records.RESIZE_REFRUN:
        runs.push({ start: f.start as bigint, count: f.count as bigint, refcount: f.refcount as bigint });
        break;
      case records.RESIZE_FREE:
        frees.push({ start: f.start as bigint, count: f.count as bigint });
        break;
      case records.RESIZE_ZERO:
        zeros.push({ start: f.start as bigint, count: f.count as bigint });
        break;
    }
  }
  const counts: [string, number][] = [
    ["n_l1", l1.size],
    ["n_reftable", reftable.size],
    ["n_runs", runs.length],
    ["n_free", frees.length],
    ["n_zero", zeros.length],
  ];
  for (const [k, v] of counts) {
    if (s[k] !== BigInt(v) || v > RESIZE_MAX_EACH) throw new GuestResultError(`resize scan ${k} mismatch`);
  }
  return {
    clusterBits: model.clusterBits,
    refcountOrder: Math.log2(model.refcountBits),
    extendedL2: model.extendedL2,
    virtualSize: model.virtualSize,
    fileSize,
    l1Offset: info.l1_table_offset as bigint,
    l1Size: info.l1_size as number,
    l1,
    reftableOffset: info.refcount_table_offset as bigint,
    reftableClusters: info.refcount_table_clusters as number,
    reftable,
    runs,
    frees,
    zeros,
    hasBacking: model.backingFile !== undefined,
  };
}

/**
 * Applies planned steps in order, each followed by fdatasync, after checking
 * that the file is still the one that was read (same device, inode and
 * length). Patches are the planner's own bytes; no image byte passes here.
 * A zero patch inside the file is a discard (a hole punched, as qemu's
 * file-posix does for the clusters a shrink frees); past the end it is an
 * area the preallocation mode allocates: posix_fallocate()d with falloc,
 * zeroes written otherwise (full writes them in qemu too).
 */
async function applySteps(
  img: OpenedImage,
  steps: FilePlan[],
  what: string,
  prealloc: Prealloc,
): Promise<void> {
  for (const s of steps) {
    const v = planViolation(s);
    if (v) throw new CliError([`${what}: plan refused: ${v}`]);
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(hostPath(img.openPath), { read: true, write: true });
  } catch (e) {
    throw new CliError([
      `Could not open '${img.filename}': Could not open '${img.filename}': ${errnoText(e)}`,
    ]);
  }
  try {
    const st = await file.stat();
    if (BigInt(st.dev) !== img.dev || BigInt(st.ino ?? 0) !== img.ino || BigInt(st.size) !== img.fileSize) {
      throw new CliError([`${what}: the file changed while it was being resized`]);
    }
    for (const step of steps) {
      for (const p of step.patches) {
        if (p.kind === "write") {
          await file.seek(p.offset, Deno.SeekMode.Start);
          let at = 0;
          while (at < p.bytes.length) at += await file.write(p.bytes.subarray(at));
        } else if (p.length > 0n) {
          const eof = BigInt((await file.stat()).size);
          // Inside the file: clusters a shrink freed, which qemu discards
          // (a hole punched). Like qemu's discard this is best effort: the
          // clusters are free either way, so a filesystem that cannot punch
          // keeps the old bytes.
          if (p.offset < eof) {
            const end = p.offset + p.length < eof ? p.offset + p.length : eof;
            await fileRange("punch", img.openPath, p.offset, end - p.offset, img.dev, img.ino);
          }
          // Past the end: an area preallocation allocates.
          const from = p.offset > eof ? p.offset : eof, to = p.offset + p.length;
          if (from < to && prealloc === "falloc") {
            const why = await fileRange("allocate", img.openPath, from, to - from, img.dev, img.ino);
            if (why !== undefined) throw new CliError([`${what}: Could not preallocate new data: ${why}`]);
          } else if (from < to) {
            await file.seek(from, Deno.SeekMode.Start);
            const zero = new Uint8Array(Number(to - from < 1n << 20n ? to - from : 1n << 20n));
            for (let left = to - from; left > 0n;) {
              const n = left < BigInt(zero.length) ? Number(left) : zero.length;
              let at = 0;
              while (at < n) at += await file.write(zero.subarray(at, n));
              left -= BigInt(n);
            }
          }
        }
      }
      if (BigInt((await file.stat()).size) !== step.fileSize) {
        // Deno takes the length as a double: refuse lengths it cannot hold exactly.
        if (BigInt(Number(step.fileSize)) !== step.fileSize) throw new CliError([`${what}: File too large`]);
        await file.truncate(Number(step.fileSize));
      }
      await file.syncData();
    }
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError([`${what}: ${errnoText(e)}`]);
  } finally {
    file.close();
  }
}
