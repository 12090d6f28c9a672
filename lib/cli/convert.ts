// instar convert [-f fmt] [-O raw|qcow2] [-o options] [-c] [-p] [-S size] [-q] [-U] IN OUT
//
// qemu-img's img_convert: the same options, checks, messages and exit
// codes for what instar supports. Differences by design: the output is
// written under a temporary name in the target's directory and renamed
// into place only when complete (removed on failure or SIGINT/SIGTERM), so
// the target name never holds a half-written image; sources are read only
// inside the sandbox (lib/convert/pipeline.ts).
import { type ImageRef, imageRef } from "./image_ref.ts";
import { getopt } from "./getopt.ts";
import { CliError, PROGRAM, usageError } from "./messages.ts";
import { loadSnapshot, parseSnapshotParam, type SnapshotParam } from "./snapshot_param.ts";
import { LockError, LOCKS, takeLock } from "../vmm/image_lock.ts";
import { WriteError } from "../formats/apply_plan.ts";
import { UnnamedFile } from "../vmm/unnamed_file.ts";
import { refuseDataFile } from "./data_file.ts";
import { guestErrors } from "../abi/spec.ts";
import {
  addOptionList,
  CACHE_MODES,
  DATA_LONGS_HEAD,
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
  readLock,
} from "./common.ts";
import { cvtnum } from "./options.ts";
import {
  chainInputs,
  errnoText,
  kdfMaxIters,
  openChain,
  type OpenedImage,
  OpenError,
  openFailure,
  openImage,
  unlockFailure,
  unlockForRead,
} from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { convertIntoQcow2, openQcow2Target } from "./convert_into_qcow2.ts";
import { topRanges } from "../convert/top_ranges.ts";
import { mapRuns } from "./commit.ts";
import { moveData } from "./write_rounds.ts";
import { convertPreallocatedQcow2, openTargetBacking } from "./convert_target.ts";
import { fileRange } from "../vmm/guest.ts";
import { Progress, type ProgressMode } from "./progress.ts";
import {
  type ConvertJob,
  convertToBlocks,
  convertToExtents,
  convertToQcow2,
  convertToRaw,
  convertToStream,
  GuestFailure,
  PlanRefused,
  qcow2Target,
  streamTarget,
} from "../convert/pipeline.ts";
import { OutputOptionError, outputOptions, type OutputSpec } from "../convert/output_options.ts";
import { convertToLuks } from "../convert/luks_target.ts";
import { convertIntoLuks } from "./convert_into_luks.ts";
import { cryptCompressRefusal } from "../convert/crypt_compress.ts";
import {
  COMPRESS_ENCRYPT,
  compressEncryptFirst,
  convertToEncryptedQcow2,
  encryptedQcow2Refusal,
} from "../convert/qcow2_encrypt_target.ts";
import { convertIntoQcrypt, unlockQcryptTarget } from "./convert_into_qcrypt.ts";
import { convertToPreallocatedQcrypt } from "./convert_prealloc_qcrypt.ts";
import { driverFor } from "../formats/mod.ts";
import { blockOptionHelp } from "./create.ts";
import { hasHelpOption } from "../formats/options.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import { Cancelled, hostPath, trapSignals } from "../host/context.ts";
import {
  DEFAULT_MAX_SPOOL,
  spoolDir,
  spoolStdin,
  StdoutSink,
  StreamClosed,
  StreamError,
} from "../host/stdio_stream.ts";
import {
  convertBlocksToStream,
  convertPackedToStream,
  convertRawToStream,
  windowSize as streamWindowBytes,
} from "../convert/stream_output.ts";
import {
  HOST_DEVICE,
  hostDeviceHelp,
  hostDeviceOpenError,
  hostDeviceOptions,
  hostDevicePreallocationError,
} from "../convert/host_device.ts";
import {
  convertRawStdin,
  onePassBound,
  type OnePassTarget,
  RAW_ONE_PASS_BOUND,
} from "../convert/stdin_raw.ts";
import { convertVmdkStdin, openVmdkStdin, type VmdkStream } from "../convert/stdin_vmdk.ts";
import { hostStdio } from "../host/stdio.ts";
import { MAX_SPOOL_LONG, openStdinImage, parseMaxSpool } from "./stdin_image.ts";

const MAX_BUF_SECTORS = 32768n;
interface ConvertArgs {
  fmt?: string;
  outFmt: string;
  outBase?: string;
  backingFmt?: string;
  compress: boolean;
  options?: string;
  minSparse: bigint;
  explicitSparse: boolean;
  copyRange: boolean;
  progress: ProgressMode;
  quiet: boolean;
  skipCreate: boolean;
  salvage: boolean;
  targetIsZero: boolean;
  bitmaps: boolean;
  skipBroken: boolean;
  snapshot?: SnapshotParam;
  /** -U: the source's locks share everything. */
  forceShare: boolean;
  /** qemu's warnings while parsing -l, printed before anything else happens. */
  warnings: string[];
  cache: string;
  srcCache: string;
  tgtImageOpts: boolean;
  /** --max-spool: the most bytes a source read from stdin (`-`) may hold. */
  maxSpool: bigint;
}

