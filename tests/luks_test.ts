// LUKS1 sources against qemu-img 7.2: images made here by cryptsetup
// (luksFormat --type luks1, several ciphers and hashes) and by qemu-img
// create -f luks, filled through qemu-img convert -n --target-image-opts;
// then info (human and JSON), convert to raw (byte for byte), compare, and
// the open errors (wrong passphrase, missing key-secret, unknown secret)
// from instar and from qemu-img must be the same. The passphrase must show
// up in no output, no child's argv and no file the run leaves behind.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import {
  asInstar,
  assertSameHere,
  exec,
  haveQemuImg,
  instarHere,
  qemuImg,
  sh,
  withTempDir,
} from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { sweep } from "./support/full.ts";
import { assertChildrenSeen, recordingChildren } from "./support/qcrypt_compare.ts";
import {
  cryptsetupLuks1Image,
  haveCryptsetup,
  qemuLuksImage as qemuLuksImageWith,
} from "./support/luks_images.ts";

const PW = "instar-luks-pw-7d3e91";
const ready = haveQemuImg() && haveCryptsetup;

function qemuLuksImage(dir: string, name: string, size: string, opts: string): Promise<void> {
  return qemuLuksImageWith(dir, name, size, opts, PW);
}

/** Guest data with data, zero runs and a partial last chunk, written into the LUKS payload by qemu-img. */
async function fill(dir: string, name: string, bytes: number): Promise<void> {
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) data[i] = (i * 7 + (i >> 9)) & 0xff;
  data.fill(0, 64 * 1024, 512 * 1024); // a zero run the convert leaves sparse
  await Deno.writeFile(`${dir}/data.raw`, data);
  await sh(
    dir,
    "qemu-img",
    "convert",
    "-n",
    "-f",
    "raw",
    "--object",
    `secret,id=s,data=${PW}`,
    "--target-image-opts",
    "data.raw",
    `driver=luks,key-secret=s,file.filename=${name}`,
  );
}

const obj = ["--object", `secret,id=sec0,data=${PW}`];
const opts = (f: string) => ["--image-opts", `driver=luks,key-secret=sec0,file.filename=${f}`];

/** info, convert to raw and compare, each the same as qemu-img. */
async function sameAsQemu(dir: string, name: string): Promise<void> {
  await assertSameHere(["info", name], dir);
  await assertSameHere(["info", "--output=json", name], dir);
  await assertSameHere(["info", "-f", "luks", name], dir);
  await assertSameHere(["info", ...obj, ...opts(name)], dir);
  await assertSameHere(["map", "--output=json", ...obj, ...opts(name)], dir);
  await assertSameHere(["map", ...obj, ...opts(name)], dir);
  await assertSameHere(["check", ...obj, ...opts(name)], dir);
  await assertSameHere(["check", name], dir);
  const q = await qemuImg(["convert", ...obj, ...opts(name), "-O", "raw", "q.raw"], dir);
  assertEquals(q.code, 0, q.stderr);
  const i = await instarHere(["convert", ...obj, ...opts(name), "-O", "raw", "i.raw"], dir);
  assertEquals(i, asInstar(q), `convert ${name}`);
  const [a, b] = await Promise.all([Deno.readFile(`${dir}/q.raw`), Deno.readFile(`${dir}/i.raw`)]);
  assert(a.length === b.length && a.every((x, k) => x === b[k]), `${name}: decrypted bytes differ`);
  // A hole where qemu-img left one (zero detection).
  const [sq, si] = await Promise.all([Deno.stat(`${dir}/q.raw`), Deno.stat(`${dir}/i.raw`)]);
  assertEquals(si.blocks, sq.blocks, `${name}: allocation`);
  // With --image-opts the second operand is image options too: a plain name is a node reference.
  await assertSameHere(["compare", ...obj, ...opts(name), "q.raw"], dir);
  await assertSameHere(["compare", ...obj, ...opts(name), "driver=raw,file.filename=q.raw"], dir);
  await assertSameHere(["compare", ...obj, ...opts(name), "driver=raw,file.filename=data.raw"], dir);
}

