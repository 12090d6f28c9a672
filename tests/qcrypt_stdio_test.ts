// Encrypted images through `-` (docs/pipelines.md): an encrypted qcow2
// (LUKS and legacy AES) and a LUKS image written to stdout, and encrypted
// qcow2 and LUKS images qemu-img made read from stdin. Stdout bytes equal
// the file target's: exactly (cmp) for AES, whose key is the passphrase;
// for LUKS but for the random LUKS header clusters and the data clusters
// (the master key is random), with info (but for the uuid), map and check
// equal and the contents decrypting to the source. From stdin the raw
// output is cmp-equal to qemu-img's convert of the same file; a truncated
// stream and a wrong passphrase fail with one line and leave nothing.
// One run of each direction goes through real pipes (a child instar); the
// rest run in this process with a file standing in for stdin and stdout,
// and every child they spawn (the hosted guests) is checked: no passphrase
// in an argv or environment, in any output, or in a file left behind.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { exec, haveQemuImg, type Outcome, qemuImg, withTempDir } from "./cli_helpers.ts";
import { built } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { assertChildrenSeen, qemuOk, recordingChildren } from "./support/qcrypt_compare.ts";
import { instarLuks } from "./support/instar_luks.ts";
import { cryptsetupLuks1Image, cryptsetupLuksImage } from "./support/luks_images.ts";
import { nothingLeft, oneLine, pipeline, spoolEmpty } from "./support/pipeline.ts";
import { run } from "../lib/cli/run.ts";
import type { HostStdio } from "../lib/host/stdio.ts";

const PW = "instar-qcs-pw-5b81e2";
const OBJ = ["--object", `secret,id=s,data=${PW}`];
const LUKS = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
const AES = "encrypt.format=aes,encrypt.key-secret=s";
const opened = (name: string) => `driver=qcow2,encrypt.key-secret=s,file.filename=${name}`;
const RATE = { INSTAR_LUKS_PBKDF2_RATE: "200000" };
const outs: Outcome[] = [];
const argvs: string[][] = [];

/** instar in this process, `stdin`/`stdout` (files in `dir`) standing in for `-`. */
async function instarIo(
  args: string[],
  dir: string,
  io: { stdin?: string; stdout?: string; env?: Record<string, string> },
): Promise<Outcome> {
  const inF = io.stdin ? await Deno.open(`${dir}/${io.stdin}`) : undefined;
  const outF = io.stdout
    ? await Deno.open(`${dir}/${io.stdout}`, { write: true, create: true, truncate: true })
    : undefined;
  const stdio: HostStdio = {
    read: (p) => inF ? inF.read(p) : Promise.resolve(null),
    write: (b) => outF!.write(b),
    isTerminal: () => false,
    statPath: (w) => `${dir}/${w === 0 ? io.stdin : io.stdout}`,
  };
  let stdout = "", stderr = "";
  try {
    const code = await run(args, {
      out: (t) => (stdout += t),
      err: (t) => (stderr += t),
      context: {
        cwd: dir,
        env: { ...Deno.env.toObject(), ...RATE, TMPDIR: `${dir}/spool`, ...io.env },
        stdio,
      },
    });
    const r = { stdout, stderr, code };
    outs.push(r);
    return r;
  } finally {
    inF?.close();
    outF?.close();
  }
}

