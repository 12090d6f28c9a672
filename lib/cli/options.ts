// Size arguments as qemu-img parses them (util/cutils.c do_strtosz and
// qemu-img.c cvtnum_full): decimal or 0x-hex integers, an optional
// B/K/M/G/T/P/E suffix (binary units), decimal fractions with a suffix.
import { CliError } from "./messages.ts";
import { INT64_MAX, SizeError, strtosz } from "../formats/size.ts";

export { INT64_MAX, SizeError, strtosz };

/** qemu-img's cvtnum_full with min 0 and max INT64_MAX. */
export function cvtnum(name: string, text: string): bigint {
  let v: bigint;
  try {
    v = strtosz(text);
  } catch (e) {
    if (!(e instanceof SizeError) || !e.range) {
      throw new CliError([
        `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`,
        "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
      ]);
    }
    v = INT64_MAX + 1n;
  }
  if (v > INT64_MAX) throw new CliError([`Invalid ${name} specified. Must be between 0 and ${INT64_MAX}.`]);
  return v;
}
