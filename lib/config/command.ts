// `instar config [--backing-dir DIR]...`: prints the effective backing-file
// policy (lib/config/config.ts) as the TOML that would give it, with where
// each part came from.
import { getopt } from "../cli/getopt.ts";
import { CliError, usageError } from "../cli/messages.ts";
import { INSTAR_LONGS, instarOption, type InstarOptions, type Io, newInstarOptions } from "../cli/common.ts";
import { ConfigError, describePolicy, effectivePolicy } from "./config.ts";

export async function configCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let help = false;
  const operands = getopt(
    argv,
    ":h",
    [{ name: "help", hasArg: false, id: "h" }, ...INSTAR_LONGS],
    ({ id, value }) => {
      if (instarOption(o, id, value)) return;
      if (id === "h") help = true;
    },
  );
  if (help) {
    io.out("usage: instar config [--backing-dir DIR]...\nPrints the effective backing-file policy.\n");
    return 0;
  }
  if (operands.length > 0) throw usageError("instar config takes no file names");
  try {
    io.out(describePolicy(await effectivePolicy(o.backingDirs)));
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError([e.message]);
    throw e;
  }
  return 0;
}
