// instar create [-f fmt] [-o k=v,...] [-b BACKING [-F FMT]] [-u] [-q] FILE [SIZE]
// qemu-img's img_create and bdrv_img_create: option handling, the backing
// file check (through the sandbox: the backing image is opened by the info
// guest, never parsed here), the "Formatting ..." line, then the format's
// create step. The bytes come from the pure planners in lib/formats/.
import { getopt } from "./getopt.ts";
import { CliError, usageError } from "./messages.ts";
import {
  addOptionList,
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
} from "./common.ts";
import { cvtnum } from "./options.ts";
import { errnoText, kdfMaxIters, openChain, OpenError, openImage } from "./image.ts";
import { fullBackingFilename, makePolicy, PolicyError } from "../chain/policy.ts";
import {
  hasHelpOption,
  optGet,
  optSet,
  optSetNumber,
  parseOptions,
  printOptions,
} from "../formats/options.ts";
import { applyPlan } from "../formats/apply_plan.ts";
import { driverFor } from "../formats/mod.ts";
import { CreateError, type CreateHost } from "../formats/types.ts";
import { LockError, LOCKS, takeLock } from "../vmm/image_lock.ts";
import { hostPath } from "../host/context.ts";
import { allocate } from "../host/allocate.ts";
import { blockOptionHelp } from "./block_option_help.ts";
import { ObjectError, type SecretStore } from "../secrets/objects.ts";

const U64_MAX = (1n << 64n) - 1n;

/** An error bdrv_img_create reports: "FILE: message" (plus unprefixed hint text). */
function fileError(filename: string, message: string, hint = ""): CliError {
  // Planner messages may carry qemu's hint lines after the first line.
  const nl = message.indexOf("\n");
  if (nl >= 0) {
    hint = message.slice(nl + 1) + "\n" + hint;
    message = message.slice(0, nl);
  }
  const e = new CliError([`${filename}: ${message}`]);
  (e as CliError & { hint?: string }).hint = hint;
  return e;
}

/** Creates (or empties) the file as file-posix's raw_co_create does: opened
 * without truncation, QEMU's create lock taken (a running VM's image is
 * refused in qemu's words), then truncated. */
async function createFile(filename: string): Promise<void> {
  try {
    const f = await Deno.open(hostPath(filename), { write: true, create: true });
    f.close();
  } catch (e) {
    throw fileError(filename, `Could not create '${filename}': ${errnoText(e)}`);
  }
  try {
    await takeLock(filename, LOCKS.create, filename);
  } catch (e) {
    if (e instanceof LockError) throw fileError(filename, e.message);
    throw fileError(filename, `Could not create '${filename}': ${errnoText(e)}`);
  }
  try {
    await Deno.truncate(hostPath(filename), 0);
  } catch (e) {
    throw fileError(filename, `Could not resize file: ${errnoText(e)}`);
  }
}

/** Grows the file to `size` (ftruncate), with qemu's wording for failures. */
async function resizeFile(filename: string, size: bigint, fmt: string, hint: string): Promise<void> {
  try {
    await Deno.truncate(hostPath(filename), Number(size));
  } catch (e) {
    const text = errnoText(e);
    if (/File too large/.test(text)) {
      throw fileError(filename, `The image size is too large for file format '${fmt}'${hint}`);
    }
    throw fileError(filename, `Could not resize file: ${text}`);
  }
}

export async function createCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let fmt = "raw";
  let baseFmt: string | undefined;
  let baseFilename: string | undefined;
  let options: string | undefined;
  let quiet = false;
  let noBacking = false;
  const o = newInstarOptions(base);
  const operands = getopt(argv, ":F:b:f:ho:qu", [
    { name: "help", hasArg: false, id: "h" },
    { name: "object", hasArg: true, id: "object" },
    { name: "preallocation", hasArg: true, id: "preallocation" },
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "preallocation": {
        // instar's spelling of -o preallocation=MODE (qemu-img create has
        // only the -o form); the same option, with the same checks.
        options = addOptionList(options, `preallocation=${value!.replaceAll(",", ",,")}`);
        break;
      }
      case "F":
        baseFmt = value;
        break;
      case "b":
        baseFilename = value;
        break;
      case "f":
        fmt = value!;
        break;
      case "o":
        options = addOptionList(options, value!);
        break;
      case "q":
        quiet = true;
        break;
      case "u":
        noBacking = true;
        break;
    }
  });
  const args = operands;
  if (options !== undefined && hasHelpOption(options)) return blockOptionHelp(io, operands[0], fmt);
  if (args.length < 1) throw usageError("Expecting image file name");
  const filename = args[0];
  let imgSize = U64_MAX;
  if (args.length > 1) imgSize = cvtnum("image size", args[1]);
  if (args.length > 2) throw usageError(`Unexpected argument: ${args[2]}`);

  try {
    return await imgCreate(io, {
      filename,
      fmt,
      baseFilename,
      baseFmt,
      options,
      imgSize,
      noBacking,
      quiet,
      backingDirs: o.backingDirs,
      unsafeQuirks: o.unsafeQuirks,
      secrets: o.secrets,
    });
  } catch (e) {
    const hint = (e as { hint?: string }).hint;
    if (e instanceof CliError && hint) {
      // error_reportf_err prints the hint after the message, unprefixed.
      io.err(e.lines.map((l) => `instar: ${l}\n`).join("") + hint);
      return 1;
    }
    throw e;
  }
}

