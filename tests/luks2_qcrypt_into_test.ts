// A LUKS2 source (cryptsetup's; qemu-img 7.2 cannot read it) into encrypted
// qcow2 targets: convert -n --target-image-opts driver=qcow2,encrypt.key-secret=
// into an existing encrypted qcow2 (LUKS and the legacy AES method), and
// convert -O qcow2 -o encrypt.*,preallocation=metadata|falloc|full. The
// oracle: cryptsetup's offline `reencrypt --encrypt` encrypts known
// plaintext itself, and qemu-img runs the same command from a raw copy of
// that plaintext (fully allocated, as qemu reads a LUKS image: all data).
// instar's target decrypts (qemu-img convert to raw) to the plaintext,
// qemu-img check finds it clean, and qemu-img info (but for the LUKS uuid,
// salts' iteration counts and the disk size, within a block or two) and map
// equal qemu-img's; the -n targets are byte-identical to qemu-img's. No
// passphrase in any output or file.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { cryptsetupReencryptLuks2, haveCryptsetup } from "./support/luks_images.ts";
import { instarLuks } from "./support/instar_luks.ts";
import { qemuOk, sameEncrypted } from "./support/qcrypt_compare.ts";

const PW = "instar-l2q-pw-5e71c2";
const NEW = "instar-l2q-new-94ad0b";
const MiB = 1 << 20;
const OBJ = ["--object", "secret,id=k,file=key", "--object", `secret,id=s,data=${NEW}`];
const SRC = ["--image-opts", "driver=luks,key-secret=k,file.filename=e.img"];
const RAW = ["-f", "raw", "plain.raw"];
const LUKS = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
const AES = "encrypt.format=aes,encrypt.key-secret=s";
const opened = (name: string) => `driver=qcow2,encrypt.key-secret=s,file.filename=${name}`;
const outs: Outcome[] = [];

async function instar(args: string[], cwd: string): Promise<Outcome> {
  const r = await instarLuks(args, cwd);
  outs.push(r);
  return r;
}

/**
 * The LUKS2 source e.img (PBKDF2, few iterations: Argon2 key slots are luks2_targets_test's) of known plaintext with a
 * zero run and a short data block in a zero cluster; plain.raw is the
 * plaintext the LUKS2 image holds, every byte written (no holes).
 */
