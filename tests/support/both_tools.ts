// The in-place command tests' shape: inputs made by qemu-img and qemu-io in
// `root`/q, copied to `root`/i, then the same command line run by qemu-img
// in q and by instar (in this process) in i, for the caller to compare.
import { instarHere, type Outcome, qemuImg, sh } from "../cli_helpers.ts";

/** Runs the shell lines in `dir`, in order. */
export async function make(dir: string, lines: string[]) {
  for (const l of lines) await sh(dir, "sh", "-c", l);
}

/** Makes the inputs in `root`/q (then `made(q)`, before the copy), copies them to `root`/i and runs `args` in each. */
export async function runBoth(
  root: string,
  lines: string[],
  args: string[],
  made?: (q: string) => Promise<void>,
): Promise<{ q: string; i: string; want: Outcome; got: Outcome }> {
  const q = `${root}/q`, i = `${root}/i`;
  await Deno.mkdir(q);
  await Deno.mkdir(i);
  await make(q, lines);
  await made?.(q);
  await sh(root, "sh", "-c", "cp -a q/. i/");
  const want = await qemuImg(args, q);
  const got = await instarHere(args, i);
  return { q, i, want, got };
}