if (ready) {
  await useHostedGuestsWithoutKvm();

  const CRYPTSETUP = [
    [],
    ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "128", "--hash", "sha1"],
    ["--cipher", "aes-cbc-plain", "--key-size", "256", "--hash", "sha512"],
    ["--cipher", "aes-xts-plain", "--key-size", "256", "--hash", "ripemd160"],
  ];
  for (const extra of CRYPTSETUP) {
    Deno.test(`cryptsetup luks1 ${extra.join(" ") || "(defaults)"}: info, convert, compare as qemu-img`, async () => {
      await withTempDir("instar-luks-", async (dir) => {
        await cryptsetupLuks1Image(dir, "c.img", 3 << 20, PW, extra);
        await fill(dir, "c.img", 1 << 20);
        await sameAsQemu(dir, "c.img");
      });
    });
  }

  // qemu-img create -f luks spends ~9 s calibrating PBKDF2 here: the default
  // run takes every 4th case (tests/support/full.ts), INSTAR_FULL_TESTS=1 all.
  const QEMU = sweep([
    ",cipher-alg=serpent-256,hash-alg=sha224",
    ",cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5",
    ",cipher-alg=aes-256,cipher-mode=ctr,hash-alg=sha384",
    ",cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=plain",
    ",cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
    ",cipher-alg=aes-256,cipher-mode=ecb",
    "",
  ], 4);
  for (const o of QEMU) {
    Deno.test(`qemu-img luks${o || " (defaults)"}: info, convert, compare as qemu-img`, async () => {
      await withTempDir("instar-luks-", async (dir) => {
        // 1 MiB plus a partial sector: the last sector is read whole, as qemu's total_sectors.
        await qemuLuksImage(dir, "q.luks", "1049000", o);
        await fill(dir, "q.luks", 1049000);
        await sameAsQemu(dir, "q.luks");
      });
    });
  }

  // --object secret,keyid=K,iv=IV: the passphrase AES-256-CBC wrapped with
  // another secret (libvirt passes secrets so). Wrapped here with node:crypto
  // and PKCS#7 padding; qemu-img unwraps the same objects as the oracle.
  Deno.test("wrapped secrets (keyid=, iv=) unlock as in qemu-img, and fail in its words", async () => {
    await withTempDir("instar-luks-", async (dir) => {
      await qemuLuksImage(dir, "q.luks", "1M", "");
      await fill(dir, "q.luks", 1 << 20);
      const key = crypto.getRandomValues(new Uint8Array(32));
      const iv = crypto.getRandomValues(new Uint8Array(16));
      const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));
      const wrap = (text: string, k = key) => {
        const c = createCipheriv("aes-256-cbc", k, iv);
        return b64(new Uint8Array([...c.update(new TextEncoder().encode(text)), ...c.final()]));
      };
      const K = `secret,id=k0,data=${b64(key)},format=base64`;
      const open = "driver=luks,key-secret=s0,file.filename=q.luks";
      const convert = (
        s: string,
        out: string,
      ) => ["convert", "--object", K, "--object", s, "--image-opts", open, "-O", "raw", out];
      const good = `secret,id=s0,data=${wrap(PW)},keyid=k0,iv=${b64(iv)},format=base64`;
      const q = await qemuImg(convert(good, "q.raw"), dir);
      assertEquals(q.code, 0, q.stderr);
      const i = await instarHere(convert(good, "i.raw"), dir);
      assertEquals(i, asInstar(q));
      assertEquals(await Deno.readFile(`${dir}/i.raw`), await Deno.readFile(`${dir}/q.raw`));
      const otherKey = crypto.getRandomValues(new Uint8Array(32));
      for (
        const s of [
          `secret,id=s0,data=${wrap(PW)},keyid=k0,format=base64`, // no IV
          `secret,id=s0,data=${wrap(PW)},keyid=k0,iv=AAAA,format=base64`, // 3-byte IV
          `secret,id=s0,data=${wrap(PW)},keyid=k0,iv=${b64(iv)}`, // raw format: 24 bytes of base64 text
          `secret,id=s0,data=${wrap(PW)},keyid=k0,iv=@@@@,format=base64`,
          `secret,id=s0,data=${wrap(PW, otherKey)},keyid=k0,iv=${b64(iv)},format=base64`, // padding off (or a wrong password)
          `secret,id=s0,data=${wrap("wrong")},keyid=k0,iv=${b64(iv)},format=base64`,
          `secret,id=s0,data=${wrap(PW)},keyid=nokey,iv=${b64(iv)},format=base64`,
          `secret,id=s0,data=${wrap(PW)},keyid=s9,iv=${b64(iv)},format=base64`,
        ]
      ) {
        await assertSameHere(convert(s, "x.raw"), dir);
      }
    });
  });

  Deno.test("LUKS open errors: wrong passphrase, no key-secret, unknown secret, ecb header", async () => {
    await withTempDir("instar-luks-", async (dir) => {
      await cryptsetupLuks1Image(dir, "c.img", 3 << 20, PW, []);
      const bad = ["--object", "secret,id=sec0,data=wrong"];
      for (
        const args of [
          ["convert", ...bad, ...opts("c.img"), "-O", "raw", "o.raw"],
          ["compare", ...bad, ...opts("c.img"), "driver=raw,file.filename=c.img"],
          ["convert", "-O", "raw", "c.img", "o.raw"],
          ["convert", "-f", "luks", "-O", "raw", "c.img", "o.raw"],
          ["compare", "c.img", "c.img"],
          // Commands that open with I/O and have no way to name a key-secret.
          ["measure", "-O", "qcow2", "c.img"],
          ["resize", "c.img", "+1M"],
          ["snapshot", "-l", "c.img"],
          ["amend", "-o", "size=1M", "c.img"],
          ["rebase", "-u", "-b", "", "c.img"],
          ["map", "c.img"],
          ["check", "c.img"],
          [
            "convert",
            ...obj,
            "--image-opts",
            "driver=luks,key-secret=nope,file.filename=c.img",
            "-O",
            "raw",
            "o.raw",
          ],
          [
            "convert",
            "--object",
            "secret,id=sec0,data=pw,format=base64",
            ...opts("c.img"),
            "-O",
            "raw",
            "o.raw",
          ],
        ]
      ) {
        await assertSameHere(args, dir);
      }
      // A qcow2 overlay on the LUKS image: the backing file has no key-secret to name.
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "c.img", "-F", "luks", "ov.qcow2");
      for (
        const cmd of [["convert", "-O", "raw", "ov.qcow2", "o.raw"], ["map", "ov.qcow2"], [
          "info",
          "--backing-chain",
          "ov.qcow2",
        ]]
      ) {
        await assertSameHere(cmd, dir);
      }
      // Nothing is left behind by the failed converts.
      assert(
        ![...Deno.readDirSync(dir)].some((e) => e.name.includes("o.raw")),
        "a failed convert left a file",
      );
      // cryptsetup's ecb: qemu refuses the mode string.
      await cryptsetupLuks1Image(dir, "e.img", 3 << 20, PW, ["--cipher", "aes-ecb", "--key-size", "256"]);
      await assertSameHere(["info", "e.img"], dir);
      await assertSameHere(["convert", ...obj, ...opts("e.img"), "-O", "raw", "o.raw"], dir);
      // The passphrase from a file, and base64.
      await Deno.writeTextFile(`${dir}/key`, PW);
      await assertSameHere(
        [
          "compare",
          "--object",
          "secret,id=sec0,file=key",
          ...opts("c.img"),
          "driver=luks,key-secret=sec0,file.filename=c.img",
        ],
        dir,
      );
      await assertSameHere(
        [
          "compare",
          "--object",
          `secret,id=sec0,data=${btoa(PW)},format=base64`,
          ...opts("c.img"),
          "driver=raw,file.filename=c.img",
        ],
        dir,
      );
    });
  });

  Deno.test("the passphrase reaches no output, no child's argv and no file left behind", async () => {
    await withTempDir("instar-luks-", async (dir) => {
      await cryptsetupLuks1Image(dir, "c.img", 3 << 20, PW, []);
      const start = Date.now();
      const argvs: string[][] = [];
      const outs: Awaited<ReturnType<typeof instarHere>>[] = [];
      await recordingChildren(argvs, async () => {
        outs.push(await instarHere(["convert", ...obj, ...opts("c.img"), "-O", "raw", "o.raw"], dir));
        outs.push(await instarHere(["convert", ...obj, ...opts("c.img"), "-O", "qcow2", "o.qcow2"], dir));
        outs.push(
          await instarHere(["compare", ...obj, ...opts("c.img"), "driver=raw,file.filename=o.raw"], dir),
        );
        outs.push(
          await instarHere([
            "convert",
            "--object",
            "secret,id=sec0,data=wrong" + PW,
            ...opts("c.img"),
            "-O",
            "raw",
            "x.raw",
          ], dir),
        );
        outs.push(await instarHere(["info", ...obj, ...opts("c.img")], dir));
      });
      assertChildrenSeen(argvs);
      for (const a of argvs) assert(!a.some((s) => s.includes(PW)), `passphrase in a child's argv: ${a[0]}`);
      for (const o of outs) assert(!o.stdout.includes(PW) && !o.stderr.includes(PW), "passphrase printed");
      assertEquals(outs.map((o) => o.code), [0, 0, 0, 1, 0]);
      // No file written during the run (the test directory, TMPDIR) holds it.
      const enc = new TextEncoder().encode(PW);
      const holds = (b: Uint8Array) => {
        outer: for (let i = 0; i + enc.length <= b.length; i++) {
          for (let j = 0; j < enc.length; j++) if (b[i + j] !== enc[j]) continue outer;
          return true;
        }
        return false;
      };
      for (const root of [dir, Deno.env.get("TMPDIR") ?? "/tmp"]) {
        for (const e of Deno.readDirSync(root)) {
          const p = `${root}/${e.name}`;
          let st;
          try {
            st = Deno.statSync(p);
          } catch {
            continue;
          }
          if (!st.isFile || (st.mtime?.getTime() ?? 0) < start - 1000 || st.size > 64 << 20) continue;
          let bytes;
          try {
            bytes = Deno.readFileSync(p);
          } catch {
            continue;
          }
          assert(!holds(bytes), `passphrase found in ${p}`);
        }
      }
    });
  });
}

Deno.test(
  "LUKS: qemu-img's own exit for the unreadable secret file",
  { ignore: !haveQemuImg() },
  async () => {
    await withTempDir("instar-luks-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "r.img", "1M");
      const q = await exec("qemu-img", ["info", "--object", "secret,id=s,file=missing", "r.img"], dir);
      assertEquals(
        await instarHere(["info", "--object", "secret,id=s,file=missing", "r.img"], dir),
        asInstar(q),
      );
    });
  },
);
