// Shared helpers for the CLI tests: run qemu-img / qemu-io / instar in a
// directory and compare what they print.
import { CLI_ENTRY, KVM } from "./support/kvm.ts";
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

export async function exec(cmd: string, args: string[], cwd: string): Promise<Outcome> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  return { stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), code: out.code };
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

export function instar(args: string[], cwd: string): Promise<Outcome> {
  return exec(DENO, ["run", "-A", CLI_ENTRY, ...args], cwd);
}

/**
 * Runs instar in this process (test files that call it set up hosted guests
 * with useHostedGuestsWithoutKvm) in `cwd`, given through the host context
 * as the service gives a client's directory: never Deno.chdir, which is
 * process-wide while deno test runs test files in parallel threads.
 */
export async function instarHere(args: string[], cwd: string): Promise<Outcome> {
  let stdout = "", stderr = "";
  const code = await run(args, { out: (t) => (stdout += t), err: (t) => (stderr += t), context: { cwd } });
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

/** qemu-img's output with its name replaced by ours ("qemu-img:" prefix and the --help hint). */
export function asInstar(o: Outcome): Outcome {
  return { ...o, stderr: o.stderr.replaceAll("qemu-img", "instar") };
}

/** Asserts instar prints exactly what qemu-img prints for `args`. */
export async function assertSame(args: string[], cwd: string): Promise<Outcome> {
  const [q, i] = await Promise.all([qemuImg(args, cwd), instar(args, cwd)]);
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
