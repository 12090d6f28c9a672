// A LUKS2 source (cryptsetup's; qemu-img 7.2 cannot read it) as the source
// of convert -O luks and of -O qcow2 -o encrypt.format=luks: cryptsetup's
// offline `reencrypt --encrypt` encrypts known plaintext itself (the
// independent oracle), instar writes the new image with the luks_write_luks2
// or qcow2_encrypt_luks2 guest, and qemu-img reads the output back: its raw
// reading equals the plaintext cryptsetup kept and instar's own LUKS2 → raw;
// qemu-img check finds the qcow2 clean; convert -n from it into a LUKS1
// image gives qemu-img's bytes from that raw reading. No passphrase in any output.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { cryptsetupReencryptLuks2, haveCryptsetup } from "./support/luks_images.ts";
import { instarLuks } from "./support/instar_luks.ts";

const PW = "instar-l2t-pw-70d3a9";
const NEW = "instar-l2t-new-1b88e4";
const MiB = 1 << 20;
const OBJ = ["--object", "secret,id=k,file=key", "--object", `secret,id=s,data=${NEW}`];
const SRC = ["--image-opts", "driver=luks,key-secret=k,file.filename=e.img"];

const instar = instarLuks;

if (haveQemuImg() && haveCryptsetup) {
  await useHostedGuestsWithoutKvm();

  Deno.test("a LUKS2 source into -O luks and -O qcow2 -o encrypt.format=luks: qemu-img reads the plaintext", async () => {
    await withTempDir("instar-l2t-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      // Known plaintext with a zero run; cryptsetup moves the data up 1 MiB: the first 4 MiB survive.
      const plain = new Uint8Array(6 * MiB);
      for (let i = 0; i < plain.length; i++) plain[i] = (i * 13 + (i >> 11)) & 0xff;
      plain.fill(0, MiB, MiB + 300000);
      await Deno.writeFile(`${dir}/e.img`, plain);
      await Deno.writeFile(`${dir}/plain4`, plain.subarray(0, 4 * MiB));
      await cryptsetupReencryptLuks2(dir, "e.img", [
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "32768",
        "--pbkdf-force-iterations",
        "4",
      ]);
      const outs: Outcome[] = [];
      const ok = async (args: string[]) => {
        const r = await instar(args, dir);
        outs.push(r);
        assertEquals(r, { stdout: "", stderr: "", code: 0 }, args.join(" "));
      };
      await ok(["convert", ...OBJ, ...SRC, "-O", "raw", "ref.raw"]);
      await ok(["convert", ...OBJ, ...SRC, "-O", "luks", "-o", "key-secret=s,iter-time=10", "l.luks"]);
      const q2 = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
      await ok(["convert", ...OBJ, ...SRC, "-O", "qcow2", "-o", q2, "q.qcow2"]);
      const reads = [
        ["l.luks", "driver=luks,key-secret=s,file.filename=l.luks"],
        ["q.qcow2", "driver=qcow2,encrypt.key-secret=s,file.filename=q.qcow2"],
      ];
      for (const [name, opts] of reads) {
        const r = await qemuImg(["convert", ...OBJ, "--image-opts", opts, "-O", "raw", `${name}.raw`], dir);
        assertEquals(r.code, 0, r.stderr);
        assertEquals((await exec("cmp", ["ref.raw", `${name}.raw`], dir)).code, 0, `${name}: not the source`);
        assertEquals(
          (await exec("cmp", ["-n", String(4 * MiB), "plain4", `${name}.raw`], dir)).code,
          0,
          name,
        );
      }
      // convert -n into a LUKS1 image qemu-img made: the bytes qemu-img writes from the plaintext.
      const mk = ["create", "-q", "-f", "luks", ...OBJ, "-o", "key-secret=s,iter-time=10", "t.luks", "5M"];
      let made: Outcome | undefined;
      for (let i = 0; i < 8 && made?.code !== 0; i++) made = await qemuImg(mk, dir);
      assertEquals(made!.code, 0, made!.stderr);
      await Deno.copyFile(`${dir}/t.luks`, `${dir}/nq.luks`);
      await Deno.copyFile(`${dir}/t.luks`, `${dir}/ni.luks`);
      const into = (f: string) => ["--target-image-opts", `driver=luks,key-secret=s,file.filename=${f}`];
      const q = await qemuImg(["convert", "-n", ...OBJ, "-f", "raw", "ref.raw", ...into("nq.luks")], dir);
      assertEquals(q.code, 0, q.stderr);
      await ok(["convert", "-n", ...OBJ, ...SRC, ...into("ni.luks")]);
      assertEquals((await exec("cmp", ["nq.luks", "ni.luks"], dir)).code, 0, "-n: not qemu-img's bytes");
      const check = await qemuImg(["check", ...OBJ, "--image-opts", reads[1][1]], dir);
      assertEquals(check.code, 0, check.stdout + check.stderr);
      for (const o of outs) assert(![PW, NEW].some((p) => o.stdout.includes(p) || o.stderr.includes(p)));
      for (const f of ["l.luks", "q.qcow2"]) {
        const b = new TextDecoder("latin1").decode(await Deno.readFile(`${dir}/${f}`));
        assert(!b.includes(PW) && !b.includes(NEW), `${f} holds a passphrase`);
      }
    });
  });
}
