// convert of an encrypted qcow2 (LUKS and legacy AES) whose backing chain
// holds a vpc, vhdx or vmdk image (the convert_crypt_other guests), against
// qemu-img 7.2: -O raw byte for byte (cmp) with qemu-img's, -O qcow2, -c
// (zlib and zstd) and streamOptimized vmdk equal to it under qemu-img
// compare, the same stdout, stderr and exit code, a wrong LUKS passphrase
// (the reading guest's unlock error, no output left), an AES qcow2 over a
// zstd-compressed qcow2 over a vmdk (zstd output refused: that guest has
// no zstd decoder), and measure over the same chains. Every image is made
// by qemu-img and written through qemu-io; the passphrase is given through
// a file, never in argv.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, exec, haveQemuImg, instarHere, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { qemuOk } from "./support/qcrypt_compare.ts";

const PW = "instar-qbo-pw-91c4d0";
const MiB = 1 << 20;
const OBJ = ["--object", "secret,id=s,file=key"];
const WRONG = ["--object", "secret,id=s,file=wrong"];
const QCRYPT = (name: string) => `driver=qcow2,encrypt.key-secret=s,file.filename=${name}`;
const LUKS_OPTS = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
const AES_OPTS = "encrypt.format=aes,encrypt.key-secret=s";

async function qemuIo(dir: string, image: string, ...commands: string[]): Promise<void> {
  const io = await exec(
    "qemu-io",
    [...OBJ, "--image-opts", image, ...commands.flatMap((c) => ["-c", c])],
    dir,
  );
  assertEquals(io.code, 0, io.stderr);
}

/** top (format `fmt` 's backing file `base`, encrypted with `opts`), written over through qemu-io. */
async function overlay(dir: string, top: string, base: string, fmt: string, opts: string): Promise<void> {
  await qemuOk(["create", "-q", ...OBJ, "-f", "qcow2", "-o", opts, "-b", base, "-F", fmt, top], dir);
  await qemuIo(
    dir,
    QCRYPT(top),
    `write -P 0x55 ${MiB} 64k`,
    `write -z ${2 * MiB} 4k`,
    `write -P 0x5a 2500k 3k`,
  );
}

async function cmp(dir: string, a: string, b: string, what: string): Promise<void> {
  const r = await exec("cmp", [a, b], dir);
  assertEquals(r.code, 0, `${what}: ${r.stdout}${r.stderr}`);
}

/** instar's and qemu-img's `convert args... out`: the same outcome; both outputs are left in dir. */
async function convertBoth(dir: string, args: string[], qOut: string, iOut: string): Promise<void> {
  const q = await qemuImg(["convert", ...args, qOut], dir);
  const i = await instarHere(["convert", ...args, iOut], dir);
  assertEquals(i, asInstar(q), `convert ${args.join(" ")}`);
}

