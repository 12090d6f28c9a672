// instar compare against qemu-img compare on images made here: the same
// stdout, stderr (with our name) and exit code for identical images,
// mismatches at the first byte, the last byte and inside a compressed
// cluster, raw against qcow2, across backing chains, size mismatches,
// strict mode, quiet mode and images that cannot be opened.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { assertSame, built, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";

const ready = built() && haveQemuImg();

async function qemuIo(dir: string, file: string, fmt: string, ...cmds: string[]) {
  await sh(dir, "qemu-io", "-f", fmt, ...cmds.flatMap((c) => ["-c", c]), file);
}

Deno.test({ name: "compare: the same outcome as qemu-img compare", ignore: !ready }, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "instar-compare-" });
  try {
    const size = 4 * 1024 * 1024;
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", `${size}`);
    await qemuIo(
      dir,
      "a.qcow2",
      "qcow2",
      "write -P 0x11 0 64k",
      "write -P 0x22 1M 128k",
      `write -P 0x33 ${size - 4096} 4k`,
    );
    await sh(dir, "qemu-img", "convert", "-O", "raw", "a.qcow2", "a.raw");
    await sh(dir, "qemu-img", "convert", "-c", "-O", "qcow2", "a.qcow2", "ac.qcow2");
    await sh(
      dir,
      "qemu-img",
      "convert",
      "-c",
      "-O",
      "qcow2",
      "-o",
      "compression_type=zstd",
      "a.qcow2",
      "az.qcow2",
    );
    // One byte changed: at the very first byte, the very last, and inside
    // the compressed cluster holding 1M..1M+64k.
    const mutate = async (name: string, at: number) => {
      const b = await Deno.readFile(`${dir}/a.raw`);
      b[at] ^= 0xff;
      await Deno.writeFile(`${dir}/${name}`, b);
    };
    await mutate("first.raw", 0);
    await mutate("last.raw", size - 1);
    await mutate("mid.raw", 1024 * 1024 + 40000);
    await sh(dir, "qemu-img", "convert", "-f", "raw", "-c", "-O", "qcow2", "mid.raw", "midc.qcow2");
    // A chain whose top rewrites part of the base, and one that zeroes it.
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "top.qcow2");
    await qemuIo(dir, "top.qcow2", "qcow2", "write -P 0x44 2M 4k");
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "zero.qcow2");
    await qemuIo(dir, "zero.qcow2", "qcow2", "write -z 0 64k");
    await sh(dir, "qemu-img", "convert", "-O", "qcow2", "top.qcow2", "topflat.qcow2");
    // Different sizes: identical prefix, then zeroes or data past the shorter end.
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "long.qcow2", `${size * 2}`);
    await qemuIo(
      dir,
      "long.qcow2",
      "qcow2",
      "write -P 0x11 0 64k",
      "write -P 0x22 1M 128k",
      `write -P 0x33 ${size - 4096} 4k`,
    );
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "longdata.qcow2", `${size * 2}`);
    await qemuIo(
      dir,
      "longdata.qcow2",
      "qcow2",
      "write -P 0x11 0 64k",
      "write -P 0x22 1M 128k",
      `write -P 0x33 ${size - 4096} 4k`,
      `write -P 0x55 ${size + 8192} 512`,
    );

    const cases: string[][] = [
      ["a.qcow2", "a.qcow2"],
      ["-F", "raw", "a.qcow2", "a.raw"],
      ["-f", "raw", "-F", "raw", "a.raw", "first.raw"],
      ["-F", "raw", "a.qcow2", "first.raw"],
      ["-F", "raw", "a.qcow2", "last.raw"],
      ["-F", "raw", "ac.qcow2", "mid.raw"],
      ["ac.qcow2", "midc.qcow2"],
      ["az.qcow2", "midc.qcow2"],
      ["ac.qcow2", "az.qcow2"],
      ["top.qcow2", "topflat.qcow2"],
      ["top.qcow2", "a.qcow2"],
      ["zero.qcow2", "a.qcow2"],
      ["a.qcow2", "long.qcow2"],
      ["long.qcow2", "a.qcow2"],
      ["a.qcow2", "longdata.qcow2"],
      ["-s", "a.qcow2", "long.qcow2"],
      ["-s", "a.qcow2", "a.qcow2"],
      ["-s", "-F", "raw", "a.qcow2", "a.raw"],
      ["-s", "top.qcow2", "topflat.qcow2"],
      ["-s", "a.qcow2", "top.qcow2"],
      ["-q", "-F", "raw", "a.qcow2", "last.raw"],
      ["-q", "a.qcow2", "a.qcow2"],
      ["a.qcow2", "missing.qcow2"],
      ["a.qcow2"],
      ["-f", "foo", "a.qcow2", "a.qcow2"],
    ];
    for (const args of cases) {
      await t.step(args.join(" "), async () => {
        await assertSame(["compare", ...args], dir);
      });
    }

    await t.step("-p draws qemu's progress line around the same result", async () => {
      const args = ["compare", "-p", "-F", "raw", "a.qcow2", "last.raw"];
      const [q, i] = [await qemuImg(args, dir), await instar(args, dir)];
      assertEquals(i.code, q.code);
      assert(i.stdout.startsWith("    (0.00/100%)\r"), JSON.stringify(i.stdout));
      assert(
        q.stdout.endsWith("Content mismatch at offset 4194303!\n\n") || q.stdout.includes("mismatch"),
        q.stdout,
      );
      const tail = (s: string) => s.slice(s.lastIndexOf("\r") + 1);
      assertEquals(tail(i.stdout), tail(q.stdout));
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
