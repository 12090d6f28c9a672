// instar bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
//   [-b source_file [-F source_fmt]] [-g granularity] [--object ...] [--image-opts | -f fmt] FILE BITMAP
//
// qemu-img 7.2's img_bitmap: the same parsing, checks and messages. The
// image is opened read-write without its backing chain; the bitmap_scan
// guest (guest/qcow2/bitmap_scan.c) extracts and checks the bitmap
// directory, tables and refcounts; the pure planner
// (lib/formats/qcow2/bitmap_plan.ts) replays qemu's actions and its store at
// close into crash-safe steps, which applySteps writes. As qemu, an action
// that fails stops the list, and what ran before it is still stored.
import { ops, records } from "../abi/spec.ts";
import { CliError } from "./messages.ts";
import { getoptCommand, type InstarOptions, type Io, newInstarOptions } from "./common.ts";
import { cvtnum } from "./options.ts";
import { needsNoKey, type OpenedImage, OpenError, openFailure, openImage } from "./image.ts";
import { applySteps } from "./apply_steps.ts";
import { decodeBitmapScanOrRefuse, scanBitmaps } from "./scan_bitmaps.ts";
import { runGuest } from "../vmm/guest.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { errorRecordMessage } from "../formats/qcow2/errors.ts";
import { tailBitsAsLoaded } from "../formats/qcow2/bitmap_tail.ts";
import {
  type BitmapAction,
  type BitmapRequest,
  type BitmapScanDir,
  type MergeJob,
  planQcow2Bitmap,
  tableSizeFor,
} from "../formats/qcow2/bitmap_plan.ts";
import { hostPath } from "../host/context.ts";

/** qemu names the image by its node name, "#block" and a counter that depends on the run. */
const NODE_NAME = "#block000";

interface BitmapArgs {
  fmt?: string;
  srcFmt?: string;
  srcFile?: string;
  granularity: bigint;
  actions: BitmapAction[];
  add: boolean;
  merge: boolean;
}

function parseArgs(argv: string[], o: InstarOptions): { a: BitmapArgs; operands: string[] } {
  const a: BitmapArgs = { granularity: 0n, actions: [], add: false, merge: false };
  const enc = new TextEncoder();
  const operands = getoptCommand(o, argv, ":b:f:F:g:h", [
    { name: "help", hasArg: false, id: "h" },
    { name: "object", hasArg: true, id: "object" },
    { name: "image-opts", hasArg: false, id: "image-opts" },
    { name: "add", hasArg: false, id: "add" },
    { name: "remove", hasArg: false, id: "remove" },
    { name: "clear", hasArg: false, id: "clear" },
    { name: "enable", hasArg: false, id: "enable" },
    { name: "disable", hasArg: false, id: "disable" },
    { name: "merge", hasArg: true, id: "merge" },
    { name: "granularity", hasArg: true, id: "g" },
    { name: "source-file", hasArg: true, id: "b" },
    { name: "source-format", hasArg: true, id: "F" },
  ], ({ id, value }) => {
    switch (id) {
      case "b":
        a.srcFile = value;
        break;
      case "f":
        a.fmt = value;
        break;
      case "F":
        a.srcFmt = value;
        break;
      case "g":
        a.granularity = cvtnum("granularity", value!);
        break;
      case "add":
        a.actions.push({ act: "add" });
        a.add = true;
        break;
      case "remove":
      case "clear":
      case "enable":
      case "disable":
        a.actions.push({ act: id });
        break;
      case "merge":
        a.actions.push({ act: "merge", src: enc.encode(value!) });
        a.merge = true;
        break;
      case "object":
      case "image-opts":
        throw new CliError([`--${id} is not supported by instar`]);
    }
  });
  return { a, operands };
}

