// `instar install-client DIR [--name NAME] [--cli PATH]`: writes the thin
// client (vmm/client/instar_client.c, embedded by scripts/embed.ts) to
// DIR/NAME, executable. Install it as `qemu-img` to serve existing callers.
// The direct CLI the client execs when no service listens (and the address
// space allows V8) is recorded in the binary: --cli PATH, else this very
// instar (the compiled binary, or `deno run -A <main.ts>`). $INSTAR_CLI
// overrides it at run time.
import { getopt } from "../cli/getopt.ts";
import { CliError, usageError } from "../cli/messages.ts";
import type { InstarOptions, Io } from "../cli/common.ts";
import { hostPath } from "../host/context.ts";

const MARKER = "@@INSTAR_CLI_PREFIX@@";
const PREFIX_MAX = 4096;

/** The argv prefix that runs this instar directly. */
export function thisCli(): string[] {
  const exe = Deno.execPath();
  const base = exe.slice(exe.lastIndexOf("/") + 1);
  if (!base.startsWith("deno")) return [exe]; // `deno compile`d instar
  const main = new URL("../../main.ts", import.meta.url);
  if (main.protocol !== "file:") {
    throw new CliError(["Cannot record a direct CLI for a remote module; use --cli"]);
  }
  return [exe, "run", "-A", decodeURIComponent(main.pathname)];
}

/** The client binary with the direct CLI's argv prefix written in. */
export function patchClient(bin: Uint8Array, prefix: string[]): Uint8Array {
  const enc = new TextEncoder();
  const marker = enc.encode(MARKER);
  // The slot: the marker followed by zeroes up to PREFIX_MAX bytes, exactly once.
  const slots: number[] = [];
  for (let i = bin.indexOf(marker[0]); i >= 0; i = bin.indexOf(marker[0], i + 1)) {
    if (
      i + PREFIX_MAX <= bin.length && marker.every((b, j) => bin[i + j] === b) &&
      bin.subarray(i + marker.length, i + PREFIX_MAX).every((b) => b === 0)
    ) slots.push(i);
  }
  if (slots.length !== 1) throw new Error("the embedded client has no single direct-CLI slot");
  const at = slots[0];
  const parts = prefix.map((p) => enc.encode(p));
  if (parts.some((p) => p.includes(0) || p.length === 0)) throw new CliError(["Bad direct CLI path"]);
  const size = parts.reduce((a, p) => a + p.length + 1, 1);
  if (size > PREFIX_MAX) throw new CliError(["The direct CLI command is too long"]);
  const out = bin.slice();
  out.fill(0, at, at + PREFIX_MAX);
  let w = at;
  for (const p of parts) {
    out.set(p, w);
    w += p.length + 1;
  }
  return out;
}

export async function installClientCommand(argv: string[], io: Io, _base?: InstarOptions): Promise<number> {
  let name = "instar";
  let cli: string | undefined;
  const operands = getopt(argv, ":hn:", [
    { name: "help", hasArg: false, id: "h" },
    { name: "name", hasArg: true, id: "n" },
    { name: "cli", hasArg: true, id: "cli" },
  ], ({ id, value }) => {
    if (id === "h") name = "";
    if (id === "n") name = value!;
    if (id === "cli") cli = value!;
  });
  if (name === "") {
    io.out("usage: instar install-client DIR [--name NAME] [--cli PATH]\n");
    return 0;
  }
  if (operands.length !== 1) throw usageError("Expecting one directory");
  if (!/^[^/\0]+$/.test(name) || name === "." || name === "..") throw usageError(`Invalid --name '${name}'`);
  const { default: b64 } = await import("../embedded/client.ts");
  const bin = patchClient(Uint8Array.fromBase64(b64), cli ? [cli] : thisCli());
  const dir = hostPath(operands[0]);
  await Deno.mkdir(dir, { recursive: true });
  const target = `${dir.replace(/\/+$/, "")}/${name}`;
  const tmp = `${target}.instar-tmp-${crypto.getRandomValues(new Uint32Array(1))[0]}`;
  try {
    await Deno.writeFile(tmp, bin, { mode: 0o755, createNew: true });
    await Deno.chmod(tmp, 0o755);
    await Deno.rename(tmp, target);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new CliError([
      `Could not install the client as '${target}': ${e instanceof Error ? e.message : e}`,
    ]);
  }
  io.out(`installed ${target}\n`);
  return 0;
}
