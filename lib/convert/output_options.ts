// `-o` for convert's target: the same QemuOpts parsing and option lists as
// `create` (the target driver's create options), so both commands accept
// and refuse exactly what qemu-img does; the driver then reads the values
// (lib/formats/<fmt>/driver.ts convertTarget). Parse errors are reported as
// they are (qemu_opts_do_parse runs before bdrv_create); errors about an
// option's meaning get bdrv_create's "<file>: error while converting <fmt>: "
// prefix.
import { optGet, optSet, optSetNumber, parseOptions } from "../formats/options.ts";
import type { FormatDriver, OutputSpec } from "../formats/types.ts";

export type { OutputSpec };

/** A refusal of convert's `-o`, worded as qemu-img prints it (after its prefix). */
export class OutputOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OutputOptionError";
  }
}

/** convert's -B and -F (qemu-img's add_old_style_options). */
export interface OldStyleOptions {
  backingFile?: string;
  backingFmt?: string;
}

/** Parses `-o` for a target of `size` bytes in `driver`'s format. */
export function outputOptions(
  driver: FormatDriver,
  text: string,
  outFile: string,
  size: bigint,
  old: OldStyleOptions = {},
): OutputSpec {
  const target = driver.convertTarget;
  if (!target || !driver.create) {
    throw new OutputOptionError(`Writing the ${driver.name} format is not supported by instar convert yet`);
  }
  const parsed = parseOptions(text, driver.create.options);
  if (!parsed.ok) throw new OutputOptionError(parsed.error.message);
  const opts = parsed.value;
  // img_convert sets the size from the source after parsing -o.
  optSetNumber(opts, "size", size);
  // add_old_style_options: -B and -F become backing_file and backing_fmt.
  const has = (name: string) => driver.create!.options.some((d) => d.name === name);
  if (old.backingFile !== undefined) {
    if (!has("backing_file")) {
      throw new OutputOptionError(`Backing file not supported for file format '${driver.name}'`);
    }
    optSet(opts, "backing_file", old.backingFile);
  }
  if (old.backingFmt !== undefined) {
    if (!has("backing_fmt")) {
      throw new OutputOptionError(`Backing file format not supported for file format '${driver.name}'`);
    }
    optSet(opts, "backing_fmt", old.backingFmt);
  }
  // img_convert: a backing file (-B or -o backing_file) needs its format named.
  if (optGet(opts, "backing_file") !== undefined && optGet(opts, "backing_fmt") === undefined) {
    throw new OutputOptionError("Use of backing file requires explicit backing format");
  }
  const spec = target.spec(opts, outFile);
  if (!spec.ok) {
    if (spec.error.kind === "unsupported") throw new OutputOptionError(spec.error.message);
    throw new OutputOptionError(`${outFile}: error while converting ${driver.name}: ${spec.error.message}`);
  }
  return spec.value;
}
