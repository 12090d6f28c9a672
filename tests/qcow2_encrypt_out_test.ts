// convert -O qcow2 -o encrypt.format=luks|aes against qemu-img 7.2: qemu-img
// reads instar's output back with the passphrase (compare with the source,
// check clean), info of ours equals info of qemu-img's own convert output
// but for the LUKS uuid, iteration counts and disk size; instar reads it
// back; sources raw, qcow2 over a backing file, an encrypted qcow2
// (re-encrypted under a new secret) and LUKS1; refusals in qemu's words with
// no file left; measure -o encrypt.* byte-identical; the passphrase in no
// output, child argv or file. INSTAR_LUKS_PBKDF2_RATE stands in for the
// 500 ms calibration.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, exec, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { assertChildrenSeen, qemuRetry, recordingChildren, smallFilesIn } from "./support/qcrypt_compare.ts";
import { instarLuks } from "./support/instar_luks.ts";
import { FULL_TESTS } from "./support/full.ts";

const PW = "instar-q2out-pw-5e0a9c";
const PW2 = "instar-q2out-new-41b7d2";
const SECRET = `secret,id=sec0,data=${PW}`;
const SECRET2 = `secret,id=sec1,data=${PW2}`;
const OBJ = ["--object", SECRET, "--object", SECRET2];

const instarHere = instarLuks;

const LUKS0 = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
const LUKS1 = "encrypt.format=luks,encrypt.key-secret=sec1,encrypt.iter-time=10";
const AES0 = "encrypt.format=aes,encrypt.key-secret=sec0";

