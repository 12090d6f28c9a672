// LUKS2 sources (docs/encryption.md): qemu-img 7.2 has no LUKS2 reader, so
// the oracle is independent tools. cryptsetup makes the images, both by
// luksFormat (PBKDF2, Argon2id, Argon2i key slots) and by its offline
// `reencrypt --encrypt`, which encrypts known plaintext itself; the
// luksFormat payloads are filled with known plaintext encrypted by
// python3-cryptography (AES-XTS/CBC with the volume key cryptsetup dumps).
// instar's convert -O raw must give back that plaintext, its qcow2 output
// must equal it to qemu-img compare, and compare must agree. Hostile
// headers (checksum, JSON depth and size, areas past the end of the file,
// stripes, KDF costs) fail with one clear line, quickly.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, haveQemuImg, instarHere, type Outcome, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { cryptsetupReencryptLuks2 } from "./support/luks_images.ts";
import { sweep } from "./support/full.ts";
import { run } from "../lib/cli/run.ts";

const PW = "instar-luks2-pw-5c41";
const MiB = 1 << 20;

function have(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}
const ready = haveQemuImg() && have("cryptsetup", ["--version"]) &&
  have("python3", ["-c", "import cryptography.hazmat.primitives.ciphers"]);

const obj = ["--object", "secret,id=sec0,file=key"];
const opts = (f: string) => ["--image-opts", `driver=luks,key-secret=sec0,file.filename=${f}`];

/** Deterministic plaintext with a zero run. */
function pattern(bytes: number): Uint8Array {
  const d = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) d[i] = (i * 13 + (i >> 11)) & 0xff;
  d.fill(0, 256 * 1024, 768 * 1024);
  return d;
}

