// Encrypted qcow2 sources against qemu-img 7.2: images made by qemu-img
// create -o encrypt.format=luks (tiny iter-time) and encrypt.format=aes, data
// written through qemu-io with the key; then info (human, JSON, --image-opts),
// convert to raw and qcow2 (byte for byte), compare, map, check and measure
// with --object secret and --image-opts, and the open errors (wrong or
// missing secret, encrypt.format against the header, commands without a way
// to name the key), each the same as qemu-img's. Hostile rows: the crypto
// header extension misaligned, too short for the LUKS header, cutting the key
// material, past the end of the file, a negative offset, and a data cluster
// overlapping the header clusters.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  asInstar,
  assertSameHere,
  CLI_ENTRY,
  DENO,
  haveQemuImg,
  instarHere,
  qemuImg,
  sh,
  withTempDir,
} from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { FULL_TESTS } from "./support/full.ts";

const PW = "qcow2-crypt-pw";
// Longer than AES's 16 key bytes: qemu keys AES with the first 16.
const AES_PW = "qcow2-aes-passphrase-0123456789";
const obj = (pw: string) => ["--object", `secret,id=sec0,data=${pw}`];
const opts = (
  f: string,
  extra = "",
) => ["--image-opts", `driver=qcow2,encrypt.key-secret=sec0${extra},file.filename=${f}`];

/** qemu-img create of an encrypted qcow2; LUKS's PBKDF2 calibration fails at random here, so it is retried. */
async function qemuEncrypted(dir: string, name: string, format: "luks" | "aes", pw: string, extra = "") {
  let last = "";
  for (let i = 0; i < 8; i++) {
    const o = `encrypt.format=${format},encrypt.key-secret=s${
      format === "luks" ? ",encrypt.iter-time=10" : ""
    }${extra}`;
    const r = await qemuImg([
      "create",
      "-q",
      "-f",
      "qcow2",
      "--object",
      `secret,id=s,data=${pw}`,
      "-o",
      o,
      name,
      "4M",
    ], dir);
    if (r.code === 0) return;
    last = r.stderr;
  }
  throw new Error(`qemu-img create ${format}: ${last}`);
}

/** Data runs, a partial sector, zeroes written, and unallocated space, written with the key by qemu-io. */
async function fill(dir: string, name: string, pw: string) {
  await sh(
    dir,
    "qemu-io",
    "--object",
    `secret,id=s,data=${pw}`,
    "--image-opts",
    `driver=qcow2,encrypt.key-secret=s,file.filename=${name}`,
    "-c",
    "write -P 0x5a 0 192k",
    "-c",
    "write -P 0x33 1049088 3000",
    "-c",
    "write -z 2M 64k",
    "-c",
    "write -P 0xc1 3276800 70000",
  );
}

async function sameFile(dir: string, a: string, b: string) {
  const [x, y] = await Promise.all([Deno.readFile(`${dir}/${a}`), Deno.readFile(`${dir}/${b}`)]);
  assert(x.length === y.length && x.every((v, k) => v === y[k]), `${a} and ${b} differ`);
}

/** convert with instar and with qemu-img: the same output and the same bytes written (raw), or
 * the same contents and a clean image (qcow2: its layout differs by design, docs/convert.md). */
async function sameConvert(dir: string, args: string[], out: string) {
  const q = await qemuImg([...args, `q_${out}`], dir);
  const i = await instarHere([...args, `i_${out}`], dir);
  assertEquals(i, asInstar(q), `convert ${args.join(" ")}`);
  if (q.code !== 0) return;
  if (!out.endsWith(".qcow2")) return await sameFile(dir, `q_${out}`, `i_${out}`);
  const c = await qemuImg(["compare", "-s", `q_${out}`, `i_${out}`], dir);
  assertEquals(c.code, 0, `compare: ${c.stdout}${c.stderr}`);
  const k = await qemuImg(["check", `i_${out}`], dir);
  assertEquals(k.code, 0, `check: ${k.stdout}${k.stderr}`);
}

