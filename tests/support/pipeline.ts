// Shared by the `-` tests (pipeline_test.ts, pipeline_vmdk_stdin_test.ts):
// a shell pipeline in a case directory with `$I` for instar (a child
// process, as a user's pipe runs it) and TMPDIR a private spool directory,
// and the checks that a refusal is one line and leaves nothing behind.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { CLI_ENTRY, DENO, sh } from "../cli_helpers.ts";

/** instar as `sh` runs it (split by sh: the paths hold no spaces). */
export const INSTAR = `${DENO} run -A ${CLI_ENTRY}`;

export interface ShOutcome {
  code: number;
  /** Empty when stdout was not kept. */
  stdout: Uint8Array;
  stderr: string;
}

/** Runs a shell pipeline in `dir`; `$I` is instar, TMPDIR `dir`/spool. `stdout: "null"` drops its output. */
export async function pipeline(
  dir: string,
  script: string,
  env: Record<string, string> = {},
  stdout: "piped" | "null" = "piped",
): Promise<ShOutcome> {
  const out = await new Deno.Command("sh", {
    args: ["-c", script],
    cwd: dir,
    env: { I: INSTAR, TMPDIR: `${dir}/spool`, ...env },
    stdout,
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: stdout === "piped" ? out.stdout : new Uint8Array(),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** One line on stderr matching `re`, in instar's words, and no trace of a stack. */
export function oneLine(stderr: string, re: RegExp) {
  const lines = stderr.split("\n").filter((l) => l !== "");
  assertEquals(lines.length, 1, stderr);
  assert(re.test(lines[0]), stderr);
  assert(!/\bat (file|async|ext):/.test(stderr), stderr);
}

/** Nothing left in the spool directory (TMPDIR). */
export function spoolEmpty(dir: string) {
  assertEquals([...Deno.readDirSync(`${dir}/spool`)].map((e) => e.name), []);
}

/** Nothing left in the spool directory, and no file but `keep` in `dir`. */
export function nothingLeft(dir: string, keep: string[]) {
  spoolEmpty(dir);
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n !== "spool").sort();
  assertEquals(names, [...keep].sort());
}

/** qemu-img's streamOptimized vmdk of `from` (`-f`: its format, else probed) as `to`, in `dir`. */
export async function streamOptimized(dir: string, from: string, to: string, format?: string) {
  const f = format ? ["-f", format] : [];
  await sh(dir, "qemu-img", "convert", ...f, "-O", "vmdk", "-o", "subformat=streamOptimized", from, to);
}
