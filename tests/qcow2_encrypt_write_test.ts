// create -f qcow2 -o encrypt.format=luks|aes against qemu-img 7.2: the
// "Formatting" line, the file layout (the header cluster byte for byte,
// the LUKS header in the clusters qemu allocates for it), qemu-img info of
// ours equal to info of qemu-img's own file but for the uuid and the
// iteration counts, qemu-img check clean, qemu-io writes and reads it back
// with the passphrase; aes files equal qemu-img's byte for byte; option
// errors in qemu's words with no file left behind. INSTAR_LUKS_PBKDF2_RATE
// gives the calibration's answer, so a create costs no 500 ms benchmark.
import { qemuRetry } from "./support/qcrypt_compare.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, exec, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { instarLuks } from "./support/instar_luks.ts";
import { sweep } from "./support/full.ts";

const PW = "instar-qcow2-encrypt-pw-7d21";
const SECRET = `secret,id=sec0,data=${PW}`;

const instarHere = instarLuks;

/** qemu-img create of an encrypted qcow2 `name` (1 MiB) with options `o`. */
async function qemuCreate(dir: string, o: string, name: string): Promise<Outcome> {
  return await qemuRetry(["create", "-f", "qcow2", "--object", SECRET, "-o", o, name, "1M"], dir);
}

async function infoMasked(dir: string, name: string): Promise<string> {
  const r = await qemuImg(["info", name], dir);
  assertEquals(r.code, 0, r.stderr);
  return r.stdout.replace(/uuid: .*/, "uuid: X").replace(/iters: \d+/g, "iters: N").replace(name, "IMG");
}

const opened = (
  name: string,
) => ["--object", SECRET, "--image-opts", `driver=qcow2,encrypt.key-secret=sec0,file.filename=${name}`];

async function gone(dir: string, name: string): Promise<boolean> {
  return (await Deno.stat(`${dir}/${name}`).catch(() => undefined)) === undefined;
}

const LUKS_CASES = [
  "",
  ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha1",
  ",cluster_size=4096,preallocation=metadata",
  ",compat=0.10,encrypt.cipher-alg=serpent-256",
  ",cluster_size=512",
];

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  for (const extra of sweep(LUKS_CASES, 3)) {
    Deno.test(`create -f qcow2 encrypt.format=luks${extra}: as qemu-img makes it`, async () => {
      await withTempDir("instar-q2enc-", async (dir) => {
        const o = `encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10${extra}`;
        const ours = await instarHere([
          "create",
          "-f",
          "qcow2",
          "--object",
          SECRET,
          "-o",
          o,
          "ours.qcow2",
          "1M",
        ], dir);
        assertEquals(ours.code, 0, ours.stderr);
        assertEquals(ours.stderr, "");
        const q = await qemuCreate(dir, o, "theirs.qcow2");
        assertEquals(q.code, 0, q.stderr);
        assertEquals(ours.stdout, q.stdout.replace("theirs.qcow2", "ours.qcow2"));
        assertEquals(await infoMasked(dir, "ours.qcow2"), await infoMasked(dir, "theirs.qcow2"));
        const a = await Deno.readFile(`${dir}/ours.qcow2`);
        const b = await Deno.readFile(`${dir}/theirs.qcow2`);
        assertEquals(a.length, b.length);
        // The qcow2 header (crypt_method, the 0x0537be77 extension) and refcounts: qemu's bytes.
        const cs = 1 << new DataView(a.buffer).getUint32(20);
        assertEquals(a.subarray(0, cs), b.subarray(0, cs));
        // qemu-img (and instar) open it with the passphrase; qemu-io writes and reads it back.
        const check = await qemuImg(["check", ...opened("ours.qcow2")], dir);
        assertEquals(check.code, 0, check.stdout + check.stderr);
        const io = await exec("qemu-io", [
          ...opened("ours.qcow2"),
          "-c",
          "write -P 0x5a 4096 65536",
          "-c",
          "read -P 0x5a 4096 65536",
        ], dir);
        assertEquals(io.code, 0, io.stderr);
        assert(!/Pattern verification failed|error/i.test(io.stdout + io.stderr), io.stdout + io.stderr);
        // instar reads what qemu-io wrote through the key it made.
        const back = await instarHere(["convert", ...opened("ours.qcow2"), "-O", "raw", "back.raw"], dir);
        assertEquals(back.code, 0, back.stderr);
        const raw = await Deno.readFile(`${dir}/back.raw`);
        assertEquals(raw.length, 1 << 20);
        assert(raw.subarray(4096, 4096 + 65536).every((x) => x === 0x5a), "instar reads other bytes");
        assert(raw.subarray(0, 4096).every((x) => x === 0), "instar reads other bytes before the write");
        const mine = await instarHere(["info", "ours.qcow2"], dir);
        assertEquals(mine, asInstar(await qemuImg(["info", "ours.qcow2"], dir)));
        assertEquals((await qemuImg(["check", ...opened("ours.qcow2")], dir)).code, 0);
        // The passphrase reaches no file.
        assert(!new TextDecoder("latin1").decode(a).includes(PW));
      });
    });
  }

  Deno.test("create -f qcow2 encrypt.format=aes / encryption=on: qemu-img's bytes", async () => {
    await withTempDir("instar-q2enc-", async (dir) => {
      for (
        const o of [
          "encrypt.format=aes,encrypt.key-secret=sec0",
          "encryption=on,encrypt.key-secret=sec0,compat=0.10",
        ]
      ) {
        const args = (n: string) => ["create", "-f", "qcow2", "--object", SECRET, "-o", o, n, "1M"];
        const q = await qemuImg(args("theirs.qcow2"), dir);
        const ours = await instarHere(args("ours.qcow2"), dir);
        assertEquals(ours, asInstar({ ...q, stdout: q.stdout.replace("theirs.qcow2", "ours.qcow2") }), o);
        assertEquals(await Deno.readFile(`${dir}/ours.qcow2`), await Deno.readFile(`${dir}/theirs.qcow2`), o);
      }
    });
  });

  Deno.test("create -f qcow2 encryption refusals: qemu-img's words, exit codes, no file left", async () => {
    await withTempDir("instar-q2enc-", async (dir) => {
      const bad = [
        "encrypt.format=luks",
        "encrypt.format=aes",
        "encrypt.format=luks,encrypt.key-secret=nope",
        "encrypt.format=aes,encrypt.key-secret=nope",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=foo",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-mode=foo",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=foo",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=des",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=abc",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=cast5-128",
        "encrypt.format=xx,encrypt.key-secret=sec0",
        "encrypt.key-secret=sec0",
        "encrypt.cipher-alg=aes-128",
        "encrypt.format=aes,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128",
        "encryption=on,encrypt.format=luks,encrypt.key-secret=sec0",
        "encryption=off,encrypt.format=luks",
        "encrypt.format=luks,compat=2",
        "encrypt.format=xx,compat=2",
        "encrypt.format=xx,preallocation=bad",
        "encrypt.format=luks,encrypt.key-secret=sec0,preallocation=bad",
        "encrypt.format=luks,encrypt.key-secret=sec0,cluster_size=1000",
      ];
      for (const o of bad) {
        const args = ["create", "-f", "qcow2", "--object", SECRET, "-o", o, "x.qcow2", "1M"];
        assertEquals(await instarHere(args, dir), asInstar(await qemuImg(args, dir)), o);
        assert(await gone(dir, "x.qcow2"), `${o}: x.qcow2 left behind`);
      }
    });
  });
}
