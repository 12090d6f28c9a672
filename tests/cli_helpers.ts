// Shared helpers for the CLI tests: run qemu-img / qemu-io / instar in a
// directory and compare what they print.
import { CLI_ENTRY, KVM, useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { enableConcurrentContexts } from "../lib/host/context.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run } from "../lib/cli/run.ts";

export const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
export const DENO = Deno.execPath();

export interface Outcome {
  stdout: string;
  stderr: string;
  code: number;
}

const dec = new TextDecoder();

/**
 * Runs `cmd`. qemu-img's PBKDF2 calibration (LUKS create and convert) fails
 * at random when the machine is busy ("Unable to get accurate CPU usage"),
 * in whatever test happens to run then; such a run is repeated here, each
 * time after a longer wait (eight immediate retries once all failed).
 */
export async function exec(cmd: string, args: string[], cwd: string): Promise<Outcome> {
  for (let attempt = 0;; attempt++) {
    const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
    const r = { stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), code: out.code };
    if (cmd !== "qemu-img" || r.code === 0 || attempt >= 8 || !r.stderr.includes("accurate CPU usage")) {
      return r;
    }
    await new Promise((done) => setTimeout(done, 250 * (attempt + 1)));
  }
}

/** Runs a setup command and fails the test if it fails. */
export async function sh(cwd: string, cmd: string, ...args: string[]): Promise<void> {
  const r = await exec(cmd, args, cwd);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr}`);
}

/** `qemu-img create -q -f <fmt> <args>` in `cwd`, failing the test if it fails (a setup step). */
export function qemuImgCreate(cwd: string, fmt: string, ...args: string[]): Promise<void> {
  return sh(cwd, "qemu-img", "create", "-q", "-f", fmt, ...args);
}

export function qemuImg(args: string[], cwd: string): Promise<Outcome> {
  return exec("qemu-img", args, cwd);
}

export { CLI_ENTRY, KVM };

/**
 * Runs instar on `args` in `cwd`. In this process (instarHere) unless the
 * command line names `-` (stdin or stdout: the test runner's own would be
 * used): a run in-process costs a few milliseconds where a new Deno process
 * costs ~0.4 s, and the suite runs thousands of them. The CLI code is the
 * same; what only a process shows (main.ts's exit, signals, the
 * environment) is tested through instarProcess. INSTAR_TEST_PROCESS=1 runs
 * every call as its own process.
 */
export async function instar(args: string[], cwd: string): Promise<Outcome> {
  if (args.includes("-") || PROCESS_ONLY) return await instarProcess(args, cwd);
  await inProcessReady();
  return await instarHere(args, cwd);
}

/** Runs instar as its own process (the CLI entry tests/support/kvm.ts picks). */
export function instarProcess(args: string[], cwd: string): Promise<Outcome> {
  return exec(DENO, ["run", "-A", CLI_ENTRY, ...args], cwd);
}

const PROCESS_ONLY = Deno.env.get("INSTAR_TEST_PROCESS") === "1";
let ready: Promise<void> | undefined;

/** Hosted guests without /dev/kvm, and one host context per run so runs a
 * test starts together (Promise.all) never see each other's directory. */
function inProcessReady(): Promise<void> {
  ready ??= (async () => {
    await useHostedGuestsWithoutKvm();
    await enableConcurrentContexts();
  })();
  return ready;
}

/**
 * Runs instar in this process (test files that call it set up hosted guests
 * with useHostedGuestsWithoutKvm) in `cwd`, given through the host context
 * as the service gives a client's directory: never Deno.chdir, which is
 * process-wide while deno test runs test files in parallel threads.
 */
export async function instarHere(
  args: string[],
  cwd: string,
  env?: Record<string, string>,
): Promise<Outcome> {
  let stdout = "", stderr = "";
  // `env` is added to this process's environment (the context's env is the whole set a command sees).
  const context = env ? { cwd, env: { ...Deno.env.toObject(), ...env } } : { cwd };
  const code = await run(args, { out: (t) => (stdout += t), err: (t) => (stderr += t), context });
  return { stdout, stderr, code };
}

/** Asserts instar run in this process (instarHere) prints exactly what qemu-img prints for `args`. */
export async function assertSameHere(args: string[], cwd: string): Promise<Outcome> {
  const q = await qemuImg(args, cwd);
  assertEquals(await instarHere(args, cwd), asInstar(q), `instar ${args.join(" ")}`);
  return q;
}

/** Runs `fn` in a new temporary directory, removed afterwards. */
export async function withTempDir(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A shell line running qemu-io with these commands on `file` (its output dropped), for setup lists. */
export const io = (file: string, ...cmds: string[]) =>
  `qemu-io ${cmds.map((c) => `-c '${c}'`).join(" ")} ${file} >/dev/null`;

/** qemu-img's output with its name replaced by ours ("qemu-img:" prefix and the --help hint). */
export function asInstar(o: Outcome): Outcome {
  return { ...o, stderr: o.stderr.replaceAll("qemu-img", "instar") };
}

const READ_ONLY = new Set(["info", "map", "measure", "compare", "check", "--help", "--version"]);

/**
 * Asserts instar prints exactly what qemu-img prints for `args`. Read-only
 * commands run both tools at once; a command that may write runs them one
 * after the other, or both would write one file and one would fail on the
 * other's image lock (seen once guests ran in KVM and timings tightened).
 */
export async function assertSame(args: string[], cwd: string): Promise<Outcome> {
  const [q, i] = READ_ONLY.has(args[0]) && !args.includes("-r")
    ? await Promise.all([qemuImg(args, cwd), instar(args, cwd)])
    : [await qemuImg(args, cwd), await instar(args, cwd)];
  assertEquals(i, asInstar(q), `instar ${args.join(" ")}`);
  return q;
}

/** True when the VMM and guest binaries have been built (`deno task build`). */
export function built(): boolean {
  for (
    const p of [
      "build/libinstar_vmm.so",
      "build/guest/info.bin",
      "build/guest/check.bin",
      "build/guest/map.bin",
      "lib/embedded/index.ts",
    ]
  ) {
    try {
      Deno.statSync(`${REPO}/${p}`);
    } catch {
      return false;
    }
  }
  return true;
}

export function haveQemuImg(): boolean {
  try {
    return new Deno.Command("qemu-img", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}
