// compare of an encrypted qcow2 (LUKS and legacy AES; one over a vmdk
// backing file) or a LUKS2 image with vpc, vhdx and vmdk images (the
// compare_luks_other guest), and with qcow2, raw and LUKS1 ones, against
// qemu-img 7.2: the same stdout, stderr and exit code, both argument orders,
// with and without -s, equal contents, differing contents and sizes, and
// -f/-F as qemu-img takes them. Every image is made by qemu-img, the LUKS2
// one by cryptsetup (`reencrypt --encrypt` of known plaintext). qemu-img
// cannot read LUKS2: its reference is qemu-img's compare of a LUKS1 image
// (qemu-img's) of the same plaintext under the same name in a sibling
// directory. The passphrase is given through a file, never in argv.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, exec, haveQemuImg, instarHere, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { qemuOk } from "./support/qcrypt_compare.ts";
import { cryptsetupReencryptLuks2, haveCryptsetup } from "./support/luks_images.ts";
import { FULL_TESTS } from "./support/full.ts";

const PW = "instar-ccmp-pw-5b07e2";
const MiB = 1 << 20;
const OBJ = ["--object", "secret,id=s,file=key"];
const WRONG = ["--object", "secret,id=s,file=wrong"];
const QCRYPT = (name: string) => `driver=qcow2,encrypt.key-secret=s,file.filename=${name}`;
const LUKS = (name: string) => `driver=luks,key-secret=s,file.filename=${name}`;

/** The plaintexts: a, b (one byte apart from a), s (a's first 2 MiB). */
async function plaintexts(dir: string): Promise<Uint8Array> {
  const a = new Uint8Array(3 * MiB);
  for (let i = 100 << 10; i < 400 << 10; i++) a[i] = (i * 7 + (i >> 9)) & 0xff;
  a.fill(0x3a, 2 * MiB, 2 * MiB + 4096);
  await Deno.writeFile(`${dir}/a.raw`, a);
  const b = a.slice();
  b[2 * MiB + 5000] = 1;
  await Deno.writeFile(`${dir}/b.raw`, b);
  await Deno.writeFile(`${dir}/s.raw`, a.subarray(0, 2 * MiB));
  await Deno.writeTextFile(`${dir}/key`, PW);
  await Deno.writeTextFile(`${dir}/wrong`, "x" + PW);
  return a;
}

/** The plain images every encrypted one is compared with: --image-opts strings by name. */
async function others(dir: string): Promise<Record<string, string>> {
  const made: Record<string, string> = {};
  for (const [src, fmt] of [["a", "vpc"], ["a", "vhdx"], ["a", "vmdk"], ["b", "vmdk"], ["s", "vhdx"]]) {
    const name = `${src}.${fmt}`;
    await qemuOk(["convert", "-f", "raw", `${src}.raw`, "-O", fmt, name], dir);
    made[name] = `driver=${fmt},file.filename=${name}`;
  }
  return made;
}

/**
 * Each case as argv after `compare` around the encrypted image `enc`: both orders, with and without -s, equal
 * contents (a.*), a larger image (a.vpc: its CHS geometry rounds up), differing contents (b.vmdk) and a
 * smaller image (s.vhdx). The first five have one of each; the rest run under INSTAR_FULL_TESTS=1.
 */
function cases(enc: string, other: Record<string, string>): string[][] {
  const [vpc, vhdx, vmdk, diff, small] = ["a.vpc", "a.vhdx", "a.vmdk", "b.vmdk", "s.vhdx"].map((n) =>
    other[n]
  );
  const c = (
    strict: boolean,
    x: string,
    y: string,
  ) => [...(strict ? ["-s"] : []), ...OBJ, "--image-opts", x, y];
  const all = [
    c(false, enc, vpc),
    c(true, vmdk, enc),
    c(false, diff, enc),
    c(true, enc, vhdx),
    c(false, small, enc),
    c(true, enc, small),
    c(false, vhdx, enc),
    c(true, vpc, enc),
    c(false, enc, vmdk),
    c(false, enc, diff),
  ];
  return FULL_TESTS ? all : all.slice(0, 5);
}

