// instar resize [-f fmt] [--shrink] [--preallocation MODE] [-q] FILE [+|-]SIZE
//
// qemu-img's img_resize, step for step: the size is taken off the end of the
// line before option parsing (so "-1G" is not an option), parsed, the image
// opened, the new size worked out and checked, then the format's truncate.
// The format's truncate is its driver's `resize` (lib/formats/<fmt>/resize.ts):
// for qcow2, vpc and vhdx the guest op resize_scan extracts and checks the
// metadata, the format's pure planner turns it into writes, and only then
// does anything touch the file, through the host this command supplies.
// Nothing is written unless every check passed. docs/resize.md says what a
// crash mid-way leaves behind.
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
import { openChain, type OpenedImage, OpenError, openFailure, openImage, unlockForRead } from "./image.ts";
import { imageRef } from "./image_ref.ts";
import { makePolicy } from "../chain/policy.ts";
import { SizeError, strtosz } from "./options.ts";
import { BDRV_MAX_LENGTH } from "../formats/raw/resize_plan.ts";
import { resizeHost } from "./resize_host.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { type Prealloc, PREALLOC_MODES } from "../formats/types.ts";

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
  // --image-opts: one local file, and a LUKS image's key-secret (lib/cli/image_ref.ts).
  const ref = imageRef(operands[0], fmt, o.imageOpts, io.err);
  const filename = ref.filename;
  fmt = ref.format;

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
    // qemu-img resize opens read-write: it takes the write locks; backing files are read.
    img = await openImage(filename, {
      format: fmt,
      unsafeQuirks: o.unsafeQuirks,
      lock: LOCKS.write,
      noLists: true,
    });
    // qemu-img opens the backing chain too: a missing backing file fails the resize.
    await openChain(img, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, LOCKS.read);
    // An encrypted image is unlocked as qemu's read-write open unlocks it (the key must fit).
    await unlockForRead(img, ref.keySecret, ref.keySecretOption, o.secrets, [img]);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(ref.display, e, 1, true);
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

  const support = img.driver.resize;
  if (!support) throw new CliError(["Image format driver does not support resize"]);
  await support.run(
    { filename, image: img, newSize: total, shrink, preallocation: prealloc },
    resizeHost(img, prealloc),
  );
  if (!quiet) io.out("Image resized.\n");
  return 0;
}