function parseArgs(argv: string[], o: InstarOptions): { a: ConvertArgs; operands: string[] } {
  const a: ConvertArgs = {
    outFmt: "",
    compress: false,
    minSparse: 8n * 512n,
    explicitSparse: false,
    copyRange: false,
    progress: "off",
    quiet: false,
    skipCreate: false,
    salvage: false,
    targetIsZero: false,
    bitmaps: false,
    skipBroken: false,
    warnings: [],
    forceShare: false,
    cache: "unsafe",
    srcCache: "writeback",
    tgtImageOpts: false,
    maxSpool: DEFAULT_MAX_SPOOL,
  };
  let outFmtSet = false;
  const operands = getopt(argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", [
    ...DATA_LONGS_HEAD,
    { name: "force-share", hasArg: false, id: "U" },
    { name: "target-image-opts", hasArg: false, id: "target-image-opts" },
    { name: "salvage", hasArg: false, id: "salvage" },
    { name: "target-is-zero", hasArg: false, id: "target-is-zero" },
    { name: "bitmaps", hasArg: false, id: "bitmaps" },
    { name: "skip-broken-bitmaps", hasArg: false, id: "skip-broken" },
    { name: "progress", hasArg: true, id: "progress" },
    MAX_SPOOL_LONG,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "f":
        a.fmt = value;
        break;
      case "O":
        a.outFmt = value!;
        outFmtSet = true;
        break;
      case "B":
        a.outBase = value;
        break;
      case "C":
        a.copyRange = true;
        break;
      case "c":
        a.compress = true;
        break;
      case "F":
        a.backingFmt = value;
        break;
      case "o":
        a.options = addOptionList(a.options, value!);
        break;
      case "l": {
        const { param, warnings } = parseSnapshotParam(value!);
        a.snapshot = param;
        a.warnings.push(...warnings);
        break;
      }
      case "S": {
        const v = cvtnum("buffer size for sparse output", value!);
        if (v % 512n !== 0n || v / 512n > MAX_BUF_SECTORS) {
          throw new CliError([
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. " +
            "Select 0 to disable sparse detection (fully allocates output).",
          ]);
        }
        a.minSparse = v;
        a.explicitSparse = true;
        break;
      }
      case "p":
        a.progress = "line";
        break;
      case "progress":
        if (value !== "json") throw usageError(`Invalid --progress '${value}' (expected json)`);
        a.progress = "json";
        break;
      case "t":
        a.cache = value!;
        break;
      case "T":
        a.srcCache = value!;
        break;
      case "q":
        a.quiet = true;
        break;
      case "n":
        a.skipCreate = true;
        break;
      case "m": {
        const n = /^[+-]?(0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$/i.test(value!) ? Number(value) : NaN;
        if (!(n >= 1 && n <= 16)) {
          throw new CliError([
            "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
          ]);
        }
        break;
      }
      case "W":
        break;
      case "U":
        a.forceShare = true;
        break;
      case "r":
        cvtnum("rate limit", value!);
        break;
      case "salvage":
        a.salvage = true;
        break;
      case "target-image-opts":
        a.tgtImageOpts = true;
        break;
      case "target-is-zero":
        a.targetIsZero = true;
        break;
      case "bitmaps":
        a.bitmaps = true;
        break;
      case "skip-broken":
        a.skipBroken = true;
        break;
      case "max-spool":
        a.maxSpool = parseMaxSpool(value!);
        break;
    }
  });
  if (!outFmtSet && !a.tgtImageOpts) a.outFmt = "raw";
  return { a, operands };
}

/** The checks img_convert makes before opening anything, in its order. */
function checkCombinations(a: ConvertArgs) {
  if (a.skipBroken && !a.bitmaps) throw new CliError(["Use of --skip-broken-bitmaps requires --bitmaps"]);
  if (a.compress && a.copyRange) throw new CliError(["Cannot enable copy offloading when -c is used"]);
  if (a.explicitSparse && a.copyRange) throw new CliError(["Cannot enable copy offloading when -S is used"]);
  if (a.copyRange && a.salvage) throw new CliError(["Cannot use copy offloading in salvaging mode"]);
  if (a.tgtImageOpts && !a.skipCreate) throw new CliError(["--target-image-opts requires use of -n flag"]);
  if (a.skipCreate && a.options !== undefined) {
    throw new CliError(["-o has no effect when skipping image creation"]);
  }
  if (a.targetIsZero && !a.skipCreate) throw new CliError(["--target-is-zero requires use of -n flag"]);
}

