// `-o` for convert's target: the same QemuOpts parsing and option lists as
// `create` (the target driver's create options), so both commands accept
// and refuse exactly what qemu-img does; the driver then reads the values
// (lib/formats/<fmt>/driver.ts convertTarget). Parse errors are reported as
// they are (qemu_opts_do_parse runs before bdrv_create); errors about an
// option's meaning get bdrv_create's "<file>: error while converting <fmt>: "
// prefix.
import { optSetNumber, parseOptions } from "../formats/options.ts";
import type { FormatDriver, OutputSpec } from "../formats/types.ts";

export type { OutputSpec };

/** A refusal of convert's `-o`, worded as qemu-img prints it (after its prefix). */
export class OutputOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OutputOptionError";
  }
}

/** Parses `-o` for a target of `size` bytes in `driver`'s format. */
export function outputOptions(driver: FormatDriver, text: string, outFile: string, size: bigint): OutputSpec {
  const target = driver.convertTarget;
  if (!target || !driver.create) {
    throw new OutputOptionError(`Writing the ${driver.name} format is not supported by instar convert yet`);
  }
  const parsed = parseOptions(text, driver.create.options);
  if (!parsed.ok) throw new OutputOptionError(parsed.error.message);
  const opts = parsed.value;
  // img_convert sets the size from the source after parsing -o.
  optSetNumber(opts, "size", size);
  const spec = target.spec(opts, outFile);
  if (!spec.ok) {
    if (spec.error.kind === "unsupported") throw new OutputOptionError(spec.error.message);
    throw new OutputOptionError(`${outFile}: error while converting ${driver.name}: ${spec.error.message}`);
  }
  return spec.value;
}