/** src.qcow2 (4 MiB: data in three places, a zeroed range) and its raw image. */
async function source(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/spool`);
  await qemuOk(["create", "-q", "-f", "qcow2", "src.qcow2", "4M"], dir);
  const w = [
    "-c",
    "write -P 7 0 64k",
    "-c",
    "write -P 9 1M 320k",
    "-c",
    "write -z 2M 64k",
    "-c",
    "write -P 3 3M 4k",
  ];
  assertEquals((await exec("qemu-io", [...w, "src.qcow2"], dir)).code, 0);
  await qemuOk(["convert", "-O", "raw", "src.qcow2", "src.raw"], dir);
}

/** qemu-img compare of the decrypted `name` with the source: identical. */
async function decryptsToSource(dir: string, name: string, driver = "qcow2") {
  const key = driver === "qcow2" ? "encrypt.key-secret" : "key-secret";
  const c = await qemuImg(
    [
      "compare",
      ...OBJ,
      "--image-opts",
      `driver=${driver},${key}=s,file.filename=${name}`,
      "driver=raw,file.filename=src.raw",
    ],
    dir,
  );
  assertEquals(c, { stdout: "Images are identical.\n", stderr: "", code: 0 }, name);
}

const masked = (t: string, name: string) =>
  t.replaceAll(name, "IMG").replace(/uuid: .*/, "uuid: X").replace(/disk size: .*/, "disk size: X");

/** [offset, end) of the LUKS header a qcow2 names (its crypto header extension, 0x0537be77). */
function luksHeaderRange(b: Uint8Array): [number, number] {
  const v = new DataView(b.buffer, b.byteOffset);
  assertEquals(v.getUint32(4), 3);
  for (let at = v.getUint32(100); at + 8 <= 65536;) {
    const type = v.getUint32(at), len = v.getUint32(at + 4);
    if (type === 0) break;
    if (type === 0x0537be77) {
      const off = Number(v.getBigUint64(at + 8)), n = Number(v.getBigUint64(at + 16));
      return [off, off + Math.ceil(n / 65536) * 65536];
    }
    at += 8 + Math.ceil(len / 8) * 8;
  }
  throw new Error("no crypto header extension");
}

/** The data clusters a qcow2's L1 and L2 tables point at (qemu-img map hides them for an encrypted image). */
function dataClusters(b: Uint8Array): [number, number][] {
  const v = new DataView(b.buffer, b.byteOffset);
  const cs = 1 << v.getUint32(20), l1Size = v.getUint32(36), l1 = Number(v.getBigUint64(40));
  const mask = 0x00fffffffffffe00n, out: [number, number][] = [];
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(v.getBigUint64(l1 + 8 * i) & mask);
    for (let j = 0; l2 && j < cs / 8; j++) {
      const d = Number(v.getBigUint64(l2 + 8 * j) & mask);
      if (d) out.push([d, d + cs]);
    }
  }
  return out;
}

/** `a` and `b` byte-equal but in their LUKS header and data clusters (random key material and ciphertext). */
async function sameButRandom(dir: string, a: string, b: string): Promise<void> {
  const [x, y] = [await Deno.readFile(`${dir}/${a}`), await Deno.readFile(`${dir}/${b}`)];
  assertEquals(x.length, y.length, `${a} and ${b}: sizes`);
  const skip: [number, number][] = [luksHeaderRange(x)];
  assertEquals(luksHeaderRange(y), skip[0]);
  skip.push(...dataClusters(x));
  assert(skip.length > 2, "no data cluster mapped: the check would prove little");
  let compared = 0;
  for (let i = 0; i < x.length; i++) {
    if (skip.some(([f, t]) => i >= f && i < t)) continue;
    compared++;
    if (x[i] !== y[i]) throw new Error(`${a} and ${b} differ at byte ${i}, outside the random parts`);
  }
  assert(compared >= 3 * 65536, `only ${compared} bytes compared`);
  // The random parts do differ (each run makes its own key): what was skipped is what is random.
  const [f, t] = skip[0];
  assert(x.subarray(f, t).some((v, i) => v !== y[f + i]), "the two LUKS headers are equal");
}

/** info, map and check of the two encrypted qcow2 images equal (but for the uuid and disk size). */
async function sameAsQemuSees(dir: string, a: string, b: string): Promise<void> {
  const info = async (n: string) => masked((await qemuImg(["info", n], dir)).stdout, n);
  assertEquals(await info(a), await info(b));
  for (const cmd of [["map", "--output=json"], ["check"]]) {
    const r = async (n: string) => {
      const x = await qemuImg([...cmd, ...OBJ, "--image-opts", opened(n)], dir);
      return { ...x, stdout: x.stdout.replaceAll(n, "IMG") };
    };
    assertEquals(await r(a), await r(b), cmd[0]);
  }
}

if (haveQemuImg() && built()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("encrypted qcow2 and LUKS to stdout: the file target's bytes but for the random key material", async () => {
    await withTempDir("instar-qcs-", async (dir) => {
      await source(dir);
      await Deno.writeTextFile(`${dir}/key`, PW);
      // LUKS through a real pipe (a child instar; the secret from a file, not its argv).
      const conv = (
        o: string,
        out: string,
        f = "qcow2",
      ) => ["convert", ...OBJ, "-O", f, "-o", o, "src.qcow2", out];
      assertEquals(await instarLuks(conv(LUKS, "file.qcow2"), dir), { stdout: "", stderr: "", code: 0 });
      const p = await pipeline(
        dir,
        `$I convert --object secret,id=s,file=key -O qcow2 -o ${LUKS} src.qcow2 - | cat > piped.qcow2`,
        RATE,
      );
      assertEquals(p.code, 0, p.stderr);
      assertEquals(p.stderr, "");
      await sameButRandom(dir, "file.qcow2", "piped.qcow2");
      await sameAsQemuSees(dir, "file.qcow2", "piped.qcow2");
      await decryptsToSource(dir, "piped.qcow2");
      // AES: no random part, so the stream is the file, byte for byte.
      assertEquals(await instarLuks(conv(AES, "aes.qcow2"), dir), { stdout: "", stderr: "", code: 0 });
      assertEquals(await instarIo(conv(AES, "-"), dir, { stdout: "aes-out.qcow2" }), {
        stdout: "",
        stderr: "",
        code: 0,
      });
      assertEquals(
        (await exec("cmp", ["aes.qcow2", "aes-out.qcow2"], dir)).code,
        0,
        "AES: stream and file differ",
      );
      await decryptsToSource(dir, "aes-out.qcow2");
      // -O luks: info equal but for the uuid, and the same contents.
      const luks = "key-secret=s,iter-time=10";
      assertEquals(await instarLuks(conv(luks, "file.luks", "luks"), dir), {
        stdout: "",
        stderr: "",
        code: 0,
      });
      assertEquals(await instarIo(conv(luks, "-", "luks"), dir, { stdout: "out.luks" }), {
        stdout: "",
        stderr: "",
        code: 0,
      });
      const info = async (n: string) => masked((await qemuImg(["info", n], dir)).stdout, n);
      assertEquals(await info("out.luks"), await info("file.luks"));
      assertEquals((await Deno.stat(`${dir}/out.luks`)).size, (await Deno.stat(`${dir}/file.luks`)).size);
      await decryptsToSource(dir, "out.luks", "luks");
      // A raw stdin into an encrypted qcow2 (spooled, not refused), and from stdin to stdout.
      assertEquals(
        await instarIo(["convert", ...OBJ, "-f", "raw", "-O", "qcow2", "-o", LUKS, "-", "in.qcow2"], dir, {
          stdin: "src.raw",
        }),
        { stdout: "", stderr: "", code: 0 },
      );
      await decryptsToSource(dir, "in.qcow2");
      assertEquals(
        await instarIo(["convert", ...OBJ, "-f", "raw", "-O", "qcow2", "-o", LUKS, "-", "-"], dir, {
          stdin: "src.raw",
          stdout: "inout.qcow2",
        }),
        { stdout: "", stderr: "", code: 0 },
      );
      await sameButRandom(dir, "in.qcow2", "inout.qcow2");
      // A failure sends nothing to stdout.
      const bad = await instarIo(conv("encrypt.format=luks,encrypt.key-secret=nosuch", "-"), dir, {
        stdout: "bad.qcow2",
      });
      assertEquals(bad, {
        stdout: "",
        stderr: "instar: -: error while converting qcow2: No secret with id 'nosuch'\n",
        code: 1,
      });
      assertEquals((await Deno.stat(`${dir}/bad.qcow2`)).size, 0);
      spoolEmpty(dir);
    });
  });

  Deno.test("encrypted qcow2 and LUKS from stdin: qemu-img's contents; truncated or wrong passphrase: one line", async () => {
    await withTempDir("instar-qcs-", async (dir) => {
      await source(dir);
      await Deno.writeTextFile(`${dir}/key`, PW);
      await qemuOk(["convert", ...OBJ, "-O", "qcow2", "-o", LUKS, "src.qcow2", "enc.qcow2"], dir);
      await qemuOk(["convert", ...OBJ, "-O", "qcow2", "-o", AES, "src.qcow2", "aes.qcow2"], dir);
      // LUKS1: cryptsetup's (1000 iterations: qemu-img's calibration costs seconds), filled by qemu-img.
      await cryptsetupLuks1Image(dir, "enc.luks", 6 << 20, PW);
      const into = ["--target-image-opts", "driver=luks,key-secret=s,file.filename=enc.luks"];
      await qemuOk(["convert", "-n", ...OBJ, "-f", "raw", "src.raw", ...into], dir);
      const images = [["enc.qcow2", opened("-")], ["aes.qcow2", opened("-")], [
        "enc.luks",
        "driver=luks,key-secret=s,file.filename=-",
      ]];
      // Through a real pipe, stdin to stdout.
      const p = await pipeline(
        dir,
        `cat enc.qcow2 | $I convert --object secret,id=s,file=key --image-opts ${
          opened("-")
        } -O raw - | cat > p.raw`,
      );
      assertEquals(p.code, 0, p.stderr);
      assertEquals((await exec("cmp", ["p.raw", "src.raw"], dir)).code, 0, "stdin to stdout: not the source");
      for (const [img, opts] of images) {
        const q = await qemuImg([
          "convert",
          ...OBJ,
          "--image-opts",
          opts.replace("=-", `=${img}`),
          "-O",
          "raw",
          "q.raw",
        ], dir);
        assertEquals(q.code, 0, q.stderr);
        const r = await instarIo(["convert", ...OBJ, "--image-opts", opts, "-O", "raw", "i.raw"], dir, {
          stdin: img,
        });
        assertEquals(r, { stdout: "", stderr: "", code: 0 }, img);
        assertEquals((await exec("cmp", ["q.raw", "i.raw"], dir)).code, 0, `${img} from stdin`);
      }
      // The encrypted qcow2 from stdin into a new encrypted qcow2 file.
      const r = await instarIo(
        ["convert", ...OBJ, "--image-opts", opened("-"), "-O", "qcow2", "-o", LUKS, "re.qcow2"],
        dir,
        {
          stdin: "enc.qcow2",
        },
      );
      assertEquals(r, { stdout: "", stderr: "", code: 0 });
      await decryptsToSource(dir, "re.qcow2");
      // ... and into a plain qcow2 on stdout, in 1 MiB windows: the file-to-file convert's bytes.
      const plain = ["convert", ...OBJ, "--image-opts", opened("-"), "-O", "qcow2"];
      const w = { stdin: "enc.qcow2", env: { INSTAR_STREAM_WINDOW_MIB: "1" } };
      assertEquals(await instarIo([...plain, "pf.qcow2"], dir, w), { stdout: "", stderr: "", code: 0 });
      assertEquals(await instarIo([...plain, "-"], dir, { ...w, stdout: "ps.qcow2" }), {
        stdout: "",
        stderr: "",
        code: 0,
      });
      assertEquals(
        (await exec("cmp", ["pf.qcow2", "ps.qcow2"], dir)).code,
        0,
        "plain qcow2 on stdout: not the file's",
      );
      assertEquals(
        (await qemuImg(["compare", "pf.qcow2", "src.raw"], dir)).stdout,
        "Images are identical.\n",
      );
      // LUKS2 (cryptsetup's; qemu-img cannot read it): from stdin as instar reads the file.
      await cryptsetupLuksImage(dir, "l2.img", 20 << 20, PW, [
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
      ]);
      const l2 = (
        n: string,
      ) => ["convert", ...OBJ, "--image-opts", `driver=luks,key-secret=s,file.filename=${n}`];
      assertEquals(await instarIo([...l2("l2.img"), "-O", "raw", "l2f.raw"], dir, {}), {
        stdout: "",
        stderr: "",
        code: 0,
      });
      assertEquals(await instarIo([...l2("-"), "-O", "raw", "l2s.raw"], dir, { stdin: "l2.img" }), {
        stdout: "",
        stderr: "",
        code: 0,
      });
      assertEquals((await exec("cmp", ["l2f.raw", "l2s.raw"], dir)).code, 0, "LUKS2 from stdin");
      // A stream cut short: refused, nothing written.
      const whole = await Deno.readFile(`${dir}/enc.qcow2`);
      await Deno.writeFile(`${dir}/cut.qcow2`, whole.subarray(0, whole.length - 65536));
      const cut = await instarIo(
        ["convert", ...OBJ, "--image-opts", opened("-"), "-O", "raw", "t.raw"],
        dir,
        {
          stdin: "cut.qcow2",
        },
      );
      assertEquals(cut.code, 1);
      oneLine(cut.stderr, /^instar: Could not open '.*': the image read from stdin is incomplete or damaged/);
      // A wrong passphrase: qemu-img's line for the same image as a file.
      const wrong = ["--object", "secret,id=s,data=wrong" + PW];
      const q = await qemuImg([
        "convert",
        ...wrong,
        "--image-opts",
        opened("enc.qcow2"),
        "-O",
        "raw",
        "t.raw",
      ], dir);
      const i = await instarIo(
        ["convert", ...wrong, "--image-opts", opened("-"), "-O", "raw", "t.raw"],
        dir,
        {
          stdin: "enc.qcow2",
        },
      );
      assertEquals(i, { ...q, stderr: q.stderr.replace("qemu-img:", "instar:").replace("enc.qcow2", "-") });
      assertEquals(i.code, 1);
      nothingLeft(dir, [
        "src.qcow2",
        "src.raw",
        "key",
        "enc.qcow2",
        "aes.qcow2",
        "enc.luks",
        "p.raw",
        "q.raw",
        "i.raw",
        "re.qcow2",
        "pf.qcow2",
        "ps.qcow2",
        "l2.img",
        "l2f.raw",
        "l2s.raw",
        "cut.qcow2",
      ]);
    });
  });

  Deno.test("encrypted images through '-': the passphrase reaches no child's argv, output or file", async () => {
    await withTempDir("instar-qcs-", async (dir) => {
      await source(dir);
      const made = await instarLuks(
        ["convert", ...OBJ, "-O", "qcow2", "-o", LUKS, "src.qcow2", "enc.qcow2"],
        dir,
      );
      assertEquals(made.code, 0, made.stderr);
      const before = outs.length;
      await recordingChildren(argvs, async () => {
        const to = ["convert", ...OBJ, "--image-opts", opened("-"), "-O", "qcow2", "-o", LUKS, "-"];
        assertEquals((await instarIo(to, dir, { stdin: "enc.qcow2", stdout: "o.qcow2" })).code, 0);
        const wrong = ["convert", "--object", "secret,id=s,data=wrong" + PW, "--image-opts", opened("-")];
        assertEquals(
          (await instarIo([...wrong, "-O", "raw", "-"], dir, { stdin: "enc.qcow2", stdout: "w.raw" })).code,
          1,
        );
      });
      await decryptsToSource(dir, "o.qcow2");
      assertChildrenSeen(argvs);
      for (const a of argvs) assert(!a.some((s) => s.includes(PW)), `passphrase in a child's argv: ${a[0]}`);
      for (const o of outs.slice(before)) {
        assert(!o.stdout.includes(PW) && !o.stderr.includes(PW), "passphrase printed");
      }
      spoolEmpty(dir);
      const enc = new TextEncoder().encode(PW);
      for (const e of Deno.readDirSync(dir)) {
        if (!e.isFile) continue;
        const b = await Deno.readFile(`${dir}/${e.name}`);
        const hit = b.findIndex((_, i) => enc.every((c, j) => b[i + j] === c));
        assert(hit < 0, `the passphrase is in ${e.name}`);
      }
    });
  });
}
