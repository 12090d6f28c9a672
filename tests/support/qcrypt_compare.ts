// Comparing an encrypted qcow2 image instar wrote with the one qemu-img wrote
// for the same command: qemu-img info (but for the LUKS uuid, iteration
// counts and the disk size, within a block or two), map and check through
// --image-opts, and qemu-img compare of the decrypted contents.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, KVM, type Outcome, qemuImg } from "../cli_helpers.ts";

/** qemu-img; its flaky PBKDF2 calibration is retried by cli_helpers' exec, for every qemu-img run. */
export const qemuRetry = qemuImg;

export async function qemuOk(args: string[], dir: string): Promise<void> {
  const r = await qemuRetry(args, dir);
  assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
}

/** qemu-img info's text without what differs between two runs of one command. */
export function maskedInfo(info: string, name: string): string {
  return info.replace(/uuid: .*/, "uuid: X").replace(/iters: \d+/g, "iters: N")
    .replace(/disk size: .*/, "disk size: X").replaceAll(name, "IMG");
}

export async function actualSize(dir: string, name: string): Promise<number> {
  return JSON.parse((await qemuImg(["info", "--output=json", name], dir)).stdout)["actual-size"];
}

/**
 * Encrypted qcow2 images `mine` and `theirs` (in dir, opened with `opened(name)` and the
 * --object arguments `obj`) alike in every way qemu-img shows.
 */
export async function sameEncrypted(
  dir: string,
  obj: string[],
  opened: (name: string) => string,
  mine: string,
  theirs: string,
  what: string,
): Promise<void> {
  await exec("sync", [], dir);
  const info = async (n: string) => maskedInfo((await qemuImg(["info", n], dir)).stdout, n);
  assertEquals(await info(mine), await info(theirs), what);
  const ia = await actualSize(dir, mine), qa = await actualSize(dir, theirs);
  assert(Math.abs(ia - qa) <= 8192, `${what}: disk size ${ia} vs qemu-img's ${qa}`);
  for (const cmd of [["map", "--output=json"], ["check"]]) {
    const r = async (n: string) => {
      const x = await qemuImg([...cmd, ...obj, "--image-opts", opened(n)], dir);
      return { ...x, stdout: x.stdout.replaceAll(n, "IMG") };
    };
    assertEquals(await r(mine), await r(theirs), `${what}: ${cmd[0]}`);
  }
  const c = await qemuImg(["compare", ...obj, "--image-opts", opened(mine), opened(theirs)], dir);
  assertEquals(c, { stdout: "Images are identical.\n", stderr: "", code: 0 }, what);
}

/** Runs `fn` with every Deno.Command it (or anything it calls) makes recorded: program, argv, env values. */
export async function recordingChildren<T>(argvs: string[][], fn: () => Promise<T>): Promise<T> {
  const Orig = Deno.Command;
  (Deno as unknown as { Command: unknown }).Command = class extends Orig {
    constructor(cmd: string | URL, o?: Deno.CommandOptions) {
      argvs.push([String(cmd), ...(o?.args ?? []).map(String), ...Object.values(o?.env ?? {})]);
      super(cmd, o);
    }
  };
  try {
    return await fn();
  } finally {
    (Deno as unknown as { Command: unknown }).Command = Orig;
  }
}

/** The files (under 64 MiB) directly in `dir` and one level down. */
export async function smallFilesIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, depth: number) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      if (e.isFile && ((await Deno.stat(p).catch(() => undefined))?.size ?? 0) < (64 << 20)) out.push(p);
      else if (e.isDirectory && depth < 1) await walk(p, depth + 1).catch(() => {});
    }
  };
  await walk(dir, 0).catch(() => {});
  return out;
}

/**
 * Without KVM the guests run as hosted children, so a secret check over the
 * children's argv must have seen some, or it proves nothing. Under KVM the
 * guests run in the VM and instar spawns no child at all: the check then
 * holds with nothing to look at, and the output and file checks still run.
 */
export function assertChildrenSeen(argvs: string[][]): void {
  if (!KVM) assert(argvs.length > 0, "no child was spawned: the check would prove nothing");
}

/** No secret in any child's argv or env, any output, or any file of `files`. */
export async function noSecrets(
  secrets: string[],
  argvs: string[][],
  outs: Outcome[],
  files: string[],
): Promise<void> {
  assertChildrenSeen(argvs);
  for (const a of argvs) {
    assert(!a.some((s) => secrets.some((p) => s.includes(p))), `a secret in ${a[0]}'s argv`);
  }
  for (const o of outs) {
    assert(!secrets.some((p) => o.stdout.includes(p) || o.stderr.includes(p)), "a secret printed");
  }
  for (const f of files) {
    const b = new TextDecoder("latin1").decode(await Deno.readFile(f).catch(() => new Uint8Array(0)));
    assert(!secrets.some((p) => b.includes(p)), `${f} holds a secret`);
  }
}
