// Shared by the commit tests (commit_test.ts, commit_compressed_test.ts): a
// chain made by qemu-img and qemu-io in one directory, copied, then the
// same command line committed by qemu-img in one copy and by instar in the
// other, for the caller to compare.
import { instarHere, type Outcome, qemuImg, sh } from "../cli_helpers.ts";
export { io } from "./convert_compare.ts";

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

/** Runs the shell lines in `dir`, in order. */
export async function make(dir: string, lines: string[]) {
  for (const l of lines) await sh(dir, "sh", "-c", l);
}

/**
 * Makes the case's chain in `root`/q (then `made(q)`, before the copy),
 * copies it to `root`/i, and commits with qemu-img in q and instar in i.
 */
export async function commitBoth(
  root: string,
  c: CommitCase,
  made?: (q: string) => Promise<void>,
): Promise<{ q: string; i: string; want: Outcome; got: Outcome }> {
  const q = `${root}/q`, i = `${root}/i`;
  await Deno.mkdir(q);
  await Deno.mkdir(i);
  await make(q, c.make);
  await made?.(q);
  await sh(root, "sh", "-c", "cp -a q/. i/");
  const want = await qemuImg(c.args, q);
  const got = await instarHere(c.args, i);
  return { q, i, want, got };
}
