// instar convert [-f fmt] [-O raw|qcow2] [-o options] [-c] [-p] [-S size] [-q] [-U] IN OUT
//
// qemu-img's img_convert: the same options, checks, messages and exit
// codes for what instar supports. Differences by design: the output is
// written under a temporary name in the target's directory and renamed
// into place only when complete (removed on failure or SIGINT/SIGTERM), so
// the target name never holds a half-written image; sources are read only
// inside the sandbox (lib/convert/pipeline.ts).
//
// This file runs the steps in img_convert's order; the steps are elsewhere:
// the command line in convert_args.ts, the source in convert_source.ts, -n
// into qcow2 or LUKS in convert_existing.ts, and the domain code in
// lib/convert/ (stdin_pass, top_source, output_spec, target_files,
// write_output, write_failure), whose ConvertErrors are reported here.
import { type ImageRef, imageRef } from "./image_ref.ts";
import { CliError, PROGRAM } from "./messages.ts";
import { loadSnapshot } from "./snapshot_param.ts";
import type { UnnamedFile } from "../vmm/unnamed_file.ts";
import { TempFiles } from "../convert/temp_files.ts";
import { writeOutput } from "../convert/write_output.ts";
import { stdinPass } from "../convert/stdin_pass.ts";
import { writeFailure } from "../convert/write_failure.ts";
import {
  convertIntoExistingLuks,
  convertIntoExistingQcow2,
  type ExistingTarget,
} from "./convert_existing.ts";
import { openConvertSource } from "./convert_source.ts";
import { commitTargets, deferUnlock, prepareTargets, type TargetRequest } from "../convert/target_files.ts";
import { checkAfterBacking, type OutputRequest, resolveOutput } from "../convert/output_spec.ts";
import { ConvertError, guestFailureMessage } from "../convert/errors.ts";
import { streamStep } from "../convert/stdio_target.ts";
import { refuseDataFile } from "./data_file.ts";
import { checkCombinations, checkSupported, parseArgs } from "./convert_args.ts";
import { CACHE_MODES, type InstarOptions, type Io, newInstarOptions } from "./common.ts";
import { chainInputs, kdfMaxIters, openFailure, unlockFailure } from "./image.ts";
import { TARGET_IS_ZERO_WITH_BACKING, topOfSource, topSpan } from "../convert/top_source.ts";
import { moveData } from "./write_rounds.ts";
import { convertPreallocatedQcow2, openTargetBackingChain, type TargetBacking } from "./convert_target.ts";
import { convertToPreallocatedQcrypt } from "./convert_prealloc_qcrypt.ts";
import { Progress } from "./progress.ts";
import { GuestFailure } from "../convert/pipeline.ts";
import { blockOptionHelp } from "./block_option_help.ts";
import { hasHelpOption } from "../formats/options.ts";
import { hostPath } from "../host/context.ts";
import { StdoutSink } from "../host/stdio_stream.ts";
import { HOST_DEVICE, hostDeviceHelp } from "../convert/host_device.ts";

export async function convertCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  try {
    return await convert(argv, io, base);
  } catch (e) {
    // lib/convert's one-line errors, as qemu-img prints them.
    if (e instanceof ConvertError) throw new CliError([e.message]);
    throw e;
  }
}

