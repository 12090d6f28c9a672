// Shared by the check -r tests (check_repair_test, check_repair_rebuild_test):
// an image made in one directory and copied to a second, `check` with the
// case's arguments run by qemu-img in the first and instar in the second,
// the outcomes and the repaired files compared byte for byte.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, instarHere, type Outcome, qemuImg, sh } from "../cli_helpers.ts";

/**
 * `make` builds img.qcow2 in the qemu-img directory; `after` (given qemu-img's
 * outcome and the two directories) checks more before they are removed.
 * Returns how long each tool took, in milliseconds.
 */
export async function repairBoth(
  prefix: string,
  args: string[],
  make: (dir: string) => Promise<void>,
  after?: (q: Outcome, qd: string, id: string) => Promise<void>,
): Promise<{ qemuMs: number; instarMs: number }> {
  const root = await Deno.makeTempDir({ prefix });
  try {
    const [qd, id] = [`${root}/q`, `${root}/i`];
    await Deno.mkdir(qd);
    await make(qd);
    await Deno.mkdir(id);
    await Deno.copyFile(`${qd}/img.qcow2`, `${id}/img.qcow2`);
    const all = ["check", ...args, "img.qcow2"];
    let t = performance.now();
    const q = await qemuImg(all, qd);
    const qemuMs = performance.now() - t;
    t = performance.now();
    const i = await instarHere(all, id);
    const instarMs = performance.now() - t;
    assertEquals(i, asInstar(q), `instar ${all.join(" ")}`);
    const [qb, ib] = [await Deno.readFile(`${qd}/img.qcow2`), await Deno.readFile(`${id}/img.qcow2`)];
    assert(qb.length === ib.length && qb.every((b, k) => b === ib[k]), "the repaired files differ");
    await after?.(q, qd, id);
    return { qemuMs, instarMs };
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/**
 * A 64 MiB qcow2 `img.qcow2` in `dir` with `snapshots` internal snapshots (each
 * after its own 128 KiB of data), the active layer written over the first
 * 64 KiB, then `poke` (a byte edit of the snapshot table) applied.
 */
export async function makeSnapshotImage(
  dir: string,
  snapshots: number,
  poke: (path: string) => void,
  createOptions: string[] = [],
): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...createOptions, "img.qcow2", "64M");
  for (let i = 0; i < snapshots; i++) {
    await sh(dir, "qemu-io", "-c", `write -P ${i + 1} ${i * 128}k 128k`, "img.qcow2");
    await sh(dir, "qemu-img", "snapshot", "-c", `s${i}`, "img.qcow2");
  }
  await sh(dir, "qemu-io", "-c", "write -P 9 0 64k", "img.qcow2");
  poke(`${dir}/img.qcow2`);
}

/**
 * `check ARGS img.qcow2` in `dir` where qemu-img refuses to repair without
 * `-r all`: qemu-img exits 1 with its hint, instar prints the same (the hint
 * naming qemu-img, as qemu does), and the file is left as it was.
 */
export async function refusedAsQemu(dir: string, args: string[]): Promise<void> {
  const before = await Deno.readFile(`${dir}/img.qcow2`);
  const all = ["check", ...args, "img.qcow2"];
  const q = await qemuImg(all, dir);
  assertEquals(q.code, 1);
  const want = asInstar(q);
  want.stderr = want.stderr.replace("with instar check -r all", "with qemu-img check -r all");
  assertEquals(await instarHere(all, dir), want);
  const after = await Deno.readFile(`${dir}/img.qcow2`);
  assert(after.length === before.length && after.every((b, k) => b === before[k]), "the file changed");
}
