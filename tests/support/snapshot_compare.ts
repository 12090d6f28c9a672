// Shared by the qcow2 internal-snapshot tests: setup commands run once in
// root/q, the directory copied to root/i, one command run by qemu-img in q
// and by instar in i; then the outcomes, qemu-img check, the files byte for
// byte and every snapshot's contents compared.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, exec, instarHere, qemuImg, sh } from "../cli_helpers.ts";

/**
 * `make` (sh -c lines) builds t.qcow2 in root/q, copied to root/i; `args`
 * run by qemu-img in q (which must succeed) and instar in i must say the
 * same; instar's t.qcow2 passes check, is qemu-img's bytes, and reads the
 * same as it in its active layer and in each snapshot of `snaps`.
 */
export async function snapshotCommandSame(
  root: string,
  make: string[],
  args: string[],
  snaps: string[],
): Promise<void> {
  const q = `${root}/q`, i = `${root}/i`;
  await Deno.mkdir(q);
  await Deno.mkdir(i);
  for (const l of make) await sh(q, "sh", "-c", l);
  await sh(root, "sh", "-c", "cp -a q/. i/");
  const want = await qemuImg(args, q);
  const got = await instarHere(args, i);
  assertEquals(got, asInstar(want));
  assertEquals(want.code, 0, want.stderr);
  const chk = await qemuImg(["check", "t.qcow2"], i);
  assertEquals(chk.code, 0, chk.stdout + chk.stderr);
  const r = await exec("cmp", ["q/t.qcow2", "i/t.qcow2"], root);
  assert(r.code === 0, `t.qcow2 differs from qemu-img's: ${r.stdout}`);
  for (const s of ["", ...snaps]) {
    const l = s === "" ? [] : ["-l", `snapshot.name=${s}`];
    await sh(q, "qemu-img", "convert", "-f", "qcow2", ...l, "-O", "raw", "t.qcow2", `${root}/q.raw`);
    await sh(i, "qemu-img", "convert", "-f", "qcow2", ...l, "-O", "raw", "t.qcow2", `${root}/i.raw`);
    const same = await exec("cmp", ["q.raw", "i.raw"], root);
    assert(same.code === 0, `${s || "the active layer"} differs: ${same.stdout}`);
  }
}
