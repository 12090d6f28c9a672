// A persistent bitmap's dirty map as qemu reads it (qemu-nbd exports the
// bitmap's dirty-bitmap context; qemu-img map prints it), shared by the
// bitmap tests that compare instar's result with qemu-img's.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../cli_helpers.ts";

/** Whether qemu-nbd runs here (scripts/deps.sh installs qemu-utils). */
export const haveNbd = (() => {
  try {
    return new Deno.Command("qemu-nbd", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

/** The dirty map of bitmap `bm` of `file` (qemu-img map over qemu-nbd's dirty-bitmap context). */
export async function dirtyMap(dir: string, file: string, bm: string): Promise<string> {
  const sock = `${dir}/nbd.sock`;
  await Deno.remove(sock).catch(() => {});
  const nbd = new Deno.Command("qemu-nbd", {
    args: ["-r", "-t", "-k", sock, "-f", "qcow2", "-B", bm, file],
    cwd: dir,
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (let i = 0; !(await Deno.stat(sock).then(() => true, () => false)); i++) {
      if (i > 400) throw new Error("qemu-nbd did not start");
      await new Promise((r) => setTimeout(r, 25));
    }
    const r = await qemuImg([
      "map",
      "--output=json",
      "--image-opts",
      `driver=nbd,server.type=unix,server.path=${sock},x-dirty-bitmap=qemu:dirty-bitmap:${bm}`,
    ], dir);
    assertEquals(r.code, 0, r.stderr);
    return r.stdout;
  } finally {
    nbd.kill("SIGTERM");
    await nbd.status;
  }
}
