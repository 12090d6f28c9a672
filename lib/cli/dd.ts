// instar dd [-U] [-f fmt] [-O output_fmt] [bs=N] [count=N] [skip=N] if=INPUT of=OUTPUT
//
// qemu-img 7.2's img_dd: the same option and operand parsing, checks,
// messages and exit codes, and the same output (an image of the output
// format, created with its defaults and the size img_dd works out, holding
// the input's bytes from skip * bs on). Not a copy engine of its own: the
// planner (lib/convert/dd_plan.ts) turns the operands into a source range
// and an output size, and convert's data path (lib/convert/pipeline.ts)
// moves the data inside the sandbox. Raw output takes the range directly
// (the guest writes source byte x at x - from); other formats take it
// directly when it starts at 0, otherwise through a sparse raw temporary
// beside the target that the format's writer then converts. As convert,
// the output is written under a temporary name and put in place complete.
import { CliError, PROGRAM } from "./messages.ts";
import { getoptCommand, type InstarOptions, type Io, newInstarOptions } from "./common.ts";
import { readLock } from "./common.ts";
import { cvtnum, INT64_MAX, SizeError, strtosz } from "./options.ts";
import {
  chainInputs,
  chainNeedsNoKey,
  errnoText,
  openChain,
  OpenError,
  openFailure,
  openImage,
} from "./image.ts";
import { refuseDataFile } from "./data_file.ts";
import { TempFiles } from "../convert/temp_files.ts";
import { makePolicy } from "../chain/policy.ts";
import { planDd } from "../convert/dd_plan.ts";
import {
  type ConvertJob,
  convertToBlocks,
  convertToExtents,
  convertToQcow2,
  convertToRaw,
  convertToStream,
  GuestFailure,
  PlanRefused,
} from "../convert/pipeline.ts";
import { OutputOptionError, outputOptions, type OutputSpec } from "../convert/output_options.ts";
import { driverFor, isQemuDriver } from "../formats/mod.ts";
import { formats } from "../abi/spec.ts";
import { WriteError } from "../formats/apply_plan.ts";
import { LockError, LOCKS, takeLock } from "../vmm/image_lock.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import { hostPath } from "../host/context.ts";

const INT_MAX = 0x7fffffffn;

interface DdArgs {
  fmt?: string;
  outFmt: string;
  forceShare: boolean;
  bs: bigint;
  count?: bigint;
  skip?: bigint;
  input?: string;
  output?: string;
}

/** cvtnum_full(name, text, min, max), as img_dd_bs calls it. */
function cvtnumRange(name: string, text: string, min: bigint, max: bigint): bigint {
  let v: bigint;
  try {
    v = strtosz(text);
  } catch (e) {
    if (!(e instanceof SizeError) || !e.range) return cvtnum(name, text);
    v = INT64_MAX + 1n;
  }
  if (v < min || v > max) {
    throw new CliError([`Invalid ${name} specified. Must be between ${min} and ${max}.`]);
  }
  return v;
}

function parseArgs(argv: string[], o: InstarOptions): DdArgs {
  const a: DdArgs = { outFmt: "raw", forceShare: false, bs: 512n };
  const operands = getoptCommand(o, argv, ":hf:O:U", [
    { name: "help", hasArg: false, id: "h" },
    { name: "object", hasArg: true, id: "object" },
    { name: "image-opts", hasArg: false, id: "image-opts" },
    { name: "force-share", hasArg: false, id: "U" },
  ], ({ id, value }) => {
    switch (id) {
      case "f":
        a.fmt = value;
        break;
      case "O":
        a.outFmt = value!;
        break;
      case "U":
        a.forceShare = true;
        break;
      case "object":
      case "image-opts":
        throw new CliError([`--${id} is not supported by instar`]);
    }
  });
  // img_dd's operand loop: name=value, each handled (and refused) in order.
  for (const arg of operands) {
    const eq = arg.indexOf("=");
    if (eq < 0) throw new CliError([`unrecognized operand ${arg}`]);
    const name = arg.slice(0, eq), value = arg.slice(eq + 1);
    switch (name) {
      case "bs":
        a.bs = cvtnumRange("bs", value, 1n, INT_MAX);
        break;
      case "count":
        a.count = cvtnum("count", value);
        break;
      case "if":
        a.input = value;
        break;
      case "of":
        a.output = value;
        break;
      case "skip":
        a.skip = cvtnum("skip", value);
        break;
      default:
        throw new CliError([`unrecognized operand ${name}`]);
    }
  }
  if (a.input === undefined || a.output === undefined) {
    throw new CliError(["Must specify both input and output files"]);
  }
  return a;
}

function guestFailureMessage(e: GuestFailure): string {
  const f = e.record.fields;
  const msg = qcow2ErrorMessage({
    code: f.code as number,
    a0: f.a0 as bigint,
    a1: f.a1 as bigint,
    a2: f.a2 as bigint,
  });
  return `error while reading from input image file: ${msg}`;
}

/** Writes `job` into `out` with the output format's writer (as convert does). */
async function writeWith(spec: OutputSpec, job: ConvertJob, out: string, temps: TempFiles, target: string) {
  if (spec.writer === "raw") return await convertToRaw(job, out);
  if (spec.writer === "blocks") return await convertToBlocks(job, spec.blocks!, out);
  if (spec.writer === "stream") return await convertToStream(job, spec.stream!, out);
  if (spec.writer === "extents") {
    // The extent files beside the target, then the descriptor (out).
    const files: string[] = [];
    return await convertToExtents(job, spec.extents!, async (i) => {
      if (i === spec.extents!.extents.length) return out;
      files[i] ??= await temps.create(target, "extent");
      return files[i];
    });
  }
  return await convertToQcow2(job, { options: spec.qcow2!, compress: false }, out);
}