/** Everything a reader of an encrypted image `name` prints, against qemu-img. */
async function sameAsQemu(dir: string, name: string, pw: string) {
  const o = obj(pw), io = opts(name);
  await assertSameHere(["info", name], dir);
  await assertSameHere(["info", "--output=json", name], dir);
  await assertSameHere(["info", ...o, ...io], dir);
  await assertSameHere(["info", "--output=json", ...o, ...io], dir);
  await sameConvert(dir, ["convert", ...o, ...io, "-O", "raw"], "o.raw");
  await sameConvert(dir, ["convert", ...o, ...io, "-O", "qcow2"], "o.qcow2");
  await assertSameHere(["compare", ...o, ...io, "driver=raw,file.filename=q_o.raw"], dir);
  await assertSameHere(["compare", ...o, ...io, "driver=qcow2,file.filename=q_o.qcow2"], dir);
  await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "z.raw", "4M");
  await assertSameHere(["compare", ...o, ...io, "driver=raw,file.filename=z.raw"], dir);
  await assertSameHere(["map", ...o, ...io], dir);
  await assertSameHere(["map", "--output=json", ...o, ...io], dir);
  await assertSameHere(["check", ...o, ...io], dir);
  await assertSameHere(["check", "--output=json", ...o, ...io], dir);
  await assertSameHere(["measure", "-O", "qcow2", ...o, ...io], dir);
  await assertSameHere(["measure", "-O", "raw", "--output=json", ...o, ...io], dir);
}