async function convert(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  const { a, operands } = parseArgs(argv, o);
  for (const w of a.warnings) io.err(`${PROGRAM}: ${w}\n`);
  const srcNum = operands.length - 1;
  // --target-image-opts: the target is block options naming one file (lib/cli/image_ref.ts);
  // an error in them is qemu's when it opens the target, after the sources.
  let targetDisplay: string | undefined, targetError: CliError | undefined;
  let targetRef: ImageRef | undefined;
  if (a.tgtImageOpts && srcNum >= 1) {
    targetDisplay = operands[srcNum];
    try {
      const t = targetRef = imageRef(targetDisplay, undefined, true, io.err);
      a.outFmt = t.format ?? "";
      operands[srcNum] = t.filename;
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      targetError = e;
      a.outFmt = "raw";
    }
  }
  const outFilename = srcNum >= 1 ? operands[operands.length - 1] : undefined;
  checkCombinations(a);
  // print_block_option_help, as create prints it (before anything is opened).
  if (a.options !== undefined && hasHelpOption(a.options)) {
    if (a.outFmt === HOST_DEVICE) {
      io.out(hostDeviceHelp(outFilename));
      return 0;
    }
    return blockOptionHelp(io, outFilename, a.outFmt);
  }
  if (srcNum < 1) throw new CliError(["Must specify image file name"]);
  if (!CACHE_MODES.includes(a.srcCache)) throw new CliError([`Invalid source cache option: ${a.srcCache}`]);
  if (a.quiet) a.progress = "off";
  const progress = new Progress(a.progress, 1.0, io);
  progress.set(0);
  const temps = new TempFiles();
  let spool: UnnamedFile | undefined;
  try {
    checkSupported(a, srcNum);
    const ref = imageRef(operands[0], a.fmt, o.imageOpts, io.err);
    const source = ref.filename;
    // `-`: the image comes from stdin or goes to stdout (docs/pipelines.md).
    const fromStdin = source === "-";
    const toStdout = outFilename === "-";
    // `-f raw|vmdk -` into a raw or qcow2 file: one pass over stdin (lib/convert/stdin_pass.ts).
    const { onePass, vmdkStream, spoolPrefix } = await stdinPass({
      fromStdin,
      toStdout,
      skipCreate: a.skipCreate,
      snapshot: a.snapshot !== undefined,
      outFmt: a.outFmt,
      options: a.options,
      format: ref.format,
      backing: a.outBase !== undefined || /(^|,)backing_file=/.test(a.options ?? ""),
    }, temps);
    let sink: StdoutSink | undefined;
    if (toStdout) {
      if (a.skipCreate) {
        throw new CliError(["Writing into an existing image (-n) needs a target file, not '-'"]);
      }
      sink = await streamStep(() => StdoutSink.open());
    }
    const chain = await openConvertSource(ref, {
      forceShare: a.forceShare,
      snapshot: a.snapshot !== undefined,
      maxSpool: a.maxSpool,
      onePass,
      spoolPrefix,
      deferUnlock: () => deferUnlock(a.skipCreate, a.outFmt, outFilename!),
      onSpool: (f) => spool = f,
    }, o);
    refuseDataFile(chain, source, "convert");
    // -l: the guest reads the snapshot's L1 table; the size stays the image's.
    const snapshot = a.snapshot === undefined ? 0 : loadSnapshot(chain[0], a.snapshot);
    // bdrv_getlength of the source (the driver's rounding of its size).
    // One pass: the size is known at the stream's end; qcow2 plans for a bound (below).
    let size = vmdkStream ? vmdkStream.size : onePass ? 0n : chain[0].length;
    // -n -B: the target is not created, so the name is never used; only what
    // the source's top layer decides is written (lib/convert/top_ranges.ts).
    let top: [bigint, bigint][] | undefined;
    if (a.skipCreate && a.outBase !== undefined) {
      // qemu-img reports this, then ends with status 0 having written nothing.
      if (a.targetIsZero) {
        io.err(`${PROGRAM}: ${TARGET_IS_ZERO_WITH_BACKING}\n`);
        return 0;
      }
      const inputs = chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 }));
      top = await topOfSource(a.outFmt, chain, inputs, size);
    }
    // -n into an existing qcow2 or LUKS image: written in place (lib/cli/convert_existing.ts).
    if (a.skipCreate && (a.outFmt === "qcow2" || a.outFmt === "luks")) {
      const existing: ExistingTarget = {
        target: outFilename!,
        display: targetDisplay ?? outFilename!,
        ref: targetRef,
        chain,
        snapshot,
        size,
        minSparse: a.minSparse,
        targetIsZero: a.targetIsZero,
        compress: a.compress,
        cache: a.cache,
        top,
        topSpan: top && chain[0] ? topSpan(chain[0]) : undefined,
        progress,
        progressMode: a.progress,
        o,
      };
      if (a.outFmt === "qcow2") await convertIntoExistingQcow2(existing);
      else await convertIntoExistingLuks(existing);
      return 0;
    }

    const request: OutputRequest = {
      ...a,
      target: outFilename!,
      toStdout,
      onePass,
      vmdkStream: vmdkStream !== undefined,
    };
    const resolved = await resolveOutput(request, size, chain);
    const spec = resolved.spec;
    size = resolved.size;
    // -B (or -o backing_file): qemu opens the new target with its backing
    // chain; so does instar, read-only, to learn the backing file's size.
    let backingSize: bigint | undefined, backingInputs: TargetBacking["inputs"];
    const backingName = spec.qcow2?.backingFile;
    if (backingName !== undefined) {
      ({ size: backingSize, inputs: backingInputs } = await openTargetBackingChain(
        outFilename!,
        new TextDecoder().decode(backingName),
        spec.qcow2!.backingFormat,
        o,
      ));
    }
    checkAfterBacking(spec, request);
    if (!CACHE_MODES.includes(a.cache)) throw new CliError([`Invalid cache option: ${a.cache}`]);
    const targetRequest: TargetRequest = {
      target: outFilename!,
      display: targetDisplay,
      targetError,
      outFmt: a.outFmt,
      skipCreate: a.skipCreate,
      targetIsZero: a.targetIsZero,
      toStdout,
      keepRest: top !== undefined,
      size,
      reads: chain,
    };
    const files = await prepareTargets(spec, targetRequest, temps);
    const { outs, inPlaceMode } = files;
    const out = outs[outs.length - 1];
    const job = {
      layers: chainInputs(chain).map((x, i) => ({
        path: x.path,
        formatCode: x.format,
        nofollow: x.nofollow,
        snapshot: i === 0 ? snapshot : 0,
        secret: x.secret,
      })),
      kdfMaxIters: kdfMaxIters(),
      luks2Ram: chain[0]?.luks2Ram, // none for a one-pass stdin (no chain)
      size,
      minSparse: a.minSparse,
      inPlace: inPlaceMode,
      // The guest's 100% is left to the end (see below).
      onProgress: (done: bigint, total: bigint) => {
        if (done < total || a.progress === "json") progress.bytes(done, total);
      },
    };
    let written: bigint;
    try {
      // -n -B and a preallocated qcow2 are written by lib/cli helpers (never
      // from or to a stream: refused above); every other writer is lib/convert's.
      if (top && spec.writer === "raw") {
        // -n -B: the top's ranges, its zeroes included, copied at their offsets.
        const st = await Deno.stat(hostPath(out));
        const moves = top.map(([from, to]) => ({ from, to, at: from }));
        written = moves.reduce((t, m) => t + (m.to - m.from), 0n);
        await moveData(
          chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
          { openPath: out, dev: BigInt(st.dev), ino: BigInt(st.ino ?? 0) },
          moves,
          size,
          `error while writing into '${outFilename}'`,
          (d) => job.onProgress(d, written),
        );
      } else if (spec.writer === "qcow2" && spec.qcow2Create?.encrypt && spec.preallocation !== "off") {
        // Made as `create` makes it, then written in place by the -n writer (as qemu does).
        written = await convertToPreallocatedQcrypt(outFilename!, out, spec.qcow2Create, o, {
          chain,
          source: chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
          size,
          minSparse: a.minSparse,
          kdfMaxIters: job.kdfMaxIters,
          onProgress: job.onProgress,
        });
      } else if (spec.writer === "qcow2" && spec.preallocation !== "off") {
        written = await convertPreallocatedQcow2(outFilename!, out, spec.qcow2Create!, {
          unsafeQuirks: o.unsafeQuirks,
          source: chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
          size,
          minSparse: a.minSparse,
          onProgress: job.onProgress,
        });
      } else {
        written = await writeOutput(job, spec, files, {
          compress: a.compress,
          secrets: o.secrets,
          kdfMaxIters: job.kdfMaxIters,
          onePass: onePass ? { vmdkStream } : undefined,
          sink,
          backingSize,
          backingInputs,
          topQcow2: chain[0]?.qcow2,
          temps,
        });
      }
    } catch (e) {
      if (e instanceof GuestFailure) {
        // A deferred unlock that failed in the reading guest: qemu's open error.
        const unlock = chain.length > 0 ? unlockFailure(chain[0], 0, e.records) : undefined;
        if (unlock) throw openFailure(ref.display, unlock);
        throw new CliError([guestFailureMessage(e)]);
      }
      if (e instanceof CliError) throw e;
      throw writeFailure(e, outFilename!, a.outFmt);
    }
    await commitTargets(files, targetRequest, temps);
    // qemu prints 100% when the last data is copied (only if there was
    // any) and once more when it finishes.
    if (written > 0n) progress.set(100);
    progress.set(100);
    return 0;
  } finally {
    spool?.close();
    temps.removeAll();
    temps.dispose();
    progress.end();
  }
}