async function luks2Source(dir: string): Promise<void> {
  await Deno.writeTextFile(`${dir}/key`, PW);
  const plain = new Uint8Array(4 * MiB);
  for (let i = 0; i < plain.length; i++) plain[i] = (i * 7 + (i >> 12)) & 0xff;
  plain.fill(0, 256 << 10, (256 << 10) + 400000);
  plain.fill(0, MiB, 2 * MiB);
  plain.fill(0x5a, MiB + 70000, MiB + 70512);
  await Deno.writeFile(`${dir}/e.img`, plain);
  await cryptsetupReencryptLuks2(dir, "e.img", ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
  // instar's own reading of the LUKS2 image (3 MiB: the data area behind its 1 MiB header), of
  // which cryptsetup kept the plaintext's first 2 MiB; written anew with every byte allocated.
  assertEquals(await instar(["convert", ...OBJ, ...SRC, "-O", "raw", "read.raw"], dir), {
    stdout: "",
    stderr: "",
    code: 0,
  });
  const read = await Deno.readFile(`${dir}/read.raw`);
  assertEquals(read.length, 3 * MiB);
  assertEquals(read.subarray(0, 2 * MiB), plain.subarray(0, 2 * MiB), "not the LUKS2 image's plaintext");
  await Deno.writeFile(`${dir}/plain.raw`, read);
}

/** `name` decrypted by qemu-img is plain.raw, and qemu-img check finds it clean. */
async function decryptsToPlain(dir: string, name: string): Promise<void> {
  const r = await qemuImg(["convert", ...OBJ, "--image-opts", opened(name), "-O", "raw", `${name}.raw`], dir);
  assertEquals(r.code, 0, r.stderr);
  assertEquals((await exec("cmp", ["plain.raw", `${name}.raw`], dir)).code, 0, `${name}: not the plaintext`);
  const check = await qemuImg(["check", ...OBJ, "--image-opts", opened(name)], dir);
  assertEquals(check.code, 0, `${name}: ${check.stdout}${check.stderr}`);
}

if (haveQemuImg() && haveCryptsetup) {
  await useHostedGuestsWithoutKvm();

  Deno.test("a LUKS2 source convert -n into encrypted qcow2 targets: qemu-img's bytes from the plaintext", async () => {
    await withTempDir("instar-l2q-", async (dir) => {
      await luks2Source(dir);
      const mk = (name: string, o: string) => ["create", "-q", "-f", "qcow2", ...OBJ, "-o", o, name, "3M"];
      await qemuOk(mk("luks.qcow2", LUKS), dir);
      await qemuOk(mk("aes.qcow2", AES + ",cluster_size=4096"), dir);
      await qemuOk(mk("pre.qcow2", AES + ",preallocation=metadata"), dir);
      const cases: [string, string[]][] = [["luks.qcow2", []], ["aes.qcow2", ["-S", "8k"]], [
        "pre.qcow2",
        [],
      ]];
      for (const [target, flags] of cases) {
        await Deno.copyFile(`${dir}/${target}`, `${dir}/q-${target}`);
        await Deno.copyFile(`${dir}/${target}`, `${dir}/i-${target}`);
        const args = (src: string[], f: string) => [
          "convert",
          "-n",
          ...flags,
          ...OBJ,
          ...src,
          "--target-image-opts",
          opened(f),
        ];
        const q = await qemuImg(args(RAW, `q-${target}`), dir);
        assertEquals(q.code, 0, q.stderr);
        const what = `-n ${flags.join(" ")} into ${target}`;
        assertEquals(await instar(args(SRC, `i-${target}`), dir), { stdout: "", stderr: "", code: 0 }, what);
        await decryptsToPlain(dir, `i-${target}`);
        assertEquals(
          (await exec("cmp", [`q-${target}`, `i-${target}`], dir)).code,
          0,
          `${what}: not qemu-img's bytes`,
        );
      }
      for (const o of outs) assert(![PW, NEW].some((p) => o.stdout.includes(p) || o.stderr.includes(p)));
    });
  });

  Deno.test("a LUKS2 source into -O qcow2 -o encrypt.*,preallocation=metadata|falloc|full: as qemu-img from the plaintext", async () => {
    await withTempDir("instar-l2q-", async (dir) => {
      await luks2Source(dir);
      for (
        const o of [
          AES + ",preallocation=metadata",
          AES + ",preallocation=falloc",
          LUKS + ",preallocation=full",
        ]
      ) {
        const conv = (src: string[], out: string) => ["convert", ...OBJ, ...src, "-O", "qcow2", "-o", o, out];
        await Deno.remove(`${dir}/i.qcow2`).catch(() => {});
        await Deno.remove(`${dir}/q.qcow2`).catch(() => {});
        assertEquals(await instar(conv(SRC, "i.qcow2"), dir), { stdout: "", stderr: "", code: 0 }, o);
        await qemuOk(conv(RAW, "q.qcow2"), dir);
        await decryptsToPlain(dir, "i.qcow2");
        await sameEncrypted(dir, OBJ, opened, "i.qcow2", "q.qcow2", o);
      }
      for (const o of outs) assert(![PW, NEW].some((p) => o.stdout.includes(p) || o.stderr.includes(p)));
      for (const f of ["i.qcow2", "i-luks.qcow2"]) {
        const b = await Deno.readFile(`${dir}/${f}`).catch(() => undefined);
        if (!b) continue;
        const t = new TextDecoder("latin1").decode(b);
        assert(!t.includes(PW) && !t.includes(NEW), `${f} holds a passphrase`);
      }
    });
  });
}