/** The full-disk-encryption header extension's fields (offset, length) and where they are. */
function cryptoExtension(b: Uint8Array): { at: number; offset: bigint; length: bigint } {
  const dv = new DataView(b.buffer, b.byteOffset);
  let off = dv.getUint32(100);
  for (;;) {
    const magic = dv.getUint32(off), len = dv.getUint32(off + 4);
    if (magic === 0) throw new Error("no crypto header extension");
    if (magic === 0x0537be77) {
      return { at: off + 8, offset: dv.getBigUint64(off + 8), length: dv.getBigUint64(off + 16) };
    }
    off += 8 + ((len + 7) & ~7);
  }
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("encrypt.format=luks qcow2: info, convert, compare, map, check, measure as qemu-img", async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await qemuEncrypted(dir, "l.qcow2", "luks", PW);
      await fill(dir, "l.qcow2", PW);
      await sameAsQemu(dir, "l.qcow2", PW);
    });
  });

  // Another cipher and IV generator, small clusters: with INSTAR_FULL_TESTS=1 (tests/support/full.ts).
  Deno.test({
    name: "encrypt.format=luks qcow2 with serpent-cbc-essiv and 4 KiB clusters",
    ignore: !FULL_TESTS,
  }, async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await qemuEncrypted(
        dir,
        "l.qcow2",
        "luks",
        PW,
        ",encrypt.cipher-alg=serpent-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv," +
          "encrypt.ivgen-hash-alg=sha256,cluster_size=4096",
      );
      await fill(dir, "l.qcow2", PW);
      await sameAsQemu(dir, "l.qcow2", PW);
    });
  });

  Deno.test("encrypt.format=aes qcow2 (legacy): info, convert, compare, map, check, measure as qemu-img", async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await qemuEncrypted(dir, "a.qcow2", "aes", AES_PW);
      await fill(dir, "a.qcow2", AES_PW);
      await sameAsQemu(dir, "a.qcow2", AES_PW);
      // To stdout (the stream writer's guests get the passphrase too).
      const piped = await new Deno.Command(DENO, {
        args: ["run", "-A", CLI_ENTRY, "convert", ...obj(AES_PW), ...opts("a.qcow2"), "-O", "raw", "-"],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(new TextDecoder().decode(piped.stderr), "");
      const want = await Deno.readFile(`${dir}/q_o.raw`);
      assert(
        piped.stdout.length === want.length && piped.stdout.every((v, k) => v === want[k]),
        "stdout differs",
      );
      // Any passphrase is an AES key: a wrong one reads as qemu reads it (garbage, the same garbage).
      await sameConvert(dir, ["convert", ...obj("wrong"), ...opts("a.qcow2"), "-O", "raw"], "w.raw");
    });
  });

  Deno.test("compat=0.10 encrypted qcow2 (AES and LUKS): info and convert", async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await qemuEncrypted(dir, "a2.qcow2", "aes", AES_PW, ",compat=0.10");
      await qemuEncrypted(dir, "l2.qcow2", "luks", PW, ",compat=0.10");
      for (const [f, pw] of [["a2.qcow2", AES_PW], ["l2.qcow2", PW]]) {
        await fill(dir, f, pw);
        await assertSameHere(["info", f], dir);
        await assertSameHere(["info", "--output=json", f], dir);
        await sameConvert(dir, ["convert", ...obj(pw), ...opts(f), "-O", "raw"], `${f}.raw`);
      }
    });
  });

  Deno.test("encrypted qcow2 over a plain backing file, and a plain overlay over an encrypted one", async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M");
      await sh(dir, "qemu-io", "-c", "write -P 0x11 0 4M", "base.qcow2");
      for (let i = 0;; i++) {
        const r = await qemuImg([
          "create",
          "-q",
          "-f",
          "qcow2",
          "--object",
          `secret,id=s,data=${PW}`,
          "-o",
          "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10",
          "-b",
          "base.qcow2",
          "-F",
          "qcow2",
          "top.qcow2",
        ], dir);
        if (r.code === 0) break;
        if (i === 7) throw new Error(`qemu-img create: ${r.stderr}`);
      }
      await fill(dir, "top.qcow2", PW);
      await assertSameHere(["info", "--backing-chain", "top.qcow2"], dir);
      await sameConvert(dir, ["convert", ...obj(PW), ...opts("top.qcow2"), "-O", "raw"], "t.raw");
      await assertSameHere(["map", "--output=json", ...obj(PW), ...opts("top.qcow2")], dir);
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "ov.qcow2");
      for (
        const args of [
          ["convert", "-O", "raw", "ov.qcow2", "o.raw"],
          ["map", "ov.qcow2"],
          ["check", "ov.qcow2"],
          ["commit", "ov.qcow2"],
          ["compare", "ov.qcow2", "base.qcow2"],
          ["info", "--backing-chain", "ov.qcow2"],
        ]
      ) {
        await assertSameHere(args, dir);
      }
    });
  });

  Deno.test("encrypted qcow2 open errors in qemu-img's words", async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await qemuEncrypted(dir, "l.qcow2", "luks", PW);
      await qemuEncrypted(dir, "a.qcow2", "aes", AES_PW);
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "p.qcow2", "4M");
      for (const f of ["l.qcow2", "a.qcow2"]) {
        for (
          const args of [
            ["convert", ...obj("wrong"), ...opts(f), "-O", "raw", "o.raw"],
            ["convert", "-O", "raw", f, "o.raw"],
            ["convert", "-f", "qcow2", "-O", "raw", f, "o.raw"],
            ["convert", "--image-opts", `driver=qcow2,file.filename=${f}`, "-O", "raw", "o.raw"],
            [
              "convert",
              ...obj(PW),
              ...opts(f).slice(0, 1),
              `driver=qcow2,encrypt.key-secret=nope,file.filename=${f}`,
              "-O",
              "raw",
              "o.raw",
            ],
            ["convert", ...obj(PW), ...opts(f, ",encrypt.format=luks"), "-O", "raw", "o.raw"],
            ["convert", ...obj(PW), ...opts(f, ",encrypt.format=aes"), "-O", "raw", "o.raw"],
            ["info", "--image-opts", `driver=qcow2,file.filename=${f},encrypt.format=luks`],
            ["info", "--image-opts", `driver=qcow2,file.filename=${f},encrypt.key-secret=nope`],
            ["compare", f, f],
            ["compare", ...obj("wrong"), ...opts(f), "driver=raw,file.filename=o.raw"],
            ["map", f],
            ["check", f],
            ["measure", "-O", "qcow2", f],
            ["resize", f, "+1M"],
            ["snapshot", "-l", f],
            ["amend", "-o", "lazy_refcounts=on", f],
            ["rebase", "-u", "-b", "", f],
            ["rebase", "-b", "p.qcow2", "-F", "qcow2", f],
            ["commit", f],
            ["dd", `if=${f}`, "of=o.raw"],
            ["bitmap", "--add", f, "b0"],
            ["convert", "-n", "-O", "qcow2", "p.qcow2", f],
          ]
        ) {
          await assertSameHere(args, dir);
        }
      }
      await assertSameHere(
        ["info", "--image-opts", "driver=qcow2,file.filename=p.qcow2,encrypt.format=luks"],
        dir,
      );
    });
  });

  Deno.test("hostile crypto header extensions: the same refusal or the same bytes as qemu-img", async () => {
    await withTempDir("instar-qcrypt-", async (dir) => {
      await qemuEncrypted(dir, "l.qcow2", "luks", PW);
      await fill(dir, "l.qcow2", PW);
      const orig = await Deno.readFile(`${dir}/l.qcow2`);
      const ext = cryptoExtension(orig);
      const rows: [string, (b: Uint8Array, dv: DataView) => void][] = [
        ["offset not cluster aligned", (_b, dv) => dv.setBigUint64(ext.at, ext.offset + 512n)],
        ["length shorter than the LUKS header", (_b, dv) => dv.setBigUint64(ext.at + 8, 500n)],
        ["length cutting the key material", (_b, dv) => dv.setBigUint64(ext.at + 8, 5096n)],
        ["length 2^64-1", (_b, dv) => dv.setBigUint64(ext.at + 8, 0xffffffffffffffffn)],
        ["offset past the end of the file", (_b, dv) => dv.setBigUint64(ext.at, 1n << 40n)],
        ["offset 2^63", (_b, dv) => dv.setBigUint64(ext.at, 1n << 63n)],
        ["a data cluster overlapping the header clusters", (_b, dv) => {
          const l1 = Number(dv.getBigUint64(40));
          const l2 = Number(dv.getBigUint64(l1) & 0x00fffffffffffe00n);
          dv.setBigUint64(l2, ext.offset | (1n << 63n));
        }],
      ];
      let n = 0;
      for (const [label, mutate] of rows) {
        const name = `h${n++}.qcow2`;
        const b = orig.slice();
        mutate(b, new DataView(b.buffer));
        await Deno.writeFile(`${dir}/${name}`, b);
        await assertSameHere(["info", name], dir);
        await assertSameHere(["check", ...obj(PW), ...opts(name)], dir);
        await assertSameHere(["map", "--output=json", ...obj(PW), ...opts(name)], dir);
        await sameConvert(dir, ["convert", ...obj(PW), ...opts(name), "-O", "raw"], `${name}.raw`);
        assert(label.length > 0);
      }
      // crypt_method 1 (AES) with the LUKS header extension.
      const aes = orig.slice();
      new DataView(aes.buffer).setUint32(32, 1);
      await Deno.writeFile(`${dir}/aes-ext.qcow2`, aes);
      await assertSameHere(["info", "aes-ext.qcow2"], dir);
      // crypt_method 2 without the extension: qemu-img 7.2's info crashes
      // (SIGSEGV in qcow2_refresh_limits); instar gives qemu's I/O-open message.
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "p.qcow2", "4M");
      const p = await Deno.readFile(`${dir}/p.qcow2`);
      new DataView(p.buffer).setUint32(32, 2);
      await Deno.writeFile(`${dir}/noext.qcow2`, p);
      for (
        const args of [["info", "noext.qcow2"], [
          "convert",
          ...obj(PW),
          ...opts("noext.qcow2"),
          "-O",
          "raw",
          "o.raw",
        ]]
      ) {
        const r = await instarHere(args, dir);
        assertEquals(r.code, 1);
        assert(r.stderr.endsWith(": Missing CRYPTO header for crypt method 2\n"), r.stderr);
      }
    });
  });
}