/** qemu-img compare of instar's output `out` with qemu-img's raw conversion `ref`. */
async function sameContents(dir: string, ref: string, out: string, what: string): Promise<void> {
  const c = await qemuImg(["compare", "-f", "raw", ref, out], dir);
  assertEquals([c.code, c.stdout], [0, "Images are identical.\n"], `${what}: ${c.stderr}`);
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("convert an encrypted qcow2 (LUKS, AES) over vpc, vhdx and vmdk backing files: qemu-img's output", async () => {
    await withTempDir("instar-qbo-", async (dir) => {
      const a = new Uint8Array(3 * MiB);
      for (let i = 100 << 10; i < 700 << 10; i++) a[i] = (i * 7 + (i >> 9)) & 0xff;
      a.fill(0x3a, 2 * MiB, 2 * MiB + 8192);
      await Deno.writeFile(`${dir}/a.raw`, a);
      await Deno.writeTextFile(`${dir}/key`, PW);
      await Deno.writeTextFile(`${dir}/wrong`, "x" + PW);
      for (const fmt of ["vpc", "vhdx", "vmdk"]) {
        await qemuOk(["convert", "-f", "raw", "a.raw", "-O", fmt, `base.${fmt}`], dir);
      }
      // LUKS over vpc and vmdk, AES over vhdx; AES over a zstd-compressed qcow2 (written compressed
      // through qemu-io) over a vmdk.
      await overlay(dir, "l-vpc.qcow2", "base.vpc", "vpc", LUKS_OPTS);
      await overlay(dir, "l-vmdk.qcow2", "base.vmdk", "vmdk", LUKS_OPTS);
      await overlay(dir, "x-vhdx.qcow2", "base.vhdx", "vhdx", AES_OPTS);
      await qemuOk(
        [
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          "compression_type=zstd",
          "-b",
          "base.vmdk",
          "-F",
          "vmdk",
          "z.qcow2",
        ],
        dir,
      );
      const zio = await exec("qemu-io", [
        "-f",
        "qcow2",
        "-c",
        `write -c -P 0x77 ${1536 << 10} 64k`,
        "z.qcow2",
      ], dir);
      assertEquals(zio.code, 0, zio.stderr);
      await overlay(dir, "x-z.qcow2", "z.qcow2", "qcow2", AES_OPTS);

      for (const top of ["l-vpc", "l-vmdk", "x-vhdx", "x-z"]) {
        const src = [...OBJ, "--image-opts", QCRYPT(`${top}.qcow2`)];
        // -O raw: byte for byte.
        await convertBoth(dir, [...src, "-O", "raw"], `${top}-q.raw`, `${top}-i.raw`);
        await cmp(dir, `${top}-q.raw`, `${top}-i.raw`, `${top} -O raw`);
        // -O qcow2, and -c with zlib (convert_crypt_other_zlib).
        await convertBoth(dir, [...src, "-O", "qcow2"], `${top}-q.qcow2`, `${top}-i.qcow2`);
        await sameContents(dir, `${top}-q.raw`, `${top}-i.qcow2`, `${top} -O qcow2`);
        await convertBoth(dir, [...src, "-c", "-O", "qcow2"], `${top}-qc.qcow2`, `${top}-ic.qcow2`);
        await sameContents(dir, `${top}-q.raw`, `${top}-ic.qcow2`, `${top} -c -O qcow2`);
        const check = await qemuImg(["check", `${top}-ic.qcow2`], dir);
        assertEquals(check.code, 0, check.stdout + check.stderr);
        assertEquals(/compressed clusters/.test(check.stdout), true, `${top} -c: no compressed cluster`);
        // measure reads the same chain.
        const m = ["measure", ...src, "-O", "qcow2"];
        assertEquals(await instarHere(m, dir), asInstar(await qemuImg(m, dir)), `measure ${top}`);
      }
      // zstd output (convert_crypt_other_zstd) and a streamOptimized vmdk.
      const lvpc = [...OBJ, "--image-opts", QCRYPT("l-vpc.qcow2")];
      const zstd = ["-c", "-O", "qcow2", "-o", "compression_type=zstd"];
      await convertBoth(dir, [...lvpc, ...zstd], "l-vpc-qz.qcow2", "l-vpc-iz.qcow2");
      await sameContents(dir, "l-vpc-q.raw", "l-vpc-iz.qcow2", "l-vpc -c zstd");
      const stream = ["-O", "vmdk", "-o", "subformat=streamOptimized"];
      const xvhdx = [...OBJ, "--image-opts", QCRYPT("x-vhdx.qcow2")];
      await convertBoth(dir, [...xvhdx, ...stream], "x-vhdx-q.vmdk", "x-vhdx-i.vmdk");
      await sameContents(dir, "x-vhdx-q.raw", "x-vhdx-i.vmdk", "x-vhdx streamOptimized");
      // zstd output over a zstd-compressed layer: refused before the output is created.
      const refused = await instarHere(
        ["convert", ...OBJ, "--image-opts", QCRYPT("x-z.qcow2"), ...zstd, "x-z-iz.qcow2"],
        dir,
      );
      assertEquals(refused.code, 1);
      assertEquals(refused.stderr.includes("zstd-compressed qcow2 layer is not supported by instar"), true);
      assertEquals(await exists(`${dir}/x-z-iz.qcow2`), false, "refused zstd output left behind");
      // A wrong LUKS passphrase: qemu-img's open error, no output left behind.
      const wrong = [...WRONG, "--image-opts", QCRYPT("l-vmdk.qcow2"), "-O", "raw"];
      await convertBoth(dir, wrong, "w-q.raw", "w-i.raw");
      assertEquals(await exists(`${dir}/w-i.raw`), false, "wrong passphrase: output left behind");
      // The passphrase appears in no output.
      for (const f of Deno.readDirSync(dir)) {
        if (f.name === "key" || f.name === "wrong") continue;
        const r = await exec("grep", ["-c", "-a", PW, f.name], dir);
        assertEquals(r.stdout.trim(), "0", `passphrase in ${f.name}`);
      }
    });
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
