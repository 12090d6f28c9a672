// Shared by the check -r tests (check_repair_test, check_repair_rebuild_test):
// an image made in one directory and copied to a second, `check` with the
// case's arguments run by qemu-img in the first and instar in the second,
// the outcomes and the repaired files compared byte for byte.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, instarHere, type Outcome, qemuImg } from "../cli_helpers.ts";

/**
 * `make` builds img.qcow2 in the qemu-img directory; `after` (given qemu-img's
 * outcome and the two directories) checks more before they are removed.
 */
export async function repairBoth(
  prefix: string,
  args: string[],
  make: (dir: string) => Promise<void>,
  after?: (q: Outcome, qd: string, id: string) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix });
  try {
    const [qd, id] = [`${root}/q`, `${root}/i`];
    await Deno.mkdir(qd);
    await make(qd);
    await Deno.mkdir(id);
    await Deno.copyFile(`${qd}/img.qcow2`, `${id}/img.qcow2`);
    const all = ["check", ...args, "img.qcow2"];
    const q = await qemuImg(all, qd);
    const i = await instarHere(all, id);
    assertEquals(i, asInstar(q), `instar ${all.join(" ")}`);
    const [qb, ib] = [await Deno.readFile(`${qd}/img.qcow2`), await Deno.readFile(`${id}/img.qcow2`)];
    assert(qb.length === ib.length && qb.every((b, k) => b === ib[k]), "the repaired files differ");
    await after?.(q, qd, id);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}