interface CreateRequest {
  filename: string;
  fmt: string;
  baseFilename?: string;
  baseFmt?: string;
  options?: string;
  imgSize: bigint;
  noBacking: boolean;
  quiet: boolean;
  backingDirs: string[];
  unsafeQuirks: boolean;
  secrets: SecretStore;
}

/** bdrv_img_create. */
async function imgCreate(io: Io, r: CreateRequest): Promise<number> {
  const { filename, fmt } = r;
  const driver = driverFor(fmt);
  const create = driver?.create;
  if (!create) {
    if (driver) throw fileError(filename, `Creating '${fmt}' images is not supported by instar yet`);
    throw fileError(filename, `Unknown file format '${fmt}'`);
  }
  const descs = create.options;
  const parsed = parseOptions(r.options ?? "", descs);
  if (!parsed.ok) throw fileError(filename, parsed.error.message);
  const opts = parsed.value;
  if (!optGet(opts, "size")) optSetNumber(opts, "size", r.imgSize);
  else if (r.imgSize !== U64_MAX) throw fileError(filename, "The image size must be specified only once");
  if (r.baseFilename !== undefined) {
    if (!descs.some((d) => d.name === "backing_file")) {
      throw fileError(filename, `Backing file not supported for file format '${fmt}'`);
    }
    optSet(opts, "backing_file", r.baseFilename);
  }
  if (r.baseFmt !== undefined) {
    if (!descs.some((d) => d.name === "backing_fmt")) {
      throw fileError(filename, `Backing file format not supported for file format '${fmt}'`);
    }
    optSet(opts, "backing_fmt", r.baseFmt);
  }
  const backingFile = optGet(opts, "backing_file")?.str;
  if (backingFile !== undefined) {
    if (backingFile === filename) {
      throw fileError(
        filename,
        "Error: Trying to create an image with the same filename as the backing file",
      );
    }
    if (backingFile === "") throw fileError(filename, "Expected backing file name, got empty string");
  }
  const backingFmt = optGet(opts, "backing_fmt")?.str;
  let size = BigInt.asIntN(64, optGet(opts, "size")!.num!);
  if (backingFile !== undefined && !r.noBacking) {
    const full = fullBackingFilename(filename, backingFile);
    if (full === null) {
      throw fileError(filename, `Cannot use relative backing file names for '${filename}'`);
    }
    let img;
    try {
      // Only the size and format are needed; the guest reads the header.
      // qemu also opens the backing image's own chain (without I/O), so a
      // broken chain fails here too; instar walks it under its chain policy.
      img = await openImage(full, { format: backingFmt, unsafeQuirks: true });
      await openChain(img, await makePolicy(full, r.backingDirs), r.unsafeQuirks);
    } catch (e) {
      if (e instanceof OpenError) {
        const inner = "Could not open backing file: ".repeat(e.depth) + e.inner;
        throw fileError(filename, inner, "Could not open backing image.\n");
      }
      if (e instanceof PolicyError) throw fileError(filename, e.message, "Could not open backing image.\n");
      throw e;
    }
    if (backingFmt === undefined) {
      throw fileError(
        filename,
        "Backing file specified without backing format",
        `Detected format of ${img.format}.`,
      );
    }
    if (size === -1n) {
      size = img.virtualSize;
      optSetNumber(opts, "size", size);
    }
  } else if (backingFile !== undefined && backingFmt === undefined) {
    throw fileError(filename, "Backing file specified without backing format");
  }
  if (size === -1n) throw fileError(filename, "Image creation needs a size parameter");

  if (!r.quiet) io.out(`Formatting '${filename}', fmt=${fmt} ${printOptions(opts)}\n`);
  try {
    await create.run(filename, opts, createHost(filename, fmt, r.secrets));
  } catch (e) {
    if (e instanceof CreateError) throw fileError(filename, e.message, e.hint);
    throw e;
  }
  return 0;
}

/** The file operations a format's create step runs, with qemu's wording for failures. */
function createHost(filename: string, fmt: string, secrets: SecretStore): CreateHost {
  return {
    passphrase: (id) => {
      try {
        return secrets.passphrase(id);
      } catch (e) {
        if (e instanceof ObjectError) throw new CreateError(e.lines[0]);
        throw e;
      }
    },
    kdfMaxIters,
    createFile: () => createFile(filename),
    resizeFile: (size, hint) => resizeFile(filename, size, fmt, hint),
    allocate: (offset, length, mode) => allocate(filename, offset, length, mode),
    applyPlan: (plan) => applyPlan(filename, plan),
    remove: () => Deno.remove(hostPath(filename)).catch(() => {}),
    describe: errnoText,
  };
}