export async function ddCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  const a = parseArgs(argv, o);
  const source = a.input!, outName = a.output!;
  // bdrv_open of an empty name: the file protocol's own refusal.
  if (source === "") throw new CliError(["Could not open '': The 'file' block driver requires a file name"]);
  let chain;
  try {
    const lock = readLock(a.forceShare);
    const top = await openImage(source, {
      format: a.fmt,
      unsafeQuirks: o.unsafeQuirks,
      backingDirs: o.backingDirs,
      lock,
      noLists: true,
    });
    chain = await openChain(top, await makePolicy(source, o.backingDirs), o.unsafeQuirks, lock);
    chainNeedsNoKey(chain);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(source, e);
    throw e;
  }
  refuseDataFile(chain, source, "dd");

  const driver = driverFor(a.outFmt);
  if (!driver) {
    if (isQemuDriver(a.outFmt)) {
      throw new CliError([`Writing the ${a.outFmt} format is not supported by instar dd`]);
    }
    throw new CliError(["Unknown file format"]);
  }
  if (!driver.create) throw new CliError([`Format driver '${a.outFmt}' does not support image creation`]);
  const plan = planDd({ bs: a.bs, count: a.count, skip: a.skip }, chain[0].length);
  // bdrv_create rounds the size up to whole sectors; only outSize bytes are copied.
  const sized = plan.fileSize;

  // bdrv_create of the output, with the format's defaults and the planned size.
  const creating = (why: string) => new CliError([`${outName}: error while creating output image: ${why}`]);
  let spec: OutputSpec;
  try {
    spec = outputOptions(driver, "", outName, sized);
  } catch (e) {
    if (!(e instanceof OutputOptionError)) throw e;
    const prefix = `${outName}: error while converting ${a.outFmt}: `;
    if (e.message.startsWith(prefix)) throw creating(e.message.slice(prefix.length));
    throw new CliError([e.message.replace("instar convert", "instar dd")]);
  }
  if (spec.writer === "extents") {
    throw new CliError([`Writing a multi-file ${a.outFmt} image is not supported by instar dd`]);
  }
  const existing = await Deno.stat(hostPath(outName)).catch(() => undefined);
  if (existing?.isDirectory) throw creating(`Could not create '${outName}': Is a directory`);
  if (existing && !existing.isFile) {
    throw new CliError([`Writing onto a device is not supported by instar dd: '${outName}'`]);
  }
  // qemu writes through a symlink to the file it names.
  const target = (await Deno.lstat(hostPath(outName)).catch(() => undefined))?.isSymlink
    ? await Deno.realPath(hostPath(outName))
    : outName;
  if (existing) {
    let held;
    try {
      held = await takeLock(target, LOCKS.create, outName);
    } catch (e) {
      if (e instanceof LockError) throw creating(e.message);
      throw creating(`Could not create '${outName}': ${errnoText(e)}`);
    }
    if (chain.some((img) => img.dev === held.dev && img.ino === held.ino)) {
      throw creating("Refusing to overwrite an image this command reads");
    }
  }

  const temps = new TempFiles();
  try {
    let out: string;
    try {
      out = await temps.createOutput(target);
    } catch (e) {
      throw creating(`Could not create '${outName}': ${errnoText(e)}`);
    }
    if (plan.cannotSkip) io.err(`${PROGRAM}: ${source}: cannot skip to specified offset\n`);
    const layers = chainInputs(chain).map((x) => ({
      path: x.path,
      formatCode: x.format,
      nofollow: x.nofollow,
    }));
    const job: ConvertJob = {
      layers,
      size: plan.outSize,
      fileSize: sized,
      minSparse: 4096n,
      origin: plan.from,
    };
    try {
      if (spec.writer === "raw") {
        await convertToRaw(job, out);
      } else if (plan.from === 0n && sized === plan.outSize) {
        await writeWith(spec, { layers, size: sized, minSparse: 4096n }, out, temps, target);
      } else {
        // The range through a sparse raw temporary, then the format's writer.
        const mid = await temps.create(target, "dd");
        await convertToRaw(job, mid);
        const rawLayer = [{ path: mid, formatCode: formats.RAW, nofollow: true }];
        await writeWith(spec, { layers: rawLayer, size: sized, minSparse: 4096n }, out, temps, target);
      }
    } catch (e) {
      if (e instanceof PlanRefused) throw creating(e.message);
      if (e instanceof GuestFailure) throw new CliError([guestFailureMessage(e)]);
      if (e instanceof CliError) throw e;
      const w = (e as { write?: { offset: bigint; text: string } }).write;
      if (w) throw new CliError([`error while writing to output image file: ${w.text}`]);
      if (e instanceof WriteError) {
        throw new CliError([`error while writing to output image file: ${errnoText(e.reason)}`]);
      }
      throw new CliError([`Sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
    }
    // Keep an existing target's permissions, as qemu's O_TRUNC open would.
    if (existing?.mode != null) await Deno.chmod(hostPath(out), existing.mode & 0o7777).catch(() => {});
    temps.checkCancelled();
    try {
      await temps.commit(out, target);
    } catch (e) {
      throw creating(`Could not create '${outName}': ${errnoText(e)}`);
    }
    return 0;
  } finally {
    temps.removeAll();
    temps.dispose();
  }
}
