// instar convert's command line: qemu-img img_convert's options (getopt
// string and long options), their values checked as it checks them, and
// the checks it makes before opening anything, in its order; plus the
// features instar refuses. lib/cli/convert.ts runs the command.
import { CliError, usageError } from "./messages.ts";
import { parseSnapshotParam, type SnapshotParam } from "./snapshot_param.ts";
import { addOptionList, DATA_LONGS_HEAD, getoptCommand, type InstarOptions } from "./common.ts";
import { cvtnum } from "./options.ts";
import type { ProgressMode } from "./progress.ts";
import { DEFAULT_MAX_SPOOL } from "../host/stdio_stream.ts";
import { HOST_DEVICE } from "../convert/host_device.ts";
import { MAX_SPOOL_LONG, parseMaxSpool } from "./stdin_image.ts";

const MAX_BUF_SECTORS = 32768n;
export interface ConvertArgs {
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

export function parseArgs(argv: string[], o: InstarOptions): { a: ConvertArgs; operands: string[] } {
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
  const operands = getoptCommand(o, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", [
    ...DATA_LONGS_HEAD,
    { name: "force-share", hasArg: false, id: "U" },
    { name: "target-image-opts", hasArg: false, id: "target-image-opts" },
    { name: "salvage", hasArg: false, id: "salvage" },
    { name: "target-is-zero", hasArg: false, id: "target-is-zero" },
    { name: "bitmaps", hasArg: false, id: "bitmaps" },
    { name: "skip-broken-bitmaps", hasArg: false, id: "skip-broken" },
    { name: "progress", hasArg: true, id: "progress" },
    MAX_SPOOL_LONG,
  ], ({ id, value }) => {
    switch (id) {
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
export function checkCombinations(a: ConvertArgs) {
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

/** Features qemu-img has that instar refuses, with a clear reason. */
export function checkSupported(a: ConvertArgs, srcNum: number) {
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
