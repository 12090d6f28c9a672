// Entry point: qemu-img's main() argument handling, then one subcommand.
// Returns the exit status; everything the user sees goes through `io`.
import { getopt } from "./getopt.ts";
import { CliError, formatError, usageError } from "./messages.ts";
import { INSTAR_LONGS, instarOption, type Io, newInstarOptions, profileOf } from "./common.ts";
import { HelpRequested, infoCommand } from "./info.ts";
import { ObjectHelp } from "../secrets/objects.ts";
import { checkCommand } from "./check.ts";
import { mapCommand } from "./map.ts";
import { compareCommand } from "./compare.ts";
import { createCommand } from "./create.ts";
import { measureCommand } from "./measure.ts";
import { convertCommand } from "./convert.ts";
import { resizeCommand } from "./resize.ts";
import { rebaseCommand } from "./rebase.ts";
import { commitCommand } from "./commit.ts";
import { amendCommand } from "./amend.ts";
import { snapshotCommand } from "./snapshot.ts";
import { ddCommand } from "./dd.ts";
import { bitmapCommand } from "./bitmap.ts";
import { helpText, versionText } from "./help.ts";
import { cancelStatus, type HostContext, hostContext, withHostContext } from "../host/context.ts";

/** instar's own commands (not qemu-img's), loaded only when used. */
const INSTAR_COMMANDS: Record<string, () => Promise<typeof infoCommand>> = {
  serve: async () => (await import("../service/serve.ts")).serveCommand,
  "install-client": async () => (await import("../service/install.ts")).installClientCommand,
  config: async () => (await import("../config/command.ts")).configCommand,
  inspect: async () => (await import("./inspect.ts")).inspectCommand,
};

/** instar's own commands a service request may run (serve and install-client manage the service itself). */
const SERVICE_OK = new Set(["config", "inspect"]);

const COMMANDS: Record<string, typeof infoCommand> = {
  amend: amendCommand,
  bitmap: bitmapCommand,
  check: checkCommand,
  commit: commitCommand,
  compare: compareCommand,
  convert: convertCommand,
  create: createCommand,
  dd: ddCommand,
  info: infoCommand,
  map: mapCommand,
  measure: measureCommand,
  rebase: rebaseCommand,
  resize: resizeCommand,
  snapshot: snapshotCommand,
};

/** qemu-img commands instar does not implement yet. */
const LATER = [
  "bench",
];

function writeAll(file: { writeSync(p: Uint8Array): number }, text: string) {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  while (at < bytes.length) at += file.writeSync(bytes.subarray(at));
}

export const stdio: Io = {
  out: (t) => writeAll(Deno.stdout, t),
  err: (t) => writeAll(Deno.stderr, t),
};

/** Runs one command line with io's host context (see lib/host/context.ts).
 * A cancelled command exits 130 (SIGINT) or 143 (SIGTERM) and prints nothing more. */
export async function run(args: string[], io: Io = stdio): Promise<number> {
  const ctx: HostContext = { ...io.context, locks: [] };
  const code = await withHostContext(ctx, async () => {
    try {
      return await runCommand(args, io);
    } finally {
      for (const l of ctx.locks ?? []) l.release();
    }
  });
  return ctx.signal?.aborted ? cancelStatus(ctx.signal) : code;
}

async function runCommand(args: string[], io: Io): Promise<number> {
  try {
    if (args.length < 1) throw usageError("Not enough arguments");
    const argv = ["instar", ...args];
    const o = newInstarOptions();
    let early: "help" | "version" | undefined;
    const rest = getopt(argv, "+:hVT:", [
      { name: "help", hasArg: false, id: "h" },
      { name: "version", hasArg: false, id: "V" },
      { name: "trace", hasArg: true, id: "T" },
      ...INSTAR_LONGS,
    ], ({ id, value }) => {
      if (early || instarOption(o, id, value)) return;
      if (id === "h") early = "help";
      if (id === "V") early = "version";
    }, true);
    if (early === "help") {
      io.out(helpText());
      return 0;
    }
    if (early === "version") {
      io.out(versionText(await profileOf(o)));
      return 0;
    }
    if (rest.length < 1) return 0;
    const [cmd] = rest;
    const handler = Object.hasOwn(COMMANDS, cmd)
      ? COMMANDS[cmd]
      : Object.hasOwn(INSTAR_COMMANDS, cmd)
      ? (hostContext().service && !SERVICE_OK.has(cmd)
        ? () => Promise.reject(new CliError([`'${cmd}' cannot run through the instar service`]))
        : await INSTAR_COMMANDS[cmd]())
      : undefined;
    if (!handler) {
      if (LATER.includes(cmd)) throw new CliError([`Command '${cmd}' is not implemented by instar yet`]);
      throw usageError(`Command not found: ${cmd}`);
    }
    try {
      return await handler(rest, io, o);
    } catch (e) {
      if (e instanceof ObjectHelp) {
        io.out(e.text);
        return 0;
      }
      if (e instanceof HelpRequested) {
        io.out(helpText());
        return 0;
      }
      throw e;
    } finally {
      o.secrets.wipe();
    }
  } catch (e) {
    if (hostContext().signal?.aborted) return 1; // run() turns it into 130/143
    if (e instanceof CliError) {
      io.err(formatError(e));
      return e.code;
    }
    io.err(`instar: Internal error: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}
