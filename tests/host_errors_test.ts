// Host-side failures in qemu-img's words, not instar's internals: a backing
// file name the host cannot resolve (too long) and a full disk under convert.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";

const ready = built() && haveQemuImg();

Deno.test({
  name: "a backing file name too long for the host: qemu-img's message",
  ignore: !ready,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "instar-hosterr-" });
    try {
      const long = "b".repeat(300);
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        long,
        "-F",
        "qcow2",
        "o.qcow2",
        "1M",
      );
      for (const args of [["info", "--backing-chain", "o.qcow2"], ["map", "o.qcow2"], ["check", "o.qcow2"]]) {
        const [q, i] = await Promise.all([qemuImg(args, dir), instar(args, dir)]);
        assertEquals(i, asInstar(q), args.join(" "));
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * Unmounts the test's tmpfs. On a loaded machine a process that just exited
 * can hold it busy for a moment (EBUSY), so retry, then detach it lazily.
 */
async function unmount(mnt: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    if ((await new Deno.Command("umount", { args: [mnt], stderr: "null" }).output()).success) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Deno.Command("umount", { args: ["-l", mnt], stderr: "null" }).output();
}

/** A 2 MiB tmpfs, where this machine lets the test mount one (root); else undefined. */
async function smallFs(dir: string): Promise<string | undefined> {
  const mnt = `${dir}/full`;
  await Deno.mkdir(mnt);
  const r = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt],
    stdout: "null",
    stderr: "null",
  }).output();
  return r.success ? mnt : undefined;
}

Deno.test({
  name: "convert onto a full disk: qemu-img's write error",
  ignore: !ready || Deno.uid() !== 0,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "instar-hosterr-" });
    let mnt: string | undefined;
    try {
      mnt = await smallFs(dir);
      if (!mnt) return console.error("no tmpfs could be mounted: full-disk case not run");
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "64M");
      await sh(dir, "qemu-io", "-c", "write -P 5 0 8M", "s.qcow2");
      const args = ["convert", "-O", "raw", "s.qcow2", "full/o.raw"];
      const q = await qemuImg(args, dir);
      await Deno.remove(`${mnt}/o.raw`).catch(() => {});
      const i = await instar(args, dir);
      assertEquals(i, asInstar(q));
      // Nothing is left on the full disk.
      assertEquals([...Deno.readDirSync(mnt)], []);
    } finally {
      if (mnt) await unmount(mnt);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