export async function bitmapCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  const { a, operands } = parseArgs(argv, o);
  if (a.actions.length === 0) {
    throw new CliError(["Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"]);
  }
  if (a.granularity && !a.add) throw new CliError(["granularity only supported with --add"]);
  if (a.srcFmt !== undefined && a.srcFile === undefined) throw new CliError(["-F only supported with -b"]);
  if (a.srcFile !== undefined && !a.merge) {
    throw new CliError(["Merge bitmap source file only supported with --merge"]);
  }
  if (operands.length !== 2) throw new CliError(["Expecting filename and bitmap name"]);
  const [filename, bitmap] = operands;
  const name = new TextEncoder().encode(bitmap);

  let img: OpenedImage, src: OpenedImage | undefined;
  try {
    img = await openImage(filename, {
      format: a.fmt,
      unsafeQuirks: o.unsafeQuirks,
      lock: LOCKS.write,
      noLists: true,
    });
    needsNoKey(img);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(filename, e);
    throw e;
  }
  // qemu stores the image's bitmaps when it closes it, even when the source fails to open.
  let srcFailure: CliError | undefined;
  if (a.srcFile !== undefined) {
    try {
      src = await openImage(a.srcFile, {
        format: a.srcFmt,
        unsafeQuirks: o.unsafeQuirks,
        lock: LOCKS.read,
        noLists: true,
      });
      needsNoKey(src);
    } catch (e) {
      if (!(e instanceof OpenError)) throw e;
      srcFailure = openFailure(a.srcFile, e);
      a.actions = [];
    }
  }

  if (img.format !== "qcow2" && srcFailure) throw srcFailure;
  if (img.format !== "qcow2") {
    // No bitmaps to find; --add: the driver cannot store them.
    const first = a.actions[0];
    const why = first.act === "add"
      ? (name.length === 0
        ? "Bitmap name cannot be empty"
        : `Can't store persistent bitmaps to ${NODE_NAME}: Operation not supported`)
      : `Dirty bitmap '${bitmap}' not found`;
    throw new CliError([`Operation ${first.act} on bitmap ${bitmap} failed: ${why}`]);
  }

  let source: { bitmaps: BitmapScanDir[]; virtualSize: bigint } | undefined;
  if (src) {
    if (src.format === "qcow2") {
      const recs = await scanBitmaps(src);
      const s = tailBitsAsLoaded(decodeBitmapScanOrRefuse(recs, src));
      source = { bitmaps: s.bitmaps, virtualSize: s.model.virtualSize };
    } else {
      source = { bitmaps: [], virtualSize: src.virtualSize };
    }
  }
  const recs = await scanBitmaps(img);
  // Bits past a bitmap's end: kept as qemu keeps them (bitmap_tail.ts).
  const s = tailBitsAsLoaded(decodeBitmapScanOrRefuse(recs, img));
  const req: BitmapRequest = {
    name,
    granularity: a.granularity,
    actions: a.actions,
    nodeName: NODE_NAME,
    source,
  };
  const what = `Could not change bitmaps of '${filename}'`;
  let plan = planQcow2Bitmap(s, req);
  let target = img;
  try {
    if (plan.ok && plan.value.mergeJob) {
      // Bits to combine: the guest writes the result past the file's end, the planner moves it.
      req.merged = await merge(img, src, plan.value.mergeJob, s.model.clusterSize, s.model.virtualSize);
      target = { ...img, fileSize: req.merged.fileEnd };
      plan = planQcow2Bitmap(s, req);
      if (plan.ok && plan.value.mergeJob) throw new CliError([`${what}: the merge was asked for twice`]);
    }
    if (!plan.ok) throw new CliError([`${what}: ${plan.error.message}`]);
  } catch (e) {
    // Nothing is left of a staged merge: the file gets its length back.
    if (target !== img) await truncateBack(img);
    throw e;
  }
  await applySteps(target, plan.value.steps, what, "off", "discard");
  if (srcFailure) throw srcFailure;
  if (plan.value.error) {
    io.err(`instar: ${plan.value.error}\n`);
    return 1;
  }
  return 0;
}

/** The guest's merge (bitmap_scan, merge mode): the result's data clusters, staged past the end. */
async function merge(
  img: OpenedImage,
  src: OpenedImage | undefined,
  job: MergeJob,
  cs: bigint,
  size: bigint,
) {
  const refuse = (why: string) => new CliError([`Could not change bitmaps of '${img.filename}': ${why}`]);
  const entries = tableSizeFor(size & ~511n, job.granularityBits, cs);
  const cap = job.staging + entries * cs;
  let result;
  try {
    result = await runGuest({
      op: "bitmap_scan",
      opCode: ops.BITMAP_SCAN,
      inputs: [
        { path: img.openPath, format: img.formatCode },
        ...(job.external && src ? [{ path: src.openPath, format: src.formatCode }] : []),
      ],
      args: [
        1n,
        job.dest === undefined ? (1n << 64n) - 1n : BigInt(job.dest),
        BigInt(job.src),
        job.external ? 1n : 0n,
        job.staging,
        BigInt(job.granularityBits),
      ],
      output: { path: img.openPath, cap },
      resultCap: 64 * 1024 * 1024,
    });
  } catch (e) {
    throw refuse(`sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
  }
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err || result.guestStatus !== 0n) {
    await truncateBack(img);
    throw refuse(err ? errorRecordMessage(err) : "sandbox failure");
  }
  const data = new Map<bigint, bigint>();
  let fileEnd = img.fileSize;
  for (const r of result.records) {
    if (r.type !== records.BITMAP_ENTRY) continue;
    const k = r.fields.index as bigint, at = r.fields.value as bigint;
    if (
      k >= entries || at !== job.staging + k * cs || data.has(k) || (r.fields.bitmap as number) !== 0xffffffff
    ) {
      await truncateBack(img);
      throw refuse("sandbox failure: malformed merge result");
    }
    data.set(k, at);
    if (at + cs > fileEnd) fileEnd = at + cs;
  }
  return { data, fileEnd };
}

/** Cuts a staged merge off again. */
async function truncateBack(img: OpenedImage) {
  const f = await Deno.open(hostPath(img.openPath), { write: true });
  try {
    await f.truncate(Number(img.fileSize));
  } finally {
    f.close();
  }
}
