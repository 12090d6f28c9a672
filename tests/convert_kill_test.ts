// A convert killed with SIGKILL while it writes leaves nothing behind: the
// output is an unnamed O_TMPFILE file until it is linked into place (the
// killed process cannot clean up, so a named temporary would stay).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, CLI_ENTRY, DENO, haveQemuImg, sh } from "./cli_helpers.ts";

const ready = built() && haveQemuImg();

/** The files of `pid` that are open but have no name, in `dir`. */
async function unnamedIn(pid: number, dir: string): Promise<number> {
  let n = 0;
  try {
    for await (const e of Deno.readDir(`/proc/${pid}/fd`)) {
      try {
        const t = await Deno.readLink(`/proc/${pid}/fd/${e.name}`);
        if (t.startsWith(`${dir}/#`) && t.endsWith("(deleted)")) n++;
      } catch { /* closed meanwhile */ }
    }
  } catch { /* exited */ }
  return n;
}

Deno.test({
  name: "convert killed mid-write leaves no file behind",
  ignore: !ready,
  async fn() {
    const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "instar-kill-" }));
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "1G");
      await sh(dir, "qemu-io", "-c", "write -P 9 0 256M", "src.qcow2");
      const before = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      const child = new Deno.Command(DENO, {
        args: ["run", "-A", CLI_ENTRY, "convert", "-O", "raw", "src.qcow2", "out.raw"],
        cwd: dir,
        stdout: "null",
        stderr: "null",
      }).spawn();
      // Kill it once its output exists (unnamed, in the target's directory).
      let seen = false;
      for (let i = 0; i < 2000 && !seen; i++) {
        seen = (await unnamedIn(child.pid, dir)) > 0;
        if (!seen) await new Promise((r) => setTimeout(r, 2));
      }
      child.kill("SIGKILL");
      const status = await child.status;
      assert(seen, "the output was never seen open");
      assertEquals(status.signal, "SIGKILL");
      // Guests it started may still be writing into the unnamed file; nothing gets a name.
      await new Promise((r) => setTimeout(r, 1500));
      assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), before);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
