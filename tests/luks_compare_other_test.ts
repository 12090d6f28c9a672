// compare of a LUKS1 image (qemu-img made it) with a vpc, vhdx or vmdk
// image against qemu-img 7.2 (the compare_luks_other guest): the same
// output and exit code, both orders, with and without -s, equal and
// differing contents.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { run } from "../lib/cli/run.ts";

const PW = "instar-lcmp-pw-94d2e1";
const OBJ = ["--object", `secret,id=s,data=${PW}`];
const LUKS = "driver=luks,key-secret=s,file.filename=l.luks";

async function instar(args: string[], cwd: string): Promise<Outcome> {
  let stdout = "", stderr = "";
  const code = await run(args, { out: (t) => (stdout += t), err: (t) => (stderr += t), context: { cwd } });
  return { stdout, stderr, code };
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("compare a LUKS image with vpc, vhdx and vmdk images: qemu-img's output", async () => {
    await withTempDir("instar-lcmp-", async (dir) => {
      const b = new Uint8Array(3 << 20);
      b.fill(0x5c, 100 << 10, 400 << 10);
      b.fill(0x3a, 2 << 20, (2 << 20) + 4096);
      await Deno.writeFile(`${dir}/a.raw`, b);
      b[(2 << 20) + 5000] = 1;
      await Deno.writeFile(`${dir}/b.raw`, b);
      let made: Outcome | undefined;
      const mk = [
        "convert",
        ...OBJ,
        "-f",
        "raw",
        "a.raw",
        "-O",
        "luks",
        "-o",
        "key-secret=s,iter-time=10",
        "l.luks",
      ];
      for (let i = 0; i < 8 && made?.code !== 0; i++) made = await qemuImg(mk, dir);
      assertEquals(made!.code, 0, made!.stderr);
      const others: string[] = [];
      for (const [fmt, src] of [["vpc", "a.raw"], ["vhdx", "a.raw"], ["vmdk", "a.raw"], ["vmdk", "b.raw"]]) {
        const name = `${src[0]}.${fmt}`;
        const c = await qemuImg(["convert", "-f", "raw", src, "-O", fmt, name], dir);
        assertEquals(c.code, 0, c.stderr);
        others.push(`driver=${fmt},file.filename=${name}`);
      }
      const cases = [
        ...others.map((o) => [LUKS, o]),
        ...others.map((o) => ["-s", LUKS, o]),
        [others[1], LUKS],
        [others[3], LUKS],
      ];
      for (const c of cases) {
        const strict = c[0] === "-s" ? ["-s"] : [];
        const args = ["compare", ...strict, ...OBJ, "--image-opts", ...c.slice(strict.length)];
        assertEquals(await instar(args, dir), asInstar(await qemuImg(args, dir)), args.join(" "));
      }
    });
  });
}
