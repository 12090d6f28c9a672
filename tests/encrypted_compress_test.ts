// Compressed output (convert -c -O qcow2, zlib and zstd; streamOptimized
// vmdk) from encrypted sources: LUKS1 (cryptsetup, filled by qemu-img),
// qcow2 with LUKS and with legacy AES encryption (qemu-img, filled by
// qemu-io), an encrypted qcow2 over a compressed plain backing file, and
// LUKS2 (cryptsetup reencrypt --encrypt of a known plaintext; qemu-img 7.2
// cannot read it). The outputs are checked with qemu-img: compare against
// qemu-img's own output (or the plaintext), check clean, info equal to
// qemu-img's output's but for the disk size. The guests used are the
// compressing variants with decryption (guest/ops.mk convert_crypt_zlib,
// convert_qcrypt_zstd, convert_luks2_zstd).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { cryptsetupLuksImage, cryptsetupReencryptLuks2 } from "./support/luks_images.ts";

const PW = "instar-crypt-compress-pw-40e1";
const haveCryptsetup = (() => {
  try {
    return new Deno.Command("cryptsetup", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync()
      .success;
  } catch {
    return false;
  }
})();
const ready = haveQemuImg() && haveCryptsetup;
const OBJ = ["--object", "secret,id=sec0,file=key"];
const MiB = 1 << 20;

/** Compressible plaintext with a zero run. */
function pattern(bytes: number): Uint8Array {
  const d = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) d[i] = (i * 13 + (i >> 11)) & 0xff;
  d.fill(0, 256 * 1024, 768 * 1024);
  return d;
}

async function ok(args: string[], dir: string, tool: "qemu-img" | "instar"): Promise<void> {
  const r = tool === "qemu-img" ? await qemuImg(args, dir) : await instarHere(args, dir);
  assertEquals(r.code, 0, `${tool} ${args.join(" ")}: ${r.stderr}`);
  assertEquals(r.stderr, "", `${tool} ${args.join(" ")}`);
}

