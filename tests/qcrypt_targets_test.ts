// Encrypted qcow2 targets against qemu-img 7.2: convert -O qcow2 -o
// encrypt.* with a backing file (-B/-F) and with preallocation, compared
// with qemu-img's own output of the same command (qemu-img info equal but
// for the LUKS uuid and iteration counts, disk size within a filesystem
// block or two, map and check equal, qemu-img compare of the decrypted
// contents identical); convert -n into encrypted qcow2 targets (a
// preallocated one, and encrypted LUKS1 / encrypted-qcow2 sources) with the
// default -S, byte-identical (cmp) to qemu-img's on copies of one target.
// No passphrase in any output. INSTAR_LUKS_PBKDF2_RATE stands in for the
// 500 ms calibration; qemu-img's flaky calibration is retried.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { instarLuks } from "./support/instar_luks.ts";
import { FULL_TESTS } from "./support/full.ts";
import { qemuOk, sameEncrypted } from "./support/qcrypt_compare.ts";

const PW = "instar-qct-pw-8c21f0";
const PW2 = "instar-qct-src-3e9d47";
const OBJ = ["--object", `secret,id=s,data=${PW}`, "--object", `secret,id=s2,data=${PW2}`];
const LUKS = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
const AES = "encrypt.format=aes,encrypt.key-secret=s";
const opened = (name: string, id = "s") => `driver=qcow2,encrypt.key-secret=${id},file.filename=${name}`;
const outs: Outcome[] = [];

async function instar(args: string[], cwd: string): Promise<Outcome> {
  const r = await instarLuks(args, cwd);
  outs.push(r);
  return r;
}

const ok = qemuOk;

/** The sources: base (4 MiB of 0x11), top over it (data, zeroes, a partial cluster), raw (first block data). */
async function sources(dir: string): Promise<void> {
  await ok(["create", "-q", "-f", "qcow2", "base.qcow2", "4M"], dir);
  assertEquals((await exec("qemu-io", ["-c", "write -P 0x11 0 4M", "base.qcow2"], dir)).code, 0);
  await ok(["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "4M"], dir);
  const w = [
    "-c",
    "write -P 0x22 64k 64k",
    "-c",
    "write -z 1M 128k",
    "-c",
    "write -P 0x33 2M 4k",
    "top.qcow2",
  ];
  assertEquals((await exec("qemu-io", w, dir)).code, 0);
  const b = new Uint8Array(4 << 20);
  b.fill(0x44, 0, 512); // a data block of zeroes after it: write-zeroes split inside cluster 0
  b.fill(0x66, 128 << 10, 192 << 10);
  b.fill(0x55, 3 << 20, (3 << 20) + 4096);
  await Deno.writeFile(`${dir}/src.raw`, b);
  await exec("truncate", ["-s", "4M", "src.raw"], dir);
}

/** instar's and qemu-img's output of the same convert: alike in every way qemu-img shows. */
async function sameConvert(dir: string, src: string[], o: string, extra: string[] = []): Promise<void> {
  const conv = (out: string) => ["convert", ...OBJ, ...src, "-O", "qcow2", "-o", o, ...extra, out];
  await Deno.remove(`${dir}/i.qcow2`).catch(() => {});
  await Deno.remove(`${dir}/q.qcow2`).catch(() => {});
  const what = `${src.join(" ")} -o ${o} ${extra.join(" ")}`;
  assertEquals(await instar(conv("i.qcow2"), dir), { stdout: "", stderr: "", code: 0 }, what);
  await ok(conv("q.qcow2"), dir);
  await sameEncrypted(dir, OBJ, opened, "i.qcow2", "q.qcow2", what);
}

/** convert -n into copies of `target`: instar's file byte-identical to qemu-img's. */
async function sameInto(dir: string, target: string, src: string[], flags: string[] = []): Promise<void> {
  await Deno.copyFile(`${dir}/${target}`, `${dir}/nq.qcow2`);
  await Deno.copyFile(`${dir}/${target}`, `${dir}/ni.qcow2`);
  const args = (f: string) => ["convert", "-n", ...flags, ...OBJ, ...src, "--target-image-opts", opened(f)];
  const what = `-n ${flags.join(" ")} ${src.join(" ")} into ${target}`;
  const q = await qemuImg(args("nq.qcow2"), dir);
  assertEquals(q.code, 0, `${what}: ${q.stderr}`);
  assertEquals(await instar(args("ni.qcow2"), dir), { stdout: "", stderr: "", code: 0 }, what);
  assertEquals((await exec("cmp", ["nq.qcow2", "ni.qcow2"], dir)).code, 0, `${what}: the files differ`);
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("convert -O qcow2 -o encrypt.* -B base -F qcow2: as qemu-img's output", async () => {
    await withTempDir("instar-qct-", async (dir) => {
      await sources(dir);
      const B = ["-B", "base.qcow2", "-F", "qcow2"];
      await sameConvert(dir, ["top.qcow2"], LUKS, B);
      await sameConvert(dir, ["-f", "raw", "src.raw"], AES, B);
    });
  });

  Deno.test("convert -O qcow2 -o encrypt.*,preallocation=metadata|full: as qemu-img's output", async () => {
    await withTempDir("instar-qct-", async (dir) => {
      await sources(dir);
      // qemu-img's LUKS calibration costs seconds here: LUKS in the full suite only.
      if (FULL_TESTS) await sameConvert(dir, ["-f", "raw", "src.raw"], LUKS + ",preallocation=metadata");
      await sameConvert(dir, ["-f", "raw", "src.raw"], AES + ",preallocation=metadata");
      await sameConvert(dir, ["top.qcow2"], AES + ",preallocation=full");
    });
  });

  Deno.test("convert -n into an encrypted qcow2, default -S, encrypted sources: qemu-img's bytes", async () => {
    await withTempDir("instar-qct-", async (dir) => {
      await sources(dir);
      const mk = (name: string, o: string) => ["create", "-q", "-f", "qcow2", ...OBJ, "-o", o, name, "4M"];
      await ok(mk("pre.qcow2", AES + ",preallocation=metadata"), dir);
      await ok(mk("plain.qcow2", AES), dir);
      // Sources: an encrypted qcow2 (its own secret) and a LUKS1 image.
      await ok([
        "convert",
        ...OBJ,
        "-f",
        "raw",
        "src.raw",
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s2",
        "es.qcow2",
      ], dir);
      await ok(
        ["convert", ...OBJ, "top.qcow2", "-O", "luks", "-o", "key-secret=s2,iter-time=10", "el.luks"],
        dir,
      );
      const es = ["--image-opts", opened("es.qcow2", "s2")];
      const el = ["--image-opts", "driver=luks,key-secret=s2,file.filename=el.luks"];
      await sameInto(dir, "pre.qcow2", ["-f", "raw", "src.raw"]);
      await sameInto(dir, "pre.qcow2", es);
      await sameInto(dir, "plain.qcow2", el, ["-S", "8k"]);
      for (const o of outs) assert(![PW, PW2].some((p) => o.stdout.includes(p) || o.stderr.includes(p)));
    });
  });
}