/** -O host_device: qemu's option, compression, preallocation and open checks, in its order. */
async function checkHostDevice(a: ConvertArgs, target: string): Promise<void> {
  let mode: string;
  try {
    mode = hostDeviceOptions(a.options ?? "", target);
  } catch (e) {
    if (e instanceof OutputOptionError) throw new CliError([e.message]);
    throw e;
  }
  if (a.compress) throw new CliError(["Compression not supported for this file format"]);
  const prefix = `${target}: error while converting ${HOST_DEVICE}: `;
  const prealloc = a.skipCreate ? undefined : hostDevicePreallocationError(mode);
  if (prealloc) throw new CliError([prefix + prealloc]);
  const why = await hostDeviceOpenError(target, errnoText);
  if (why === undefined) return;
  throw new CliError([
    a.skipCreate
      ? `Could not open '${target}': ${why}`
      : `${prefix}Protocol driver '${HOST_DEVICE}' does not support image creation, and opening the image failed: ${why}`,
  ]);
}

/**
 * Whether an encrypted source's unlock can be left to the reading guests
 * (unlockForRead's `defer`): a new target file whose writer reports the
 * guests' failures (not a LUKS target), never -n or a device, which are
 * written in place (zeroed or punched) before a guest runs.
 */
async function deferUnlock(a: ConvertArgs, target: string): Promise<boolean> {
  if (a.skipCreate || !["raw", "qcow2", "vpc", "vhdx", "vmdk"].includes(a.outFmt)) return false;
  if (target === "-") return true;
  const st = await Deno.stat(hostPath(target)).catch(() => undefined);
  return !st?.isBlockDevice && !st?.isCharDevice;
}

/** Features qemu-img has that instar refuses, with a clear reason. */
function checkSupported(a: ConvertArgs, srcNum: number) {
  const no = (what: string) => new CliError([`${what} is not supported by instar convert`]);
  if (srcNum > 1) throw no("Concatenating several source images");
  if (a.skipCreate && !["raw", "qcow2", "luks", HOST_DEVICE].includes(a.outFmt)) {
    throw no("Writing into an existing image other than raw, qcow2 or LUKS (-n)");
  }
  if (a.skipCreate && a.outFmt === "qcow2" && a.compress) {
    throw no("Compressed writes into an existing qcow2 (-n -c)");
  }
  if (a.salvage) throw no("--salvage");
  if (a.bitmaps) throw no("Copying bitmaps (--bitmaps)");
}

/** A fresh temporary name beside the target (same filesystem, so rename is atomic). */
function tempBeside(target: string, tag: string): string {
  const slash = target.lastIndexOf("/");
  const dir = slash >= 0 ? target.slice(0, slash + 1) : "";
  const base = slash >= 0 ? target.slice(slash + 1) : target;
  const rand = crypto.getRandomValues(new Uint32Array(2)).join("");
  return `${dir}.${base}.instar-${tag}-${rand}`;
}

/** Removes the temporary files on failure, exit or cancel (SIGINT/SIGTERM to the
 * direct CLI, a cancel from the service's client): the guest is stopped and the
 * command returns 130/143 through run(), with nothing left under the target name. */