/** qemu-img info of a qcow2 output without its name and disk size. */
async function info(dir: string, name: string): Promise<string> {
  const r = await qemuImg(["info", "--output=json", name], dir);
  assertEquals(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  delete j["actual-size"];
  delete j.filename;
  return JSON.stringify(j);
}

async function check(dir: string, name: string): Promise<void> {
  const r = await qemuImg(["check", name], dir);
  assertEquals(r.code, 0, r.stdout + r.stderr);
  assert(r.stdout.includes("No errors were found on the image."), r.stdout);
}

/** qemu-qcow2 encrypted image (LUKS or AES), retried as LUKS calibration fails at random here. */
async function qemuEncrypted(dir: string, name: string, format: "luks" | "aes", extra = ""): Promise<void> {
  let last = "";
  for (let i = 0; i < 8; i++) {
    const o = `encrypt.format=${format},encrypt.key-secret=sec0${
      format === "luks" ? ",encrypt.iter-time=10" : ""
    }`;
    const r = await qemuImg(["create", "-q", "-f", "qcow2", ...OBJ, "-o", o + extra, name, "4M"], dir);
    if (r.code === 0) return;
    last = r.stderr;
  }
  throw new Error(`qemu-img create ${format}: ${last}`);
}

const WRITES = [
  "write -P 0x5a 0 192k",
  "write -P 0x33 1049088 3000",
  "write -z 2M 64k",
  "write -P 0x7e 3M 300k",
];

async function fillQcow2(dir: string, name: string): Promise<void> {
  const cmds = WRITES.flatMap((w) => ["-c", w]);
  await sh(
    dir,
    "qemu-io",
    ...OBJ,
    "--image-opts",
    `driver=qcow2,encrypt.key-secret=sec0,file.filename=${name}`,
    ...cmds,
  );
}

if (ready) {
  await useHostedGuestsWithoutKvm();

  Deno.test("convert -c from LUKS1, qcow2 LUKS/AES sources: zlib and zstd, as qemu-img's output", async () => {
    await withTempDir("instar-crypt-c-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      // LUKS1 by cryptsetup, its payload filled by qemu-img from a compressible raw file.
      await cryptsetupLuksImage(dir, "l1.luks", 6 * MiB, PW);
      await Deno.writeFile(`${dir}/plain.raw`, pattern(4 * MiB));
      await ok(
        [
          "convert",
          "-n",
          "-f",
          "raw",
          ...OBJ,
          "--target-image-opts",
          "plain.raw",
          "driver=luks,key-secret=sec0,file.filename=l1.luks",
        ],
        dir,
        "qemu-img",
      );
      await qemuEncrypted(dir, "ql0.qcow2", "luks");
      await Deno.copyFile(`${dir}/ql0.qcow2`, `${dir}/ql.qcow2`);
      await fillQcow2(dir, "ql.qcow2");
      await qemuEncrypted(dir, "qa.qcow2", "aes");
      await fillQcow2(dir, "qa.qcow2");
      // Encrypted overlays over plain backing files with zlib- and zstd-compressed clusters
      // (copies of ql.qcow2 rebased: each qemu-img create -f qcow2 of LUKS calibrates for seconds).
      await sh(dir, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "plain.raw", "base.qcow2");
      await sh(
        dir,
        "qemu-img",
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "plain.raw",
        "basez.qcow2",
      );
      for (const [ov, base] of [["ov.qcow2", "base.qcow2"], ["ovz.qcow2", "basez.qcow2"]]) {
        await Deno.copyFile(`${dir}/ql0.qcow2`, `${dir}/${ov}`);
        await sh(
          dir,
          "qemu-img",
          "rebase",
          "-u",
          ...OBJ,
          "-b",
          base,
          "-F",
          "qcow2",
          "--image-opts",
          `driver=qcow2,encrypt.key-secret=sec0,file.filename=${ov}`,
        );
        await sh(
          dir,
          "qemu-io",
          ...OBJ,
          "--image-opts",
          `driver=qcow2,encrypt.key-secret=sec0,file.filename=${ov}`,
          "-c",
          "write -P 0x44 1M 64k",
        );
      }
      const sources: [string, string][] = [
        ["l1", "driver=luks,key-secret=sec0,file.filename=l1.luks"],
        ["ql", "driver=qcow2,encrypt.key-secret=sec0,file.filename=ql.qcow2"],
        ["qa", "driver=qcow2,encrypt.key-secret=sec0,file.filename=qa.qcow2"],
        ["ov", "driver=qcow2,encrypt.key-secret=sec0,file.filename=ov.qcow2"],
      ];
      for (const [name, src] of sources) {
        for (const o of [[], ["-o", "compression_type=zstd"]]) {
          const args = (
            out: string,
          ) => ["convert", "-c", ...OBJ, "--image-opts", src, "-O", "qcow2", ...o, out];
          const what = `${name} ${o.join(" ")}`;
          // qemu-img warns about AES (legacy) on stderr; only its exit status matters here.
          assertEquals((await qemuImg(args("q.qcow2"), dir)).code, 0, what);
          await ok(args("i.qcow2"), dir, "instar");
          const c = await qemuImg(["compare", "-f", "qcow2", "-F", "qcow2", "q.qcow2", "i.qcow2"], dir);
          assertEquals(c.code, 0, `${what}: ${c.stdout}${c.stderr}`);
          await check(dir, "i.qcow2");
          assertEquals(await info(dir, "i.qcow2"), await info(dir, "q.qcow2"), what);
          // Compressed indeed: the pattern shrinks.
          assert((await Deno.stat(`${dir}/i.qcow2`)).size < 2 * MiB, `${what}: not compressed`);
        }
      }
      // A wrong passphrase: qemu-img's open error and exit status, no output left (the guest unlocks).
      await Deno.writeTextFile(`${dir}/bad`, "not-" + PW);
      for (const [, src] of sources.slice(0, 2)) {
        for (const o of [[], ["-o", "compression_type=zstd"]]) {
          const args = (out: string) => [
            "convert",
            "-c",
            "--object",
            "secret,id=sec0,file=bad",
            "--image-opts",
            src,
            "-O",
            "qcow2",
            ...o,
            out,
          ];
          const q = await qemuImg(args("bq.qcow2"), dir);
          assertEquals(q.code, 1);
          assertEquals(await instarHere(args("bq.qcow2"), dir), asInstar(q));
          await assertGone(`${dir}/bq.qcow2`);
        }
      }
      // zstd output over a zstd-compressed layer: convert_qcrypt_zstd has no zstd decoder.
      const zsrc = ["--image-opts", "driver=qcow2,encrypt.key-secret=sec0,file.filename=ovz.qcow2"];
      const z = await instarHere([
        "convert",
        "-c",
        ...OBJ,
        ...zsrc,
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "z.qcow2",
      ], dir);
      assertEquals(z.code, 1);
      assert(z.stderr.includes("zstd-compressed qcow2 layer is not supported by instar convert"), z.stderr);
      await assertGone(`${dir}/z.qcow2`);
      // zlib output reads it (convert_crypt_zlib has the zstd decoder), equal to qemu-img's.
      await ok(["convert", "-c", ...OBJ, ...zsrc, "-O", "qcow2", "i.qcow2"], dir, "instar");
      await ok(["convert", "-c", ...OBJ, ...zsrc, "-O", "qcow2", "q.qcow2"], dir, "qemu-img");
      assertEquals((await qemuImg(["compare", "q.qcow2", "i.qcow2"], dir)).code, 0);
      // streamOptimized vmdk (zlib grains) from LUKS1.
      const vargs = (out: string) => [
        "convert",
        ...OBJ,
        "--image-opts",
        sources[0][1],
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        out,
      ];
      await ok(vargs("q.vmdk"), dir, "qemu-img");
      await ok(vargs("i.vmdk"), dir, "instar");
      const cv = await qemuImg(["compare", "-f", "vmdk", "-F", "vmdk", "q.vmdk", "i.vmdk"], dir);
      assertEquals(cv.code, 0, cv.stdout + cv.stderr);
    });
  });

  Deno.test("convert -c from LUKS2 (cryptsetup reencrypt): zlib and zstd read back as the plaintext", async () => {
    await withTempDir("instar-crypt-c-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      const plain = pattern(6 * MiB);
      await Deno.writeFile(`${dir}/e.img`, plain);
      // Data moves 1 MiB up: the first 4 MiB of the plaintext survive, encrypted by cryptsetup.
      await cryptsetupReencryptLuks2(dir, "e.img", ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
      await Deno.writeFile(`${dir}/want.raw`, plain.subarray(0, 4 * MiB));
      const src = ["--image-opts", "driver=luks,key-secret=sec0,file.filename=e.img"];
      await ok(["convert", ...OBJ, ...src, "-O", "raw", "all.raw"], dir, "instar");
      for (const o of [[], ["-o", "compression_type=zstd"]]) {
        await ok(["convert", "-c", ...OBJ, ...src, "-O", "qcow2", ...o, "i.qcow2"], dir, "instar");
        await check(dir, "i.qcow2");
        const c = await qemuImg(["compare", "-f", "raw", "-F", "qcow2", "all.raw", "i.qcow2"], dir);
        assertEquals(c.code, 0, c.stdout + c.stderr);
        await sh(dir, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", "i.qcow2", "back.raw");
        assertEquals((await exec("cmp", ["-n", String(4 * MiB), "back.raw", "want.raw"], dir)).code, 0);
        assert((await Deno.stat(`${dir}/i.qcow2`)).size < 2 * MiB, "not compressed");
      }
    });
  });
}

async function assertGone(p: string): Promise<void> {
  const st = await Deno.stat(p).catch(() => undefined);
  assert(st === undefined, `${p} left behind`);
}
