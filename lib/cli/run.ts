// Entry point: qemu-img's main() argument handling, then one subcommand.
// Returns the exit status; everything the user sees goes through `io`.
import { getopt } from "./getopt.ts";
import { CliError, formatError, usageError } from "./messages.ts";
import { HelpRequested, INSTAR_LONGS, instarOption, type Io, newInstarOptions, profileOf } from "./common.ts";
import type { infoCommand } from "./info.ts";
import { loadSecretCipher, ObjectHelp } from "../secrets/objects.ts";
import { helpText, versionText } from "./help.ts";
import { cancelStatus, type HostContext, hostContext, withHostContext } from "../host/context.ts";

type Command = typeof infoCommand;

/**
 * A command module's handler, imported when the command runs. The specifier
 * is not a string literal on purpose: `deno run` builds the module graph of
 * every literal dynamic import before starting (~14 MB and ~20 ms for these,
 * measured 2026-12-07), so scripts/compile.sh names each module with
 * --include instead (tests/compile_includes_test.ts checks it does).
 */
function lazy(module: string, name: string): () => Promise<Command> {
  return async () => (await import(new URL(module, import.meta.url).href))[name] as Command;
}

/** instar's own commands (not qemu-img's), loaded only when used. */
export const INSTAR_COMMANDS: Record<string, () => Promise<Command>> = {
  serve: lazy("../service/serve.ts", "serveCommand"),
  "install-client": lazy("../service/install.ts", "installClientCommand"),
  config: lazy("../config/command.ts", "configCommand"),
  inspect: lazy("./inspect.ts", "inspectCommand"),
};

/** instar's own commands a service request may run (serve and install-client manage the service itself). */
const SERVICE_OK = new Set(["config", "inspect"]);

/**
 * qemu-img's commands, each loaded only when used: the whole command set is
 * ~60 ms and ~17 MB of module loading at every start (measured 2026-12-07:
 * `--version` 0.12 s with every command imported, `commit` alone 0.06 s), a
 * fixed cost each call of the direct CLI pays. Keep these imports dynamic.
 */
export const COMMANDS: Record<string, () => Promise<Command>> = {
  amend: lazy("./amend.ts", "amendCommand"),
  bitmap: lazy("./bitmap.ts", "bitmapCommand"),
  check: lazy("./check.ts", "checkCommand"),
  commit: lazy("./commit.ts", "commitCommand"),
  compare: lazy("./compare.ts", "compareCommand"),
  convert: lazy("./convert.ts", "convertCommand"),
  create: lazy("./create.ts", "createCommand"),
  dd: lazy("./dd.ts", "ddCommand"),
  info: lazy("./info.ts", "infoCommand"),
  map: lazy("./map.ts", "mapCommand"),
  measure: lazy("./measure.ts", "measureCommand"),
  rebase: lazy("./rebase.ts", "rebaseCommand"),
  resize: lazy("./resize.ts", "resizeCommand"),
  snapshot: lazy("./snapshot.ts", "snapshotCommand"),
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
    await loadSecretCipher(args);
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
      ? await COMMANDS[cmd]()
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
