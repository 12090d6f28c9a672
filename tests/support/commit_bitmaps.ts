// The run the commit_bitmaps_*_test.ts files and commit_base_bitmaps_test.ts
// share: a chain made by qemu-img/qemu-io (an in-use bitmap by killing
// qemu-io while it holds the image) copied twice, qemu-img commits one copy
// and instar the other; the
// outcome compared, the overlay byte for byte, the base by contents, `info`,
// `qemu-img check` (but the fragmentation figure: qemu's mirror placement
// varies, docs/commit.md) and each bitmap's dirty map through qemu-nbd; a
// base a failed job left is compared byte for byte.
export { io } from "../cli_helpers.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, exec, instarHere, qemuImg, sh, withTempDir } from "../cli_helpers.ts";
import { dirtyMap } from "./dirty_map.ts";

/** Leaves every bitmap of `file` marked in use: qemu-io opens it read-write and is killed. */
export const killOpen = (file: string) =>
  `qemu-io -c 'sleep 60000' ${file} >/dev/null 2>&1 & p=$!; ` +
  `i=0; until qemu-img info -U ${file} | grep -q in-use; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.02; done; ` +
  `kill -9 $p; wait $p 2>/dev/null; true`;

/** qemu-img info --output=json without the fields that name or size the file. */
async function info(dir: string, file: string): Promise<unknown> {
  const j = JSON.parse((await qemuImg(["info", "--output=json", file], dir)).stdout);
  delete j.filename;
  delete j["actual-size"];
  delete j["backing-filename"];
  delete j["full-backing-filename"];
  return j;
}

export interface CommitBitmapCase {
  name: string;
  /** Shell lines run in the chain's directory (base.qcow2 under ov.qcow2). */
  make: string[];
  runs: string[][];
  /** The base's bitmaps whose dirty maps are compared. */
  bitmaps: string[];
  /** Run in the chain's directory after `make` (byte edits, tests/support/qcow2_edit.ts). */
  prepare?: (dir: string) => Promise<void>;
  /** qemu-img's exit code (0 unless said). */
  code?: number;
  /** Where qemu's mirror places the data varies for this chain: check's figures are not compared, only a clean check. */
  placementVaries?: boolean;
}

export async function runCommitBitmapCase(c: CommitBitmapCase): Promise<void> {
  await withTempDir("instar-commit-bm-", async (dir) => {
    await Deno.mkdir(`${dir}/q`);
    for (const line of c.make) await sh(`${dir}/q`, "sh", "-c", line);
    await c.prepare?.(`${dir}/q`);
    for (const [n, args] of c.runs.entries()) {
      const qd = `q${n}`, id = `i${n}`;
      await sh(dir, "cp", "-r", "q", qd);
      await sh(dir, "cp", "-r", "q", id);
      const q = await qemuImg(args, `${dir}/${qd}`);
      const i = await instarHere(args, `${dir}/${id}`);
      assertEquals(i, asInstar(q));
      assertEquals(q.code, c.code ?? 0);
      const cmp = await exec("cmp", [`${qd}/ov.qcow2`, `${id}/ov.qcow2`], dir);
      assertEquals(cmp.code, 0, `the overlays differ: ${cmp.stdout}`);
      if (q.code !== 0) {
        // Nothing copied: only the bitmaps stored anew, byte for byte.
        const b = await exec("cmp", [`${qd}/base.qcow2`, `${id}/base.qcow2`], dir);
        assertEquals(b.code, 0, `the bases differ: ${b.stdout}`);
      }
      assertEquals((await qemuImg(["compare", `${qd}/base.qcow2`, `${id}/base.qcow2`], dir)).code, 0);
      assertEquals(await info(dir, `${id}/base.qcow2`), await info(dir, `${qd}/base.qcow2`));
      const check = async (d: string) => {
        const r = await qemuImg(["check", "base.qcow2"], `${dir}/${d}`);
        return { ...r, stdout: r.stdout.replace(/[\d.]+% fragmented/, "") };
      };
      const chk = await check(id);
      if (!c.placementVaries) assertEquals(chk, await check(qd));
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
      for (const b of c.bitmaps) {
        assertEquals(
          await dirtyMap(`${dir}/${id}`, "base.qcow2", b),
          await dirtyMap(`${dir}/${qd}`, "base.qcow2", b),
          b,
        );
      }
    }
  });
}