async function same(args: string[], instarDir: string, qemuDir = instarDir): Promise<void> {
  const q = await qemuImg(["compare", ...args], qemuDir);
  assertEquals(await instarHere(["compare", ...args], instarDir), asInstar(q), `compare ${args.join(" ")}`);
}

/** LUKS2 of plaintext `plain` at `dir`/`name` (cryptsetup encrypts it in place, moving it up past its header). */
async function luks2Image(dir: string, name: string, plain: Uint8Array): Promise<void> {
  const img = new Uint8Array(plain.length + 2 * MiB);
  img.set(plain);
  await Deno.writeFile(`${dir}/${name}`, img);
  await cryptsetupReencryptLuks2(dir, name, [
    "--pbkdf",
    "argon2id",
    "--pbkdf-memory",
    "4096",
    "--pbkdf-force-iterations",
    "4",
  ]);
  // The data segment runs to the end of the file: cut it after the plaintext.
  const dump = await exec("cryptsetup", ["luksDump", name], dir);
  const offset = /Data segments:\s*\n\s*0: crypt\s*\n\s*offset: (\d+) \[bytes\]/.exec(dump.stdout);
  assertEquals(offset !== null, true, dump.stdout);
  await Deno.truncate(`${dir}/${name}`, Number(offset![1]) + plain.length);
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("compare encrypted qcow2 (LUKS, AES) and LUKS2 images with vpc, vhdx, vmdk, qcow2, raw and LUKS1: qemu-img's output", async () => {
    await withTempDir("instar-ccmp-", async (dir) => {
      const a = await plaintexts(dir);
      const other = await others(dir);
      // Two PBKDF2 calibrations (the slow part of qemu-img's LUKS create): l.qcow2 and e.img (LUKS1).
      const enc = "encrypt.key-secret=s,encrypt.iter-time=10";
      await qemuOk([
        "convert",
        ...OBJ,
        "-f",
        "raw",
        "a.raw",
        "-O",
        "qcow2",
        "-o",
        `encrypt.format=luks,${enc}`,
        "l.qcow2",
      ], dir);
      await qemuOk([
        "convert",
        ...OBJ,
        "-f",
        "raw",
        "a.raw",
        "-O",
        "luks",
        "-o",
        "key-secret=s,iter-time=10",
        "e.img",
      ], dir);
      const aes = "encrypt.format=aes,encrypt.key-secret=s";
      /** An AES qcow2 `name` over `backing` (format `fmt`). */
      const aesOver = (backing: string, fmt: string, name: string) =>
        qemuOk(["create", "-q", ...OBJ, "-f", "qcow2", "-o", aes, "-b", backing, "-F", fmt, name], dir);
      await qemuOk(["convert", ...OBJ, "-f", "raw", "a.raw", "-O", "qcow2", "-o", aes, "x.qcow2"], dir);
      await qemuOk(["convert", "-f", "raw", "b.raw", "-O", "qcow2", "b.qcow2"], dir);
      // An AES qcow2 over a vmdk backing file, one byte written over it (the contents of b).
      await aesOver("a.vmdk", "vmdk", "o.qcow2");
      const io = await exec("qemu-io", [
        ...OBJ,
        "--image-opts",
        QCRYPT("o.qcow2"),
        "-c",
        `write -P 1 ${2 * MiB + 5000} 1`,
      ], dir);
      assertEquals(io.code, 0, io.stderr);

      for (const c of cases(QCRYPT("l.qcow2"), other)) await same(c, dir);
      for (const c of cases(QCRYPT("x.qcow2"), other)) await same(c, dir);
      const over = QCRYPT("o.qcow2");
      await same([...OBJ, "--image-opts", over, other["b.vmdk"]], dir);
      await same(["-s", ...OBJ, "--image-opts", other["a.vpc"], over], dir);
      // An AES qcow2 over a zstd-compressed qcow2 (the guest's trimmed libzstd decodes it).
      await qemuOk([
        "convert",
        "-c",
        "-f",
        "raw",
        "a.raw",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "z.qcow2",
      ], dir);
      await aesOver("z.qcow2", "qcow2", "oz.qcow2");
      await same([...OBJ, "--image-opts", other["a.vhdx"], QCRYPT("oz.qcow2")], dir);
      // A wrong passphrase: LUKS's open error from the compare guest; AES decrypts to other bytes.
      await same([...WRONG, "--image-opts", other["a.vmdk"], QCRYPT("l.qcow2")], dir);
      await same([...WRONG, "--image-opts", QCRYPT("x.qcow2"), other["a.vhdx"]], dir);
      // Against qcow2, raw and LUKS1 (the compare_qcrypt guest).
      await same([...OBJ, "--image-opts", QCRYPT("l.qcow2"), "driver=qcow2,file.filename=b.qcow2"], dir);
      await same(["-s", ...OBJ, "--image-opts", "driver=raw,file.filename=s.raw", QCRYPT("x.qcow2")], dir);
      await same([...OBJ, "--image-opts", QCRYPT("x.qcow2"), LUKS("e.img")], dir);
      // -f/-F: a plain name of an encrypted qcow2 has no key; --image-opts and -f/-F exclude each other
      // (for the second image only once the first is open); -f raw reads the encrypted file as it is.
      await same(["-F", "vpc", "l.qcow2", "a.vpc"], dir);
      await same(["-f", "vmdk", "-F", "qcow2", "a.vmdk", "x.qcow2"], dir);
      await same(["-f", "qcow2", ...OBJ, "--image-opts", QCRYPT("l.qcow2"), other["a.vpc"]], dir);
      await same(["-F", "vhdx", ...OBJ, "--image-opts", QCRYPT("x.qcow2"), other["a.vhdx"]], dir);
      await same(["-s", "-f", "raw", "-F", "vmdk", "x.qcow2", "a.vmdk"], dir);

      if (!haveCryptsetup) return;
      // l2/e.img: LUKS2 of a (cryptsetup's); qemu-img, which cannot read LUKS2, compares e.img, the
      // LUKS1 image of a, under the same name in dir, the other images linked beside it.
      const l2 = `${dir}/l2`;
      await Deno.mkdir(l2);
      for (const name of ["key", "wrong", "s.raw", "b.qcow2", "l.qcow2", "x.qcow2", ...Object.keys(other)]) {
        await Deno.link(`${dir}/${name}`, `${l2}/${name}`);
      }
      await luks2Image(l2, "e.img", a);
      const enc2 = LUKS("e.img");
      for (const c of cases(enc2, other)) await same(c, l2, dir);
      // Against qcow2, raw (compare_luks2) and encrypted qcow2 (compare_luks_other).
      await same([...OBJ, "--image-opts", enc2, "driver=qcow2,file.filename=b.qcow2"], l2, dir);
      await same(["-s", ...OBJ, "--image-opts", "driver=raw,file.filename=s.raw", enc2], l2, dir);
      await same([...OBJ, "--image-opts", QCRYPT("x.qcow2"), enc2], l2, dir);
      await same(["-s", ...OBJ, "--image-opts", enc2, QCRYPT("l.qcow2")], l2, dir);
      await same([...WRONG, "--image-opts", other["a.vpc"], enc2], l2, dir);
      // -f/-F: no key for a plain name; --image-opts and -F exclude each other once the first is open.
      await same(["-f", "luks", "-F", "vpc", "e.img", "a.vpc"], l2, dir);
      await same(["-F", "vhdx", ...OBJ, "--image-opts", enc2, other["a.vhdx"]], l2, dir);
    });
  });
}
