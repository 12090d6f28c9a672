// convert -n from an encrypted source (a LUKS-encrypted qcow2, a LUKS1
// image) into an existing unencrypted qcow2: qemu-img 7.2 converts it; instar refuses in one line,
// exit 1, before anything is written (the guests that write into a plain
// qcow2 carry no cipher; they used to fail with "Input/output error").
// The same sources into a raw target still convert, equal to the source.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, haveQemuImg, instarHere, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { qemuRetry } from "./support/qcrypt_compare.ts";

const PW = "instar-nenc-pw-41d7";
const OBJ = ["--object", `secret,id=s0,data=${PW}`];

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();
  Deno.test("convert -n from an encrypted source into a plain qcow2: refused, the target untouched", async (t) => {
    await withTempDir("instar-nenc-", async (dir) => {
      const ok = async (args: string[]) => {
        const r = await qemuRetry(args, dir);
        assertEquals(r.code, 0, r.stderr);
      };
      await ok([
        "create",
        "-q",
        ...OBJ,
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        "enc.qcow2",
        "4M",
      ]);
      await ok(["create", "-q", ...OBJ, "-f", "luks", "-o", "key-secret=s0,iter-time=10", "enc.luks", "4M"]);
      const qcowOpts = "driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=s0";
      const io = await exec("qemu-io", [...OBJ, "--image-opts", qcowOpts, "-c", "write -P 7 64k 1M"], dir);
      assertEquals(io.code, 0, io.stderr);
      await ok(["create", "-q", "-f", "qcow2", "target.qcow2", "4M"]);
      const before = await Deno.readFile(`${dir}/target.qcow2`);
      const sources: [string, string[]][] = [
        ["an encrypted qcow2", ["--image-opts", qcowOpts]],
        ["a LUKS1 image", ["--image-opts", "driver=luks,file.filename=enc.luks,key-secret=s0"]],
      ];
      for (const [what, src] of sources) {
        await t.step(what, async () => {
          // qemu-img converts it (on a copy): the refusal is instar's own.
          await Deno.copyFile(`${dir}/target.qcow2`, `${dir}/q.qcow2`);
          const q = await qemuRetry(["convert", "-n", ...OBJ, ...src, "-O", "qcow2", "q.qcow2"], dir);
          assertEquals(q.code, 0, `qemu-img: ${q.stderr}`);
          const i = await instarHere(["convert", "-n", ...OBJ, ...src, "-O", "qcow2", "target.qcow2"], dir);
          assertEquals(i, {
            stdout: "",
            stderr:
              "instar: Writing an encrypted source into 'target.qcow2' is not supported by instar convert: the target is an unencrypted qcow2; nothing was written\n",
            code: 1,
          });
          assert(
            (await Deno.readFile(`${dir}/target.qcow2`)).every((b, k) => b === before[k]),
            "target changed",
          );
          // Into a raw target the same source converts, equal to it.
          await ok(["create", "-q", "-f", "raw", "r.img", "4M"]);
          const r = await instarHere(["convert", "-n", ...OBJ, ...src, "-O", "raw", "r.img"], dir);
          assertEquals(r, { stdout: "", stderr: "", code: 0 }, what);
          const c = await qemuImg(["compare", ...OBJ, ...src, "driver=raw,file.filename=r.img"], dir);
          assertEquals(c.stdout, "Images are identical.\n", what + c.stderr);
        });
      }
    });
  });
}
