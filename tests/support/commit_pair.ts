// Shared by the commit tests (commit_test.ts, commit_compressed_test.ts): a
// chain made by qemu-img and qemu-io in one directory, copied, then the
// same command line committed by qemu-img in one copy and by instar in the
// other, for the caller to compare.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, exec, instarHere, type Outcome, qemuImg, sh } from "../cli_helpers.ts";
export { io } from "./convert_compare.ts";
import { make, runBoth } from "./both_tools.ts";
export { make };

/** One commit case: the chain, the command line and the files compared after. */
export interface CommitCase {
  name: string;
  /** Shell lines run in the case directory to make the chain. */
  make: string[];
  args: string[];
  /** Files compared after the commit. */
  files: string[];
  /** Files that must be byte-identical (layouts qemu makes deterministically). */
  exact?: string[];
}

/**
 * Makes the case's chain in `root`/q (then `made(q)`, before the copy),
 * copies it to `root`/i, and commits with qemu-img in q and instar in i.
 */
export function commitBoth(
  root: string,
  c: CommitCase,
  made?: (q: string) => Promise<void>,
): Promise<{ q: string; i: string; want: Outcome; got: Outcome }> {
  return runBoth(root, c.make, c.args, made);
}

/** qemu-img check --output=json without the file name and fragmented-clusters. */
async function checkJson(dir: string, f: string): Promise<unknown> {
  const j = JSON.parse((await qemuImg(["check", "--output=json", f], dir)).stdout);
  delete j.filename;
  delete j["fragmented-clusters"];
  return j;
}

/**
 * `commit ov.qcow2` (the overlay emptied) of a chain the shell lines make in
 * `dir`/q, copied to `dir`/i, by qemu-img in q and instar in i: the same
 * output and success, the overlays byte-identical, the bases the same
 * contents and check (where qemu's mirror job places clusters varies from
 * run to run, tests/commit_test.ts), the overlay's check clean.
 */
export async function commitEmptiedBoth(dir: string, lines: string[]): Promise<void> {
  await Deno.mkdir(`${dir}/q`);
  await make(`${dir}/q`, lines);
  await sh(dir, "cp", "-r", "q", "i");
  const q = await qemuImg(["commit", "ov.qcow2"], `${dir}/q`);
  const i = await instarHere(["commit", "ov.qcow2"], `${dir}/i`);
  assertEquals(i, asInstar(q));
  assertEquals(q.code, 0);
  const cmp = await exec("cmp", ["q/ov.qcow2", "i/ov.qcow2"], dir);
  assertEquals(cmp.code, 0, `the overlays differ: ${cmp.stdout}`);
  assertEquals((await qemuImg(["compare", "q/base.qcow2", "i/base.qcow2"], dir)).code, 0);
  assertEquals(await checkJson(dir, "i/base.qcow2"), await checkJson(dir, "q/base.qcow2"));
  assertEquals((await qemuImg(["check", "ov.qcow2"], `${dir}/i`)).code, 0);
}
