// `instar inspect [--output human|json] FILE|-`: an upload gate's answer
// (lib/inspect/). Exit 0 safe, 1 unsafe, 2 when it cannot answer.
import { getopt } from "./getopt.ts";
import { CliError } from "./messages.ts";
import { INSTAR_LONGS, instarOption, type InstarOptions, type Io, newInstarOptions } from "./common.ts";
import { InspectError, inspectFile, inspectStream } from "../inspect/inspect.ts";
import { inspectHuman, inspectJson } from "../inspect/output.ts";
import { hostStdio } from "../host/stdio.ts";

const USAGE = "usage: instar inspect [--output human|json] FILE|-\n" +
  "Says whether an image is safe to accept (exit 0), unsafe (exit 1, with every reason) or cannot be read (exit 2).\n";

export async function inspectCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let help = false;
  let output = "human";
  let operands: string[];
  try {
    operands = getopt(argv, ":h", [
      { name: "help", hasArg: false, id: "h" },
      { name: "output", hasArg: true, id: "output" },
      ...INSTAR_LONGS,
    ], ({ id, value }) => {
      if (instarOption(o, id, value)) return;
      if (id === "h") help = true;
      if (id === "output") output = value!;
    });
  } catch (e) {
    if (e instanceof CliError) throw new CliError(e.lines, e.tryHelp, 2);
    throw e;
  }
  if (help) {
    io.out(USAGE);
    return 0;
  }
  if (output !== "human" && output !== "json") {
    throw new CliError(["--output must be used with human or json as argument."], false, 2);
  }
  if (operands.length !== 1) throw new CliError(["Expecting one image file name (or - for stdin)"], true, 2);
  const name = operands[0];
  if (name === "-" && hostStdio().isTerminal(0)) {
    throw new CliError(["Refusing to read an image from a terminal (pipe it into 'inspect -')"], false, 2);
  }
  let result;
  try {
    result = name === "-" ? await inspectStream() : await inspectFile(name);
  } catch (e) {
    if (e instanceof InspectError) throw new CliError([e.message], false, 2);
    throw e;
  }
  io.out(output === "json" ? inspectJson(result) : inspectHuman(result));
  return result.verdict === "safe" ? 0 : 1;
}