async function cryptsetup(dir: string, args: string[]): Promise<string> {
  const r = await exec("cryptsetup", [...args, "-q", "--batch-mode", "--key-file", "key"], dir);
  if (r.code !== 0) throw new Error(`cryptsetup ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** luksDump's facts the checks use. */
async function dump(dir: string, name: string) {
  const out = (await exec("cryptsetup", ["luksDump", name], dir)).stdout;
  const seg = out.slice(out.indexOf("Data segments:"));
  return {
    uuid: /UUID:\s+(\S+)/.exec(out)![1],
    offset: BigInt(/offset:\s+(\d+)/.exec(seg)![1]),
    sector: Number(/sector:\s+(\d+)/.exec(seg)![1]),
    cipher: /cipher:\s+(\S+)/.exec(seg)![1],
  };
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function instarOk(args: string[], dir: string): Promise<Outcome> {
  const r = await instarHere(args, dir);
  assertEquals(r.code, 0, `instar ${args.join(" ")}: ${r.stderr}`);
  return r;
}

/**
 * convert -O raw gives `plain` (the first plain.length bytes; `length` in
 * all), info reports the header as cryptsetup does, -O qcow2 equals the raw
 * to qemu-img, and compare agrees with raw and qcow2.
 */
async function readsAs(
  dir: string,
  name: string,
  plain: Uint8Array,
  length: number,
  full = true,
): Promise<void> {
  const d = await dump(dir, name);
  const info = JSON.parse((await instarOk(["info", "--output=json", ...obj, ...opts(name)], dir)).stdout);
  assertEquals(info["format"], "luks");
  assertEquals(info["virtual-size"], length);
  assertEquals(info["encrypted"], true);
  const data = info["format-specific"]["data"];
  assertEquals(info["format-specific"]["type"], "luks");
  assertEquals(data["uuid"], d.uuid);
  assertEquals(data["payload-offset"], Number(d.offset));
  assertEquals(data["detached-header"], false);
  assertEquals(
    `${data["cipher-alg"].split("-")[0]}-${data["cipher-mode"]}-${data["ivgen-alg"]}`,
    d.cipher.replace(/:.*/, ""),
  );
  assertEquals(data["slots"][0]["active"], true);
  assertEquals(data["slots"][0]["stripes"], 4000);
  // the human form too, with -f luks (no key needed for info)
  const human = (await instarOk(["info", "-f", "luks", name], dir)).stdout;
  assert(human.includes("file format: luks\n") && human.includes("encrypted: yes\n"), human);

  await instarOk(["convert", ...obj, ...opts(name), "-O", "raw", "i.raw"], dir);
  const out = await Deno.readFile(`${dir}/i.raw`);
  assertEquals(out.length, length);
  assert(same(out.subarray(0, plain.length), plain), `${name}: decrypted bytes differ from the plaintext`);
  // Each run below unlocks again (Argon2 costs): the Argon2 cases check the raw comparison only.
  if (!full) {
    const c = await instarHere(["compare", ...obj, ...opts(name), "driver=raw,file.filename=i.raw"], dir);
    assertEquals(c, { code: 0, stdout: "Images are identical.\n", stderr: "" });
    return;
  }
  await instarOk(["convert", ...obj, ...opts(name), "-O", "qcow2", "i.qcow2"], dir);
  const q = await qemuImg(["compare", "-f", "raw", "-F", "qcow2", "i.raw", "i.qcow2"], dir);
  assertEquals(q.code, 0, q.stdout + q.stderr);
  for (const other of ["driver=raw,file.filename=i.raw", "driver=qcow2,file.filename=i.qcow2"]) {
    const c = await instarHere(["compare", ...obj, ...opts(name), other], dir);
    assertEquals(c, { code: 0, stdout: "Images are identical.\n", stderr: "" }, other);
  }
}

/** python3-cryptography encrypts `plain` into the payload with the volume key cryptsetup dumps. */
async function fillWithPython(dir: string, name: string, plain: Uint8Array): Promise<void> {
  await Deno.writeFile(`${dir}/plain.bin`, plain);
  const out = await cryptsetup(dir, ["luksDump", "--dump-volume-key", name]);
  const key = /MK dump:([\s0-9a-f]+)/.exec(out)![1].replace(/\s/g, "");
  const d = await dump(dir, name);
  const script = `
import sys, hashlib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex(sys.argv[1]); off = int(sys.argv[2]); ss = int(sys.argv[3]); spec = sys.argv[4]
plain = open("plain.bin", "rb").read()
f = open(sys.argv[5], "r+b")
for i in range(0, len(plain), ss):
    n = i // 512  # dm-crypt counts IVs in 512-byte units
    if spec == "aes-xts-plain64":
        c = Cipher(algorithms.AES(key), modes.XTS(n.to_bytes(16, "little"))).encryptor()
    elif spec == "aes-cbc-essiv:sha256":
        e = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB()).encryptor()
        iv = e.update(n.to_bytes(16, "little")) + e.finalize()
        c = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    else:
        raise SystemExit("no cipher " + spec)
    f.seek(off + i)
    f.write(c.update(plain[i:i + ss]) + c.finalize())
`;
  await sh(dir, "python3", "-c", script, key, String(d.offset), String(d.sector), d.cipher, name);
}

const PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
const ARGON2ID = ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4"];
const ARGON2I = ["--pbkdf", "argon2i", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4"];

/** A 4 MiB luksFormat image with its data at 2 MiB (a file: 4096-byte sectors). */
async function formatted(dir: string, name: string, extra: string[]): Promise<void> {
  await Deno.writeFile(`${dir}/${name}`, new Uint8Array(0));
  await Deno.truncate(`${dir}/${name}`, 4 * MiB);
  await cryptsetup(dir, ["luksFormat", "--type", "luks2", "--offset", "4096", ...extra, name]);
}

/** Rewrites both header copies' JSON (and their checksums), as a hostile image would. */
async function rewriteJson(path: string, edit: (json: string) => string, hdrSize?: bigint): Promise<void> {
  const f = await Deno.readFile(path);
  const view = new DataView(f.buffer);
  const size = Number(view.getBigUint64(8));
  // A new size: the primary copy alone (the secondary is then not where the primary says).
  for (const off of hdrSize ? [0] : [0, size]) {
    const area = f.subarray(off + 4096, off + size);
    const end = area.indexOf(0);
    const json = edit(new TextDecoder().decode(area.subarray(0, end < 0 ? area.length : end)));
    const bytes = new TextEncoder().encode(json);
    const newSize = Number(hdrSize ?? BigInt(size));
    const copy = new Uint8Array(newSize);
    copy.set(f.subarray(off, off + 4096));
    copy.set(bytes.subarray(0, newSize - 4096), 4096);
    new DataView(copy.buffer).setBigUint64(8, BigInt(newSize));
    copy.fill(0, 448, 512);
    const sum = new Uint8Array(await crypto.subtle.digest("SHA-256", copy));
    copy.set(sum, 448);
    f.set(copy.subarray(0, Math.min(newSize, f.length - off)), off);
  }
  await Deno.writeFile(path, f);
}

async function instarFails(
  args: string[],
  dir: string,
  message: string,
  env?: Record<string, string>,
  exit = 1,
) {
  let stdout = "", stderr = "";
  const t0 = performance.now();
  const code = await run(args, {
    out: (t) => (stdout += t),
    err: (t) => (stderr += t),
    context: { cwd: dir, env: env ?? {} },
  });
  assertEquals(
    { code, stdout, stderr },
    { code: exit, stdout: "", stderr: `instar: ${message}\n` },
    args.join(" "),
  );
  assert(performance.now() - t0 < 20000, "a hostile header must fail quickly");
}

if (ready) {
  await useHostedGuestsWithoutKvm();

  // Every second case by default (tests/support/full.ts); together they cover PBKDF2, Argon2id and
  // Argon2i, 512- and 4096-byte sectors, xts and cbc-essiv.
  const REENCRYPT = sweep<[string, string[]]>([
    ["pbkdf2, aes-xts-plain64, 512-byte sectors", PBKDF2],
    ["pbkdf2, aes-cbc-essiv:sha256", ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", ...PBKDF2]],
    ["argon2id, 4096-byte sectors", ["--sector-size", "4096", ...ARGON2ID]],
    ["argon2i, aes-xts-plain64 256-bit", ["--cipher", "aes-xts-plain64", "--key-size", "256", ...ARGON2I]],
  ], 2);
  for (const [what, extra] of REENCRYPT) {
    Deno.test(`LUKS2 by cryptsetup reencrypt --encrypt (${what}): convert, compare, info`, async () => {
      await withTempDir("instar-luks2-", async (dir) => {
        await Deno.writeTextFile(`${dir}/key`, PW);
        const plain = pattern(6 * MiB);
        await Deno.writeFile(`${dir}/e.img`, plain);
        // Data moves 1 MiB up: the first 4 MiB of the plaintext survive, encrypted by cryptsetup.
        await cryptsetupReencryptLuks2(dir, "e.img", extra);
        await readsAs(dir, "e.img", plain.subarray(0, 4 * MiB), 5 * MiB, !extra.includes("argon2i"));
      });
    });
  }

  const FORMAT = sweep<[string, string[]]>([
    ["pbkdf2", PBKDF2],
    ["argon2id", ARGON2ID],
    ["argon2i, aes-cbc-essiv:sha256", ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", ...ARGON2I]],
  ], 2);
  for (const [what, extra] of FORMAT) {
    Deno.test(`LUKS2 by cryptsetup luksFormat (${what}), data by python3-cryptography: convert, compare`, async () => {
      await withTempDir("instar-luks2-", async (dir) => {
        await Deno.writeTextFile(`${dir}/key`, PW);
        await formatted(dir, "f.img", extra);
        const plain = pattern(2 * MiB);
        await fillWithPython(dir, "f.img", plain);
        await readsAs(dir, "f.img", plain, 2 * MiB, extra === PBKDF2);
      });
    });
  }

  Deno.test("LUKS2 open errors: wrong passphrase, no key-secret, probing, qemu-img's -f raw", async () => {
    await withTempDir("instar-luks2-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      await Deno.writeTextFile(`${dir}/bad`, "wrong");
      await formatted(dir, "f.img", PBKDF2);
      const bad = ["--object", "secret,id=sec0,file=bad"];
      const who = "driver=luks,key-secret=sec0,file.filename=f.img";
      const wrong = `Could not open '${who}': Invalid password, cannot unlock any keyslot`;
      await instarFails(["convert", ...bad, ...opts("f.img"), "-O", "raw", "o.raw"], dir, wrong);
      assert(!(await exists(`${dir}/o.raw`)), "nothing half-written");
      await instarFails(
        ["compare", ...bad, ...opts("f.img"), "driver=raw,file.filename=f.img"],
        dir,
        wrong,
        {},
        2,
      );
      await instarFails(
        ["convert", "-f", "luks", "-O", "raw", "f.img", "o.raw"],
        dir,
        "Could not open 'f.img': Parameter 'key-secret' is required for cipher",
      );
      // qemu-img 7.2 probes a LUKS2 header as raw; instar refuses the LUKS signature without -f raw.
      await instarFails(
        ["info", "f.img"],
        dir,
        "Could not open 'f.img': Refusing to read a file with a luks signature as raw " +
          "(use -f raw or --unsafe-quirks to read it anyway)",
      );
      const q = await qemuImg(["info", "-f", "raw", "f.img"], dir);
      assertEquals(await instarHere(["info", "-f", "raw", "f.img"], dir), q);
    });
  });

  Deno.test("LUKS2 hostile headers: clear errors, quickly", async () => {
    await withTempDir("instar-luks2-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      await formatted(dir, "p.img", PBKDF2);
      await formatted(dir, "a.img", ARGON2ID);
      const rows: [string, string, (p: string) => Promise<void>, string][] = [
        ["p.img", "flipped JSON byte", async (p) => {
          const f = await Deno.readFile(p);
          f[4096 + 10] ^= 1;
          f[16384 + 4096 + 10] ^= 1;
          await Deno.writeFile(p, f);
        }, "LUKS2 header is corrupted (primary: checksum mismatch, secondary: checksum mismatch)"],
        [
          "p.img",
          "deep JSON",
          (p) => rewriteJson(p, () => `{"a":${"[".repeat(5000)}${"]".repeat(5000)}}`),
          "LUKS2 metadata nests deeper than 16 levels",
        ],
        [
          "p.img",
          "long JSON",
          (p) => rewriteJson(p, () => `{"a":[${"0,".repeat(30000)}0]}`, 65536n),
          "LUKS2 metadata has more than 16384 JSON values",
        ],
        [
          "p.img",
          "trailing comma",
          (p) => rewriteJson(p, () => '{"a":1,}'),
          "LUKS2 metadata is not valid JSON (byte 7 of the JSON area)",
        ],
        [
          "p.img",
          "JSON filling its area",
          (p) => rewriteJson(p, () => '{"a":"'.padEnd(20000, "x")),
          "LUKS2 metadata is not valid JSON (byte 5 of the JSON area)",
        ],
        [
          "p.img",
          "stripes",
          (p) => rewriteJson(p, (j) => j.replace('"stripes":4000', '"stripes":4000000000')),
          "LUKS2 metadata is invalid: keyslot 0: af stripes is not 4000",
        ],
        [
          "p.img",
          "area past EOF",
          (p) => Deno.truncate(p, 20480),
          "LUKS2 key slot 0 area lies past the end of the file",
        ],
        [
          "p.img",
          "pbkdf2 iterations",
          (p) => rewriteJson(p, (j) => j.replace('"iterations":1000', '"iterations":4000000000')),
          "LUKS2 key slot 0 asks for 4000000000 PBKDF2 iterations, more than instar allows (INSTAR_MAX_KDF_ITERS raises the limit)",
        ],
        [
          "a.img",
          "argon2 memory",
          (p) => rewriteJson(p, (j) => j.replace('"memory":32768', '"memory":4194304')),
          "LUKS2 key slot 0 asks for 4194304 KiB of Argon2 memory, more than instar allows (--max-guest-memory raises the limit)",
        ],
        [
          "a.img",
          "argon2 passes",
          (p) => rewriteJson(p, (j) => j.replace('"time":4', '"time":400000')),
          "LUKS2 key slot 0 asks for 400000 Argon2 passes over its memory, more than instar allows",
        ],
      ];
      for (const [src, what, spoil, message] of rows) {
        await Deno.copyFile(`${dir}/${src}`, `${dir}/h.img`);
        await spoil(`${dir}/h.img`);
        // info needs no key: header and metadata errors show there; KDF costs only when unlocking
        const who = "driver=luks,key-secret=sec0,file.filename=h.img";
        await instarFails(
          ["convert", ...obj, ...opts("h.img"), "-O", "raw", "o.raw"],
          dir,
          `Could not open '${who}': ${message}`,
        );
        assert(!(await exists(`${dir}/o.raw`)), what);
      }
      // a fixed segment size: the disk is that long (and must lie in the file)
      await Deno.copyFile(`${dir}/p.img`, `${dir}/h.img`);
      await rewriteJson(`${dir}/h.img`, (j) => j.replace('"size":"dynamic"', '"size":"1048576"'));
      await instarOk(["convert", ...obj, ...opts("h.img"), "-O", "raw", "fixed.raw"], dir);
      await instarOk(["convert", ...obj, ...opts("p.img"), "-O", "raw", "dyn.raw"], dir);
      const [fixed, dyn] = await Promise.all([
        Deno.readFile(`${dir}/fixed.raw`),
        Deno.readFile(`${dir}/dyn.raw`),
      ]);
      assert(
        fixed.length === MiB && dyn.length === 2 * MiB && same(fixed, dyn.subarray(0, MiB)),
        "fixed size",
      );
      await rewriteJson(`${dir}/h.img`, (j) => j.replace('"size":"1048576"', '"size":"4194304"'));
      await instarFails(
        ["info", "-f", "luks", "h.img"],
        dir,
        "Could not open 'h.img': LUKS2 data segment lies past the end of the file",
      );
      // the primary copy alone spoiled: the secondary opens
      await Deno.copyFile(`${dir}/p.img`, `${dir}/h.img`);
      const f = await Deno.readFile(`${dir}/h.img`);
      f[4096 + 10] ^= 1;
      await Deno.writeFile(`${dir}/h.img`, f);
      await instarOk(["convert", ...obj, ...opts("h.img"), "-O", "raw", "o.raw"], dir);
      // the Argon2 limit is a knob (the environment's, here): 16 MiB refuses a 32 MiB key slot
      await instarFails(
        ["convert", ...obj, ...opts("a.img"), "-O", "raw", "o2.raw"],
        dir,
        "Could not open 'driver=luks,key-secret=sec0,file.filename=a.img': LUKS2 key slot 0 asks for 32768 KiB " +
          "of Argon2 memory, more than instar allows (--max-guest-memory raises the limit)",
        { INSTAR_MAX_KDF_MEMORY: "16384" },
      );
      // Two key slots, 32 and 64 MiB: with --max-guest-memory 72M (40 MiB of Argon2 memory) the guest
      // gets RAM for the first and refuses the second when it comes to it (its heap cannot hold it);
      // the first still unlocks.
      await Deno.copyFile(`${dir}/a.img`, `${dir}/two.img`);
      await Deno.writeTextFile(`${dir}/key2`, "other-passphrase");
      await cryptsetup(dir, [
        "luksAddKey",
        ...ARGON2ID.slice(0, 2),
        "--pbkdf-memory",
        "65536",
        "--pbkdf-force-iterations",
        "4",
        "two.img",
        "key2",
      ]);
      const limit = ["--max-guest-memory", "72M"];
      await instarFails(
        [
          "convert",
          ...limit,
          "--object",
          "secret,id=sec0,file=key2",
          ...opts("two.img"),
          "-O",
          "raw",
          "o3.raw",
        ],
        dir,
        "Could not open 'driver=luks,key-secret=sec0,file.filename=two.img': LUKS2 key slot 1 asks for 65536 KiB " +
          "of Argon2 memory, more than instar allows (--max-guest-memory raises the limit)",
      );
      let err = "";
      const code = await run(["convert", ...limit, ...obj, ...opts("two.img"), "-O", "raw", "o3.raw"], {
        out: () => {},
        err: (t) => (err += t),
        context: { cwd: dir, env: {} },
      });
      assertEquals({ code, err }, { code: 0, err: "" });
      // Out of range: a usage error before anything is opened.
      for (const v of ["63M", "2G", "x"]) {
        let e = "";
        const c = await run([
          "convert",
          "--max-guest-memory",
          v,
          ...obj,
          ...opts("two.img"),
          "-O",
          "raw",
          "o4.raw",
        ], {
          out: () => {},
          err: (t) => (e += t),
          context: { cwd: dir, env: {} },
        });
        assertEquals(c, 1);
        assertEquals(
          e.split("\n")[0],
          `instar: Invalid --max-guest-memory '${v}' (expected a size from 64M to 1088M)`,
        );
        assert(!(await exists(`${dir}/o4.raw`)));
      }
    });
  });
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}