/** A LUKS1 file of `size` bytes cryptsetup formats with 1000 PBKDF2 iterations (passphrase PW). */
async function cryptsetupLuks(dir: string, name: string, size: number): Promise<void> {
  await Deno.writeFile(`${dir}/${name}`, new Uint8Array(0));
  await Deno.truncate(`${dir}/${name}`, size);
  const p = new Deno.Command("cryptsetup", {
    args: [
      "luksFormat",
      "--batch-mode",
      "--type",
      "luks1",
      "--pbkdf-force-iterations",
      "1000",
      "--key-file",
      "-",
      name,
    ],
    cwd: dir,
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(PW));
  await w.close();
  const r = await p.output();
  if (!r.success) throw new Error(`cryptsetup: ${new TextDecoder().decode(r.stderr)}`);
}

const opened = (name: string, id = "sec0") => `driver=qcow2,encrypt.key-secret=${id},file.filename=${name}`;

async function infoMasked(dir: string, name: string): Promise<string> {
  const r = await qemuImg(["info", name], dir);
  assertEquals(r.code, 0, r.stderr);
  return r.stdout.replace(/uuid: .*/, "uuid: X").replace(/iters: \d+/g, "iters: N")
    .replace(/disk size: .*/, "disk size: X").replace(name, "IMG");
}

async function gone(dir: string, name: string): Promise<boolean> {
  return (await Deno.stat(`${dir}/${name}`).catch(() => undefined)) === undefined;
}

/** 4 MiB + 1536 bytes: data in a few clusters, one cluster only partly written, a short last cluster. */
async function rawSource(dir: string, name: string): Promise<void> {
  const b = new Uint8Array((4 << 20) + 1536);
  b.fill(0x11, 0, 70000);
  b.fill(0x5a, 200000, 200512);
  for (let i = 3 << 20; i < (3 << 20) + 300000; i++) b[i] = (i * 7) & 0xff;
  b.fill(0xee, b.length - 700);
  await Deno.writeFile(`${dir}/${name}`, b);
}

/** Our output and qemu-img's of the same convert: info alike, qemu reads ours as the source, check clean. */
async function sameAsQemu(dir: string, src: string[], o: string, key = "sec0"): Promise<void> {
  const conv = (out: string) => ["convert", ...OBJ, ...src, "-O", "qcow2", "-o", o, out];
  const ours = await instarHere(conv("ours.qcow2"), dir);
  assertEquals(ours, { stdout: "", stderr: "", code: 0 }, o);
  const theirs = await qemuRetry(conv("theirs.qcow2"), dir);
  assertEquals(theirs.code, 0, theirs.stderr);
  assertEquals(await infoMasked(dir, "ours.qcow2"), await infoMasked(dir, "theirs.qcow2"), o);
  const check = await qemuImg(["check", ...OBJ, "--image-opts", opened("ours.qcow2", key)], dir);
  assertEquals(check.code, 0, check.stdout + check.stderr);
  assert(/No errors were found/.test(check.stdout), check.stdout);
  const ourCheck = ["check", "--output=json", ...OBJ, "--image-opts", opened("ours.qcow2", key)];
  assertEquals(await instarHere(ourCheck, dir), asInstar(await qemuImg(ourCheck, dir)));
  const cmp = await qemuImg(
    ["compare", ...OBJ, "--image-opts", opened("theirs.qcow2", key), opened("ours.qcow2", key)],
    dir,
  );
  assertEquals(cmp, { stdout: "Images are identical.\n", stderr: "", code: 0 }, o);
  // instar reads its own output: to raw equal to qemu's reading, and info as qemu prints it.
  const back = await instarHere(
    ["convert", ...OBJ, "--image-opts", opened("ours.qcow2", key), "-O", "raw", "back.raw"],
    dir,
  );
  assertEquals(back.code, 0, back.stderr);
  const qback = await qemuImg(
    ["convert", ...OBJ, "--image-opts", opened("ours.qcow2", key), "-O", "raw", "qback.raw"],
    dir,
  );
  assertEquals(qback.code, 0, qback.stderr);
  assertEquals((await exec("cmp", ["back.raw", "qback.raw"], dir)).code, 0, o);
  assertEquals(
    await instarHere(["info", "ours.qcow2"], dir),
    asInstar(await qemuImg(["info", "ours.qcow2"], dir)),
  );
  const a = new TextDecoder("latin1").decode(await Deno.readFile(`${dir}/ours.qcow2`));
  assert(!a.includes(PW) && !a.includes(PW2), "the passphrase is in the output");
}

// qemu-img's LUKS calibration costs seconds a run here: the fast suite runs the first and the aes case.
const LUKS_CASES = [
  "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
  "encrypt.format=aes,encrypt.key-secret=sec0",
  "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128," +
  "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha1,cluster_size=4096",
  "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,compat=0.10,encrypt.cipher-alg=serpent-256",
  "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=512,refcount_bits=1",
  "encryption=on,encrypt.key-secret=sec0,compat=0.10",
];

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  for (const o of FULL_TESTS ? LUKS_CASES : LUKS_CASES.slice(0, 2)) {
    Deno.test(`convert raw -O qcow2 -o ${o}: qemu-img reads it as the source`, async () => {
      await withTempDir("instar-q2out-", async (dir) => {
        await rawSource(dir, "src.raw");
        await sameAsQemu(dir, ["-f", "raw", "src.raw"], o);
        const cmp = await qemuImg(
          ["compare", ...OBJ, "--image-opts", "driver=raw,file.filename=src.raw", opened("ours.qcow2")],
          dir,
        );
        assertEquals(cmp.code, 0, cmp.stdout + cmp.stderr);
        // -S 0: every cluster written (encrypted zeroes included), still read as the source.
        const full = await instarHere(
          ["convert", ...OBJ, "-S", "0", "-f", "raw", "src.raw", "-O", "qcow2", "-o", o, "full.qcow2"],
          dir,
        );
        assertEquals(full.code, 0, full.stderr);
        const cmp2 = await qemuImg(
          ["compare", ...OBJ, "--image-opts", "driver=raw,file.filename=src.raw", opened("full.qcow2")],
          dir,
        );
        assertEquals(cmp2.code, 0, cmp2.stdout + cmp2.stderr);
      });
    });
  }

  Deno.test("convert to encrypted qcow2 from qcow2 over a backing file, AES qcow2 and LUKS1 (cryptsetup)", async () => {
    await withTempDir("instar-q2out-", async (dir) => {
      await rawSource(dir, "src.raw");
      const q = async (args: string[]) => {
        const r = await qemuRetry(args, dir);
        assertEquals(r.code, 0, r.stderr);
      };
      await q(["convert", "-f", "raw", "-O", "qcow2", "src.raw", "base.qcow2"]);
      await q(["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"]);
      const io = await exec("qemu-io", ["-c", "write -P 0x77 1M 128K", "top.qcow2"], dir);
      assertEquals(io.code, 0, io.stderr);
      // An AES-encrypted qcow2 (sec0, no PBKDF2 in qemu-img) and a LUKS1 image (sec0) cryptsetup made.
      await q(["convert", ...OBJ, "-f", "raw", "src.raw", "-O", "qcow2", "-o", AES0, "aes.qcow2"]);
      const luks = ["--image-opts", "driver=luks,key-secret=sec0,file.filename=s.luks"];
      await cryptsetupLuks(dir, "s.luks", (8 << 20) + (2 << 20));
      await q(["convert", "-n", ...OBJ, "-f", "raw", "src.raw", "--target-image-opts", luks[1]]);
      const sources: [string[], string][] = [
        [["top.qcow2"], "driver=qcow2,file.filename=top.qcow2"],
        [["--image-opts", opened("aes.qcow2")], opened("aes.qcow2")],
        [luks, luks[1]],
      ];
      for (const [src, srcOpts] of sources) {
        for (const o of [LUKS1, "encrypt.format=aes,encrypt.key-secret=sec1"]) {
          await Deno.remove(`${dir}/ours.qcow2`).catch(() => {});
          const r = await instarHere(["convert", ...OBJ, ...src, "-O", "qcow2", "-o", o, "ours.qcow2"], dir);
          assertEquals(r, { stdout: "", stderr: "", code: 0 }, `${srcOpts} ${o}`);
          const cmp = await qemuImg([
            "compare",
            ...OBJ,
            "--image-opts",
            srcOpts,
            opened("ours.qcow2", "sec1"),
          ], dir);
          assertEquals(cmp, { stdout: "Images are identical.\n", stderr: "", code: 0 }, `${srcOpts} ${o}`);
          const check = await qemuImg(["check", ...OBJ, "--image-opts", opened("ours.qcow2", "sec1")], dir);
          assertEquals(check.code, 0, check.stdout + check.stderr);
        }
      }
      // A wrong passphrase for the source: qemu's open error, no output left.
      const bad = [
        "convert",
        "--object",
        "secret,id=sec0,data=wrong",
        "--object",
        SECRET2,
        ...luks,
        "-O",
        "qcow2",
        "-o",
        LUKS1,
        "x.qcow2",
      ];
      assertEquals(await instarHere(bad, dir), asInstar(await qemuRetry(bad, dir)));
      assert(await gone(dir, "x.qcow2"), "x.qcow2 left behind");
      if (!FULL_TESTS) return;
      // A LUKS-encrypted qcow2 qemu-img made (sec0) re-encrypted under sec1, against qemu-img's own.
      await q(["convert", ...OBJ, "-f", "raw", "-O", "qcow2", "-o", LUKS0, "src.raw", "enc.qcow2"]);
      await sameAsQemu(dir, ["--image-opts", opened("enc.qcow2")], LUKS1, "sec1");
      await sameAsQemu(dir, ["top.qcow2"], LUKS1, "sec1");
      await sameAsQemu(dir, luks, LUKS1, "sec1");
    });
  });

  Deno.test("convert -O qcow2 encryption refusals: qemu-img's words and exit codes, no file left", async () => {
    await withTempDir("instar-q2out-", async (dir) => {
      await Deno.writeFile(`${dir}/src.raw`, new Uint8Array(65536).fill(7));
      const cases: [string[], string][] = [
        [[], "encrypt.format=luks"],
        [[], "encrypt.format=aes"],
        [[], "encrypt.format=luks,encrypt.key-secret=nope"],
        [[], "encrypt.format=aes,encrypt.key-secret=nope"],
        [[], "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=foo"],
        [[], "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=des"],
        [[], "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=cast5-128"],
        [[], "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=md4"],
        [[], "encrypt.format=xx,encrypt.key-secret=sec0"],
        [[], "encrypt.cipher-alg=aes-128"],
        [[], "encrypt.format=aes,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128"],
        [[], "encryption=on,encrypt.format=luks,encrypt.key-secret=sec0"],
        [["-c"], "encrypt.format=luks,encrypt.key-secret=sec0"],
        [["-c"], "encrypt.format=aes,encrypt.key-secret=sec0"],
        [["-c"], "encryption=on,encrypt.key-secret=sec0"],
        // img_convert's -c check comes before bdrv_create's option checks, after the -o parse.
        [["-c"], "encrypt.format=luks,encrypt.cipher-alg=foo"],
        [["-c"], "encrypt.format=xx"],
        [["-c"], "encryption=on,encrypt.format=luks"],
        [["-c"], "encrypt.format=luks,cluster_size=1000"],
        [["-c"], "encrypt.cipher-alg=aes-128"],
        [["-c"], "encrypt.format=luks,foo=bar"],
        [["-c"], "encryption=off,encrypt.format=luks"],
      ];
      for (const [extra, o] of cases) {
        const args = ["convert", ...OBJ, ...extra, "-f", "raw", "src.raw", "-O", "qcow2", "-o", o, "x.qcow2"];
        assertEquals(await instarHere(args, dir), asInstar(await qemuRetry(args, dir)), o);
        assert(await gone(dir, "x.qcow2"), `${o}: x.qcow2 left behind`);
      }
    });
  });

  Deno.test("measure -O qcow2 -o encrypt.*: qemu-img's numbers and words", async () => {
    await withTempDir("instar-q2out-", async (dir) => {
      await rawSource(dir, "src.raw");
      // Cases qemu-img answers without calibrating PBKDF2 (errors, and no LUKS), then the LUKS
      // numbers, which cost qemu-img seconds a run here: those under INSTAR_FULL_TESTS only.
      const quick = [
        ["--size", "1G", "-o", "encrypt.format=luks"],
        ["--size", "1G", "-o", "encrypt.format=luks,encrypt.key-secret=nope"],
        ["--size", "1G", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=foo"],
        ["--size", "1G", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=des"],
        ["--size", "1G", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=cast5-128"],
        ["--size", "1G", "-o", "encrypt.format=aes"],
        ["--size", "1G", "-o", "encryption=on"],
        ["--size", "1G", "-o", "encrypt.format=xx"],
        ["--size", "1G", "-o", "encrypt.cipher-alg=aes-128"],
      ];
      const slow = [
        ["-f", "raw", "src.raw", "-o", `${LUKS0},encrypt.cipher-alg=aes-128`],
        ["--size", "1G", "-o", `${LUKS0},cluster_size=512`],
        [
          "--size",
          "100M",
          "-o",
          `${LUKS0},encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,` +
          "encrypt.cipher-alg=twofish-256,preallocation=full,compat=0.10,cluster_size=2M",
        ],
        ["--size", "1G", "-o", `${LUKS0},encryption=on`],
      ];
      const outputs = [[], ["--output=json"]];
      for (const c of FULL_TESTS ? [...quick, ...slow] : quick) {
        for (const out of outputs) {
          const args = ["measure", ...OBJ, "-O", "qcow2", ...out, ...c];
          assertEquals(await instarHere(args, dir), asInstar(await qemuRetry(args, dir)), c.join(" "));
        }
      }
    });
  });

  Deno.test("convert to encrypted qcow2: the passphrase reaches no output, child argv or file", async () => {
    await withTempDir("instar-q2out-", async (dir) => {
      await rawSource(dir, "src.raw");
      const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
      const before = new Set(await smallFilesIn(tmp));
      const argvs: string[][] = [];
      const outs: Outcome[] = [];
      await recordingChildren(argvs, async () => {
        for (
          const o of [
            "encrypt.format=luks,encrypt.key-secret=sec0",
            "encrypt.format=aes,encrypt.key-secret=sec0",
          ]
        ) {
          outs.push(
            await instarHere(
              ["convert", ...OBJ, "-f", "raw", "src.raw", "-O", "qcow2", "-o", o, "o.qcow2"],
              dir,
            ),
          );
          outs.push(
            await instarHere([
              "convert",
              ...OBJ,
              "--image-opts",
              opened("o.qcow2"),
              "-O",
              "qcow2",
              "-o",
              "encrypt.format=luks,encrypt.key-secret=sec1",
              "o2.qcow2",
            ], dir),
          );
        }
      });
      assertEquals(outs.map((o) => o.code), [0, 0, 0, 0]);
      assertChildrenSeen(argvs);
      for (const a of argvs) {
        assert(!a.some((s) => s.includes(PW) || s.includes(PW2)), `passphrase in a child's argv: ${a[0]}`);
      }
      for (const o of outs) assert(![PW, PW2].some((p) => o.stdout.includes(p) || o.stderr.includes(p)));
      for (
        const f of [
          ...(await smallFilesIn(dir)),
          ...(await smallFilesIn(tmp)).filter((f) => !before.has(f)),
        ]
      ) {
        const b = new TextDecoder("latin1").decode(await Deno.readFile(f).catch(() => new Uint8Array(0)));
        assert(!b.includes(PW) && !b.includes(PW2), `${f} holds a passphrase`);
      }
    });
  });
}