export class TempFiles {
  paths: string[] = [];
  /** Unnamed outputs (O_TMPFILE) by the path they are written through. */
  #unnamed = new Map<string, UnnamedFile>();
  #trap = trapSignals();
  // The list is kept: a step already under way may create a file again, and the
  // final removeAll() takes it too.
  #onCancel = () => this.#remove();
  constructor() {
    this.#trap.signal.addEventListener("abort", this.#onCancel);
  }
  /** Throws when the command was cancelled (checked before the rename). */
  checkCancelled() {
    if (this.#trap.signal.aborted) throw new Cancelled();
  }
  async create(target: string, tag: string): Promise<string> {
    for (;;) {
      const p = tempBeside(target, tag);
      try {
        const f = await Deno.open(hostPath(p), { write: true, createNew: true, mode: 0o644 });
        f.close();
        this.paths.push(p);
        return p;
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
    }
  }
  /** The output's file: unnamed (O_TMPFILE) beside the target where the file
   * system allows, so a killed convert leaves nothing; else a named temporary. */
  async createOutput(target: string): Promise<string> {
    const slash = target.lastIndexOf("/");
    const u = await UnnamedFile.create(slash >= 0 ? target.slice(0, slash + 1) : ".");
    if (!u) return await this.create(target, "out");
    this.#unnamed.set(u.path, u);
    return u.path;
  }
  /** Puts the finished output in place of `target` (linkat, or rename of the named temporary). */
  async commit(out: string, target: string): Promise<void> {
    const u = this.#unnamed.get(out);
    if (!u) {
      await Deno.rename(hostPath(out), hostPath(target));
      this.paths = this.paths.filter((p) => p !== out);
      return;
    }
    // No target yet: the name appears complete, at once. Else link beside it and rename over it.
    if (!u.link(target)) {
      let tmp;
      do tmp = tempBeside(target, "out"); while (!u.link(tmp));
      this.paths.push(tmp);
      await Deno.rename(hostPath(tmp), hostPath(target));
      this.paths = this.paths.filter((p) => p !== tmp);
    }
    u.close();
    this.#unnamed.delete(out);
  }
  #remove() {
    for (const p of this.paths) {
      try {
        Deno.removeSync(hostPath(p));
      } catch { /* already gone */ }
    }
    for (const u of this.#unnamed.values()) u.close();
    this.#unnamed.clear();
  }
  removeAll() {
    this.#remove();
    this.paths = [];
  }
  dispose() {
    this.#trap.signal.removeEventListener("abort", this.#onCancel);
    this.#trap.dispose();
  }
}

function guestFailureMessage(e: GuestFailure): string {
  const f = e.record.fields;
  // a failed read or block status (e.g. a vmdk grain lookup qemu fails with EIO)
  const msg = f.code === guestErrors.IO ? "Input/output error" : qcow2ErrorMessage({
    code: f.code as number,
    a0: f.a0 as bigint,
    a1: f.a1 as bigint,
    a2: f.a2 as bigint,
  });
  return `error while reading the source image: ${msg}`;
}

export async function convertCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  const { a, operands } = parseArgs(argv, o);
  for (const w of a.warnings) io.err(`${PROGRAM}: ${w}\n`);
  const srcNum = operands.length - 1;
  // --target-image-opts: the target is block options naming one file (lib/cli/image_ref.ts);
  // an error in them is qemu's when it opens the target, after the sources.
  let targetDisplay: string | undefined, targetError: CliError | undefined, targetKey = false;
  let targetRef: ImageRef | undefined;
  if (a.tgtImageOpts && srcNum >= 1) {
    targetDisplay = operands[srcNum];
    try {
      const t = targetRef = imageRef(targetDisplay, undefined, true, io.err);
      a.outFmt = t.format ?? "";
      operands[srcNum] = t.filename;
      targetKey = t.keySecret !== undefined;
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
    // `-f raw -` into a raw or qcow2 file: one pass over stdin, nothing spooled
    // (lib/convert/stdin_raw.ts). Everything else from stdin is spooled first.
    const onePassTarget = fromStdin && !toStdout && !a.skipCreate && a.snapshot === undefined &&
      (a.outFmt === "raw" || a.outFmt === "qcow2");
    // `-f vmdk -` likewise when the stream is streamOptimized (lib/convert/stdin_vmdk.ts): the first
    // window is read and decoded here; any other vmdk stream is spooled, those bytes first.
    let vmdkStream: VmdkStream | undefined;
    let spoolPrefix: { path: string; len: bigint } | undefined;
    if (onePassTarget && ref.format === "vmdk") {
      const windows = () => streamStep(() => temps.createOutput(`${spoolDir()}/stdin`));
      const opened = await streamStep(() => openVmdkStdin(hostStdio(), windows, streamWindowBytes()));
      if (opened.kind === "stream") vmdkStream = opened;
      else spoolPrefix = opened.prefix;
    }
    const onePass = onePassTarget && (ref.format === "raw" || vmdkStream !== undefined);
    let sink: StdoutSink | undefined;
    if (toStdout) {
      if (a.skipCreate) {
        throw new CliError(["Writing into an existing image (-n) needs a target file, not '-'"]);
      }
      sink = await streamStep(() => StdoutSink.open());
    }
    let chain: OpenedImage[];
    try {
      const lock = readLock(a.forceShare);
      // The snapshot list is needed only to pick the one -l names.
      const noLists = a.snapshot === undefined;
      if (onePass) {
        chain = [];
      } else if (fromStdin) {
        spool = await streamStep(() => spoolStdin(a.maxSpool, spoolPrefix), source);
        chain = [
          await openStdinImage(source, spool.path, {
            format: ref.format,
            unsafeQuirks: o.unsafeQuirks,
            noLists,
          }),
        ];
      } else {
        const top = await openImage(source, {
          format: ref.format,
          unsafeQuirks: o.unsafeQuirks,
          backingDirs: o.backingDirs,
          lock,
          noLists,
          readsData: true,
          encryptFormat: ref.encryptFormat,
        });
        chain = await openChain(top, await makePolicy(source, o.backingDirs), o.unsafeQuirks, lock);
      }
      if (!onePass) {
        await unlockForRead(
          chain[0],
          ref.keySecret,
          ref.keySecretOption,
          o.secrets,
          chain,
          await deferUnlock(a, outFilename!),
        );
      }
    } catch (e) {
      if (e instanceof OpenError) throw openFailure(ref.display, e);
      throw e;
    }
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
        io.err(`${PROGRAM}: Cannot use --target-is-zero when the destination image has a backing file\n`);
        return 0;
      }
      if (a.outFmt !== "raw" && a.outFmt !== "qcow2") {
        throw new CliError([
          "Writing into an existing image with a backing file (-n -B) is not supported by instar convert",
        ]);
      }
      if (a.snapshot !== undefined) {
        throw new CliError([
          "Writing a snapshot into an existing image (-n -B -l) is not supported by instar convert",
        ]);
      }
      // A source without a backing file: bdrv_block_status_above(src, NULL), the whole disk.
      if (chain.length > 1) {
        const q = chain[0].qcow2;
        if (!q) {
          throw new CliError([
            "Writing into an existing image with a backing file (-n -B) is not supported by instar convert for this source",
          ]);
        }
        const span = q.clusterSize * (q.clusterSize / (q.extendedL2 ? 16n : 8n));
        const runs = await mapRuns(chainInputs(chain), "error while reading");
        top = topRanges(runs, size, chain[1].length, span);
      }
    }
    if (a.skipCreate && a.outFmt === "qcow2") {
      // -n -O qcow2: written in place by the in-place qcow2 writer.
      const img = await openQcow2Target(
        outFilename!,
        o.unsafeQuirks,
        targetKey,
        targetDisplay ?? outFilename!,
        targetRef?.encryptFormat,
      );
      if (chain.some((x) => x.dev === img.dev && x.ino === img.ino)) {
        throw new CliError([`${outFilename}: Refusing to overwrite an image this command reads`]);
      }
      if (img.qcow2!.layout.cryptMethod !== 0) {
        // Encrypted: unlocked and encrypted in the guest (lib/cli/convert_into_qcrypt.ts).
        const job = {
          target: outFilename!,
          display: targetDisplay ?? outFilename!,
          keySecret: targetRef?.keySecret,
          keySecretOption: targetRef?.keySecretOption,
          secrets: o.secrets,
          kdfMaxIters: kdfMaxIters(),
          chain,
          unsafeQuirks: o.unsafeQuirks,
          source: chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
          size,
          minSparse: a.minSparse,
          targetIsZero: a.targetIsZero,
          onProgress: (done: bigint, total: bigint) => progress.bytes(done, total),
        };
        await unlockQcryptTarget(job, img);
        if (!CACHE_MODES.includes(a.cache)) throw new CliError([`Invalid cache option: ${a.cache}`]);
        try {
          const written = await convertIntoQcrypt(job, img);
          if (written > 0n) progress.set(100);
        } catch (e) {
          if (e instanceof GuestFailure) throw new CliError([guestFailureMessage(e)]);
          throw e;
        }
        progress.set(100);
        return 0;
      }
      if (img.virtualSize < size) throw new CliError(["output file is smaller than input file"]);
      if (!CACHE_MODES.includes(a.cache)) throw new CliError([`Invalid cache option: ${a.cache}`]);
      const written = await convertIntoQcow2({
        target: outFilename!,
        unsafeQuirks: o.unsafeQuirks,
        source: chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
        size,
        minSparse: a.minSparse,
        targetIsZero: a.targetIsZero,
        top,
        onProgress: (done, total) => progress.bytes(done, total),
      }, img);
      if (written > 0n) progress.set(100);
      progress.set(100);
      return 0;
    }

    if (a.skipCreate && a.outFmt === "luks") {
      // -n into LUKS1: unlocked and encrypted in the guest (lib/cli/convert_into_luks.ts).
      if (a.compress) throw new CliError(["Compression not supported for this file format"]);
      if (!CACHE_MODES.includes(a.cache)) throw new CliError([`Invalid cache option: ${a.cache}`]);
      try {
        const written = await convertIntoLuks({
          target: outFilename!,
          display: targetDisplay ?? outFilename!,
          keySecret: targetRef?.keySecret,
          keySecretOption: targetRef?.keySecretOption,
          secrets: o.secrets,
          unsafeQuirks: o.unsafeQuirks,
          kdfMaxIters: kdfMaxIters(),
          chain,
          source: chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
          size,
          minSparse: a.minSparse,
          targetIsZero: a.targetIsZero,
          onProgress: (done, total) => {
            if (done < total || a.progress === "json") progress.bytes(done, total);
          },
        });
        if (written > 0n) progress.set(100);
      } catch (e) {
        if (e instanceof GuestFailure) throw new CliError([guestFailureMessage(e)]);
        throw e;
      }
      progress.set(100);
      return 0;
    }

    // -O host_device: an existing block device, written as -O raw writes one (lib/convert/host_device.ts).
    if (a.outFmt === HOST_DEVICE) await checkHostDevice(a, outFilename!);
    const hostDevice = a.outFmt === HOST_DEVICE;
    const outDriver = driverFor(hostDevice ? "raw" : a.outFmt);
    if (!outDriver) throw new CliError([`Unknown file format '${a.outFmt}'`]);
    let spec: OutputSpec;
    try {
      // -B and -F: qemu-img's add_old_style_options.
      // With -n nothing is created: qemu never looks at them for the target.
      const old = a.skipCreate ? {} : { backingFile: a.outBase, backingFmt: a.backingFmt };
      spec = outputOptions(outDriver, hostDevice ? "" : a.options ?? "", outFilename!, size, old);
      if (vmdkStream) {
        // The stream's header gave the disk's size: planned as for a file.
      } else if (onePass && spec.writer === "qcow2") {
        size = onePassBound(spec.qcow2!.clusterSize, spec.qcow2!.extendedL2);
        spec = outputOptions(outDriver, a.options ?? "", outFilename!, size, old);
      } else if (onePass) {
        size = RAW_ONE_PASS_BOUND;
      }
    } catch (e) {
      // -c with encryption: img_convert refuses it before bdrv_create checks the options.
      if (e instanceof OutputOptionError && a.compress && compressEncryptFirst(outDriver, a.options ?? "")) {
        if (e.message.startsWith(`${outFilename}: error while converting `)) {
          throw new CliError([COMPRESS_ENCRYPT]);
        }
      }
      if (e instanceof OutputOptionError) throw new CliError([e.message]);
      throw e;
    }
    if (a.compress) {
      if (spec.writer !== "qcow2" && !spec.compress?.accepted) {
        const c = spec.compress;
        throw new CliError([c && !c.accepted ? c.message : "Compression not supported for this file format"]);
      }
      if (spec.qcow2Create?.encrypt) throw new CliError([COMPRESS_ENCRYPT]);
      if (spec.preallocation !== "off") {
        throw new CliError(["Compression and preallocation not supported at the same time"]);
      }
      const crypt = cryptCompressRefusal(chain, spec.qcow2?.compressionType === "zstd");
      if (crypt) throw new CliError([crypt]);
    }
    // Raw targets take falloc/full as qemu's raw create does (the file
    // allocated as zeroes before the data lands); qcow2 targets are created
    // preallocated as `create` makes them, then written in place.
    if (
      spec.preallocation !== "off" &&
      ((spec.writer !== "raw" && spec.writer !== "qcow2") || a.skipCreate || toStdout)
    ) {
      throw new CliError([`Preallocation (${spec.preallocation}) is not supported by instar convert yet`]);
    }
    // The in-place writer does not write subclusters (nor over a backing
    // file, which qemu allows with preallocation only with extended_l2).
    if (spec.writer === "qcow2" && spec.preallocation !== "off" && spec.qcow2!.extendedL2) {
      throw new CliError([
        `Preallocation (${spec.preallocation}) with extended L2 entries is not supported by instar convert yet`,
      ]);
    }
    // -B (or -o backing_file): qemu opens the new target with its backing
    // chain; so does instar, read-only, to learn the backing file's size.
    let backingSize: bigint | undefined;
    const backingName = spec.qcow2?.backingFile;
    if (backingName !== undefined) {
      if (toStdout || onePass) {
        throw new CliError([
          "Writing an image with a backing file to or from a stream is not supported by instar",
        ]);
      }
      backingSize = await openTargetBacking(
        outFilename!,
        new TextDecoder().decode(backingName),
        spec.qcow2!.backingFormat,
        o,
      );
    }
    if (onePass && spec.preallocation !== "off") {
      throw new CliError([
        `Preallocation (${spec.preallocation}) needs the disk's size up front; a raw stream on stdin has none`,
      ]);
    }
    const encrypted = encryptedQcow2Refusal(spec.qcow2Create?.encrypt, {
      stream: toStdout || onePass,
      preallocation: spec.preallocation,
      backing: backingName !== undefined,
    });
    if (encrypted !== undefined) throw new CliError([encrypted]);
    if (!CACHE_MODES.includes(a.cache)) throw new CliError([`Invalid cache option: ${a.cache}`]);
    if (toStdout && spec.writer === "extents") {
      throw new CliError([
        `${outFilename}: error while converting ${a.outFmt}: ${STREAMABLE}`,
      ]);
    }

    // Every file the target consists of: the extents of a multi-file VMDK,
    // then the target name itself (its descriptor, or the whole image).
    // None for stdout: the output is built in unnamed files, then copied out.
    const names = toStdout ? [] : [...(spec.extents?.extents.map((e) => e.path) ?? []), outFilename!];
    // bdrv_create's failure, as qemu words it for the target.
    const cannotCreateAt = (name: string, why: string) =>
      new CliError([
        `${outFilename}: error while converting ${a.outFmt}: Could not create '${name}': ${why}`,
      ]);
    const targets: string[] = [];
    let device = false;
    for (const name of names) {
      const existing = await Deno.stat(hostPath(name)).catch(() => undefined);
      if (existing?.isDirectory) throw cannotCreateAt(name, "Is a directory");
      // qemu writes into an existing block device (host_device: cinder and
      // os-brick copy volumes so); a temporary-name output would replace the
      // device node with a regular file instead. Raw output only, for now.
      if (
        existing?.isCharDevice || (existing?.isBlockDevice && (spec.writer !== "raw" || names.length !== 1))
      ) {
        throw new CliError([`Converting onto a device is not supported by instar yet: '${name}'`]);
      }
      if (existing?.isBlockDevice) device = true;
      // -n: qemu opens the target it did not create (after the sources).
      if (targetError) throw targetError;
      if (a.skipCreate && !existing) {
        const why = await Deno.stat(hostPath(name)).then(() => "", (e) => errnoText(e));
        throw new CliError([`Could not open '${targetDisplay ?? name}': Could not open '${name}': ${why}`]);
      }
      // qemu writes through a symlink to the file it names; so does the
      // rename, by replacing the link's target rather than the link.
      const target = (await Deno.lstat(hostPath(name)).catch(() => undefined))?.isSymlink
        ? await Deno.realPath(hostPath(name))
        : name;
      // raw_co_create's lock on the file qemu would truncate: a running VM's
      // image, or one of this command's own inputs (their locks conflict).
      if (existing) {
        let held;
        try {
          held = await takeLock(target, LOCKS.create, name);
        } catch (e) {
          if (e instanceof LockError) {
            throw new CliError([`${outFilename}: error while converting ${a.outFmt}: ${e.message}`]);
          }
          throw cannotCreateAt(name, errnoText(e));
        }
        // With -U the inputs share everything and qemu would go ahead: refuse anyway.
        if (chain.some((img) => img.dev === held.dev && img.ino === held.ino)) {
          throw new CliError([
            `${outFilename}: error while converting ${a.outFmt}: Refusing to overwrite an image this command reads`,
          ]);
        }
      }
      targets.push(target);
    }
    const outs: string[] = [];
    // A device, or -n: written in place, no temporary name.
    const inPlace = device || a.skipCreate;
    if (inPlace && spec.writer === "luks") {
      throw new CliError(["Writing a new LUKS image onto a device is not supported by instar yet"]);
    }
    let inPlaceMode: "zero" | "keep" | undefined;
    if (inPlace) {
      const t = targets[0];
      let st: Deno.FileInfo, outSize: bigint;
      try {
        using f = await Deno.open(hostPath(t), { read: true });
        st = await f.stat();
        outSize = BigInt(await f.seek(0, Deno.SeekMode.End));
      } catch (e) {
        throw cannotCreateAt(names[0], errnoText(e));
      }
      if (outSize < size) {
        throw new CliError([
          a.skipCreate
            ? "output file is smaller than input file"
            : `${outFilename}: error while converting ${a.outFmt}: Cannot grow device files`,
        ]);
      }
      // What the image reads as zeroes must read as zeroes in the target:
      // a file gets holes (qemu's write-zeroes with unmap punches them), a
      // device zeroes written; --target-is-zero says it already does.
      inPlaceMode = "keep";
      if (top) {
        // -n -B: what the top leaves alone keeps the target's bytes (below).
      } else if (!a.targetIsZero && !device && size > 0n) {
        const why = await fileRange("punch", t, 0n, size, BigInt(st.dev), BigInt(st.ino ?? 0));
        if (why !== undefined) inPlaceMode = "zero";
      } else if (!a.targetIsZero) {
        inPlaceMode = "zero";
      }
      outs.push(t);
    }
    for (const [i, t] of (inPlace ? [] : targets).entries()) {
      try {
        // A preallocated qcow2 is written in place by guests that open it
        // by name (O_NOFOLLOW): a named temporary, not an unnamed file's /proc link.
        const named = spec.writer === "qcow2" && spec.preallocation !== "off";
        outs.push(named ? await temps.create(t, "out") : await temps.createOutput(t));
      } catch (e) {
        throw cannotCreateAt(names[i], errnoText(e));
      }
    }
    if (spec.writer === "raw" && spec.preallocation !== "off" && !inPlace && size > 0n) {
      // raw_co_create with falloc or full: the whole (512-rounded) file
      // allocated as zeroes; the data written after only fills it in.
      const out = outs[outs.length - 1];
      const st = await Deno.stat(hostPath(out));
      const why = await fileRange(
        "allocate",
        out,
        0n,
        (size + 511n) & ~511n,
        BigInt(st.dev),
        BigInt(st.ino ?? 0),
      );
      if (why !== undefined) {
        throw new CliError([
          `${outFilename}: error while converting ${a.outFmt}: Could not preallocate data for the new file: ${why}`,
        ]);
      }
    }
    // stdout: window by window through unnamed files in TMPDIR (lib/convert/stream_output.ts).
    const scratch = () => streamStep(() => temps.createOutput(`${spoolDir()}/stdout`));
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
      if (onePass) {
        if (inPlace) throw new CliError(["Writing a raw stream from stdin onto a device is not supported"]);
        const target: OnePassTarget = spec.writer === "raw"
          ? { kind: "raw" }
          : { kind: "qcow2", packed: qcow2Target(job, { options: spec.qcow2!, compress: a.compress }) };
        const windows = () => streamStep(() => temps.createOutput(`${spoolDir()}/stdin`));
        written = vmdkStream
          ? await convertVmdkStdin(job, target, out, vmdkStream)
          : await convertRawStdin(job, target, out, hostStdio(), windows, streamWindowBytes());
      } else if (sink) {
        written = await streamToStdout(job, spec, a.compress, sink, scratch);
      } else if (top && spec.writer === "raw") {
        // -n -B: the top's ranges, its zeroes included, copied at their offsets.
        const st = await Deno.stat(hostPath(out));
        const moves = top.map(([from, to]) => ({ from, to, at: from }));
        written = moves.reduce((t, m) => t + (m.to - m.from), 0n);
        await moveData(
          chainInputs(chain),
          { openPath: out, dev: BigInt(st.dev), ino: BigInt(st.ino ?? 0) },
          moves,
          size,
          `error while writing into '${outFilename}'`,
          (d) => job.onProgress(d, written),
        );
      } else if (spec.writer === "raw") {
        written = await convertToRaw(job, out);
      } else if (spec.writer === "blocks") {
        written = await convertToBlocks(job, spec.blocks!, out);
      } else if (spec.writer === "stream") {
        written = await convertToStream(job, spec.stream!, out);
      } else if (spec.writer === "luks") {
        written = await convertToLuks(job, spec.luks!, out, o.secrets, kdfMaxIters());
      } else if (spec.writer === "extents") {
        written = await convertToExtents(job, spec.extents!, (i) => Promise.resolve(outs[i]));
      } else if (spec.qcow2Create?.encrypt && spec.preallocation !== "off") {
        const source = chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 }));
        const pj = {
          chain,
          source,
          size,
          minSparse: a.minSparse,
          kdfMaxIters: kdfMaxIters(),
          onProgress: job.onProgress,
        };
        written = await convertToPreallocatedQcrypt(outFilename!, out, spec.qcow2Create, o, pj);
      } else if (spec.qcow2Create?.encrypt) {
        const e = spec.qcow2Create.encrypt;
        written = await convertToEncryptedQcow2(
          job,
          spec.qcow2!,
          e,
          out,
          o.secrets,
          kdfMaxIters(),
          backingSize,
        );
      } else if (spec.preallocation !== "off") {
        written = await convertPreallocatedQcow2(outFilename!, out, spec.qcow2Create!, {
          unsafeQuirks: o.unsafeQuirks,
          source: chainInputs(chain).map((x, i) => ({ ...x, snapshot: i === 0 ? snapshot : 0 })),
          size,
          minSparse: a.minSparse,
          onProgress: job.onProgress,
        });
      } else {
        // -B -c: the guest cuts the top's status runs where qemu's qcow2 does (one L2 table).
        const tq = chain[0]?.qcow2;
        const topL2Bits = tq ? 2n * BigInt(tq.clusterBits) - (tq.extendedL2 ? 4n : 3n) : 0n;
        written = await convertToQcow2(
          job,
          { options: spec.qcow2!, compress: a.compress, backingSize, topL2Bits },
          out,
        );
      }
    } catch (e) {
      if (e instanceof StreamClosed || e instanceof StreamError) throw new CliError([e.message]);
      if (e instanceof Cancelled) throw e;
      if (e instanceof PlanRefused) {
        throw new CliError([`${outFilename}: error while converting ${a.outFmt}: ${e.message}`]);
      }
      if (e instanceof GuestFailure) {
        // A deferred unlock that failed in the reading guest: qemu's open error.
        const unlock = chain.length > 0 ? unlockFailure(chain[0], 0, e.records) : undefined;
        if (unlock) throw openFailure(ref.display, unlock);
        throw new CliError([guestFailureMessage(e)]);
      }
      if (e instanceof CliError) throw e;
      // An output write the host refused (a full disk): qemu-img's words.
      const w = (e as { write?: { offset: bigint; text: string } }).write;
      if (w) throw new CliError([`error while writing at byte ${w.offset}: ${w.text}`]);
      if (e instanceof WriteError) {
        throw new CliError([`error while writing at byte ${e.offset}: ${errnoText(e.reason)}`]);
      }
      throw new CliError([`Sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
    }
    // Keep an existing target's permissions, as qemu's O_TRUNC open would.
    for (const [i, t] of (inPlace ? [] : targets).entries()) {
      try {
        const st = await Deno.stat(hostPath(t));
        if (st.mode !== null && st.isFile) await Deno.chmod(hostPath(outs[i]), st.mode & 0o7777);
      } catch { /* no target yet */ }
    }
    temps.checkCancelled();
    // Extents first, the target name last: the name appears only once every
    // file it needs is complete. A failed commit takes back the ones done.
    const committed: string[] = [];
    for (const [i, t] of (inPlace ? [] : targets).entries()) {
      try {
        await temps.commit(outs[i], t);
      } catch (e) {
        for (const r of committed) await Deno.remove(hostPath(r)).catch(() => {});
        throw cannotCreateAt(names[i], errnoText(e));
      }
      committed.push(t);
    }
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

/** Streams the target to stdout, in file order (lib/convert/stream_output.ts). */
function streamToStdout(
  job: ConvertJob,
  spec: OutputSpec,
  compress: boolean,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  switch (spec.writer) {
    case "raw":
      return convertRawToStream(job, sink, scratch);
    case "blocks":
      return convertBlocksToStream(job, spec.blocks!, sink, scratch);
    case "stream":
      return convertPackedToStream(job, streamTarget(spec.stream!), sink, scratch);
    case "qcow2":
      return convertPackedToStream(job, qcow2Target(job, { options: spec.qcow2!, compress }), sink, scratch);
    default:
      throw new CliError([STREAMABLE]);
  }
}

/** The targets `-` (stdout) can take: one file written in order. */
const STREAMABLE = "writing to stdout ('-') is supported for raw, qcow2, vpc, vhdx and vmdk " +
  "(monolithicSparse, streamOptimized) targets only; multi-file vmdk subformats need a file name";

/** Runs a `-` stream step, its refusals as one-line errors (`Could not open '-': ...` for a source). */
async function streamStep<T>(fn: () => T | Promise<T>, source?: string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof StreamError) {
      throw new CliError([source ? `Could not open '${source}': ${e.message}` : e.message]);
    }
    throw e;
  }
}
