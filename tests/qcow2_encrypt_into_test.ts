// convert -n into an existing encrypted qcow2 (LUKS and legacy AES targets
// qemu-img made) against qemu-img 7.2 on two copies of each target: the
// files byte-identical (cmp: the same clusters, encrypted with the same key
// for the same offsets), the decrypted contents equal to the source
// (qemu-img compare with --object/--image-opts), qemu-img check clean; with
// --target-is-zero, -S 0, a qcow2 source, a source ending inside the
// target's last cluster and a target qemu-img filled before (also with a
// false --target-is-zero: the zero blocks of mapped clusters skipped); refusals (wrong passphrase, a target too small, no
// encrypt.key-secret, -O qcow2 without options, encrypt.format mismatch) in
// qemu's words and exit codes, the target untouched; an encrypted source
// (with -S 0 as qemu-img); the passphrase in no
// output, child argv or TMPDIR file.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  asInstar,
  exec,
  haveQemuImg,
  instarHere,
  type Outcome,
  qemuImg,
  withTempDir,
} from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { assertChildrenSeen, qemuRetry, recordingChildren, smallFilesIn } from "./support/qcrypt_compare.ts";

const PW = "instar-q2into-pw-8c31f0";
const BAD = "instar-q2into-bad-77e2a4";
const OBJ = ["--object", `secret,id=sec0,data=${PW}`];
const BAD_OBJ = ["--object", `secret,id=sec0,data=${BAD}`];
const SIZE = (4 << 20) + 1536;

/** A raw source of `size` bytes: data clusters, zero clusters, a partial data cluster, data at the end. */
async function rawSource(dir: string, name: string, size: number): Promise<void> {
  const b = new Uint8Array(size);
  b.fill(0x11, 0, 70000);
  b.fill(0x5a, 200000, 200512);
  for (let i = 3 << 20; i < (3 << 20) + 300000; i++) b[i] = (i * 7) & 0xff;
  b.fill(0xee, b.length - 700);
  await Deno.writeFile(`${dir}/${name}`, b);
}

const opts = (file: string, extra = "encrypt.key-secret=sec0,") =>
  `driver=qcow2,${extra}file.filename=${file}`;

async function cmp(dir: string, a: string, b: string): Promise<boolean> {
  return (await exec("cmp", ["-s", a, b], dir)).code === 0;
}

/** Fills two copies of `target` with qemu-img's and instar's convert -n; asserts they agree. */
async function sameInto(
  dir: string,
  target: string,
  src: string[],
  flags: string[],
  same = true,
): Promise<void> {
  await Deno.copyFile(`${dir}/${target}`, `${dir}/q.qcow2`);
  await Deno.copyFile(`${dir}/${target}`, `${dir}/i.qcow2`);
  const args = (f: string) => ["convert", "-n", ...flags, ...OBJ, ...src, "--target-image-opts", opts(f)];
  const q = await qemuImg(args("q.qcow2"), dir);
  const i = await instarHere(args("i.qcow2"), dir);
  const what = `${target} ${flags.join(" ")} ${src.join(" ")}`;
  assertEquals(q.code, 0, `qemu-img ${what}: ${q.stderr}`);
  assertEquals(i, { stdout: "", stderr: "", code: 0 }, what);
  assert(await cmp(dir, "q.qcow2", "i.qcow2"), `${what}: the files differ`);
  const c = await qemuImg(["check", ...OBJ, "--image-opts", opts("i.qcow2")], dir);
  assertEquals(c.code, 0, c.stdout + c.stderr);
  // --target-is-zero over data (a false declaration): not the source, but qemu-img's bytes.
  if (!same) return;
  const srcOpts = src[0] === "-f" ? `driver=${src[1]},file.filename=${src[2]}` : src[1];
  const cmpOut = await qemuImg(["compare", ...OBJ, "--image-opts", srcOpts, opts("i.qcow2")], dir);
  // A 4 MiB source in the larger target: qemu-img warns, the rest reads as zeroes.
  assert(
    /^(Warning: Image size mismatch!\n)?Images are identical\.\n$/.test(cmpOut.stdout),
    `${what}: ${cmpOut.stdout}`,
  );
  assertEquals(cmpOut.code, 0);
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("convert -n into encrypted qcow2 (LUKS, AES) equals qemu-img's, byte for byte", async () => {
    await withTempDir("instar-q2into-", async (dir) => {
      await rawSource(dir, "src.raw", 4 << 20);
      await rawSource(dir, "tail.raw", SIZE);
      const other = new Uint8Array(4 << 20);
      other.fill(0x33, 65536, 200000);
      other.fill(0x44, 3 << 20, (3 << 20) + 4096);
      await Deno.writeFile(`${dir}/other.raw`, other);
      const mk = (o: string, f: string, size: number) =>
        qemuRetry(["create", "-q", "-f", "qcow2", ...OBJ, "-o", o, f, String(size)], dir);
      for (
        const r of await Promise.all([
          mk("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", "luks.qcow2", SIZE),
          mk("encrypt.format=aes,encrypt.key-secret=sec0", "aes.qcow2", SIZE),
        ])
      ) assertEquals(r.code, 0, r.stderr);
      // A qcow2 source (convert -n reads it through the chain).
      assertEquals(
        (await qemuImg(["convert", "-f", "raw", "-O", "qcow2", "src.raw", "src.qcow2"], dir)).code,
        0,
      );
      for (const t of ["luks.qcow2", "aes.qcow2"]) {
        await sameInto(dir, t, ["-f", "raw", "src.raw"], []);
        await sameInto(dir, t, ["-f", "raw", "tail.raw"], []);
        await sameInto(dir, t, ["-f", "qcow2", "src.qcow2"], ["--target-is-zero"]);
        await sameInto(dir, t, ["-f", "raw", "src.raw"], ["-S", "0"]);
        // Over a target qemu-img filled: data clusters rewritten in place, zero clusters freed.
        await Deno.copyFile(`${dir}/${t}`, `${dir}/filled.qcow2`);
        const f = await qemuImg([
          "convert",
          "-n",
          ...OBJ,
          "-f",
          "raw",
          "src.raw",
          "--target-image-opts",
          opts("filled.qcow2"),
        ], dir);
        assertEquals(f.code, 0, f.stderr);
        await sameInto(dir, "filled.qcow2", ["-f", "raw", "other.raw"], []);
        await sameInto(dir, "filled.qcow2", ["-f", "raw", "other.raw"], ["--target-is-zero"], false);
      }
    });
  });

  Deno.test("convert -n into encrypted qcow2: refusals in qemu-img's words; the passphrase nowhere", async () => {
    await withTempDir("instar-q2into-", async (dir) => {
      await rawSource(dir, "src.raw", 4 << 20);
      await rawSource(dir, "big.raw", 8 << 20);
      const r = await qemuRetry([
        "create",
        "-q",
        "-f",
        "qcow2",
        ...OBJ,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        "t.qcow2",
        "4M",
      ], dir);
      assertEquals(r.code, 0, r.stderr);
      const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
      const before = new Set(await smallFilesIn(tmp));
      const argvs: string[][] = [];
      const outs: Outcome[] = [];
      const cases: string[][] = [
        ["convert", "-n", "-f", "raw", ...BAD_OBJ, "src.raw", "--target-image-opts", opts("x.qcow2")],
        ["convert", "-n", "-f", "raw", ...OBJ, "big.raw", "--target-image-opts", opts("x.qcow2")],
        ["convert", "-n", "-f", "raw", ...BAD_OBJ, "big.raw", "--target-image-opts", opts("x.qcow2")],
        ["convert", "-n", "-f", "raw", ...OBJ, "-O", "qcow2", "src.raw", "x.qcow2"],
        ["convert", "-n", "-f", "raw", ...OBJ, "src.raw", "--target-image-opts", opts("x.qcow2", "")],
        [
          "convert",
          "-n",
          "-f",
          "raw",
          ...OBJ,
          "src.raw",
          "--target-image-opts",
          opts("x.qcow2", "encrypt.key-secret=sec0,encrypt.format=aes,"),
        ],
      ];
      for (const args of cases) {
        await Deno.copyFile(`${dir}/t.qcow2`, `${dir}/x.qcow2`);
        const q = await qemuImg(args, dir);
        assert(await cmp(dir, "t.qcow2", "x.qcow2"), "qemu-img wrote");
        const i: Outcome = await recordingChildren(argvs, () => instarHere(args, dir));
        outs.push(i);
        assertEquals(i, asInstar(q), args.join(" "));
        assertEquals(q.code, 1);
        assert(await cmp(dir, "t.qcow2", "x.qcow2"), `instar wrote: ${args.join(" ")}`);
      }
      // The successful run too, for the argv and file checks.
      outs.push(
        await recordingChildren(argvs, () =>
          instarHere([
            "convert",
            "-n",
            "-f",
            "raw",
            ...OBJ,
            "src.raw",
            "--target-image-opts",
            opts("x.qcow2"),
          ], dir)),
      );
      assertEquals(outs[outs.length - 1].code, 0, outs[outs.length - 1].stderr);
      // An encrypted source.
      const a = await qemuImg([
        "create",
        "-q",
        "-f",
        "qcow2",
        ...OBJ,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        "a.qcow2",
        "4M",
      ], dir);
      assertEquals(a.code, 0, a.stderr);
      await Deno.copyFile(`${dir}/t.qcow2`, `${dir}/x.qcow2`);
      const enc = await instarHere([
        "convert",
        "-n",
        ...OBJ,
        "--image-opts",
        opts("a.qcow2"),
        "--target-image-opts",
        opts("x.qcow2"),
      ], dir);
      // An encrypted source with the default -S: classified in the qcow2_encrypt guest
      // (tests/qcrypt_targets_test.ts compares such runs with qemu-img's).
      assertEquals(enc, { stdout: "", stderr: "", code: 0 });
      // With -S 0 an encrypted source is read and re-encrypted as qemu-img does.
      const fill = await qemuImg([
        "convert",
        "-n",
        ...OBJ,
        "-f",
        "raw",
        "src.raw",
        "--target-image-opts",
        opts("a.qcow2"),
      ], dir);
      assertEquals(fill.code, 0, fill.stderr);
      await sameInto(dir, "t.qcow2", ["--image-opts", opts("a.qcow2")], ["-S", "0"]);
      outs.push(enc);
      assertChildrenSeen(argvs);
      for (const a of argvs) {
        assert(!a.some((s) => s.includes(PW) || s.includes(BAD)), `passphrase in a child's argv: ${a[0]}`);
      }
      for (const o of outs) assert(![PW, BAD].some((p) => o.stdout.includes(p) || o.stderr.includes(p)));
      for (
        const f of [
          ...(await smallFilesIn(dir)),
          ...(await smallFilesIn(tmp)).filter((f) => !before.has(f)),
        ]
      ) {
        const b = new TextDecoder("latin1").decode(await Deno.readFile(f).catch(() => new Uint8Array(0)));
        assert(!b.includes(PW) && !b.includes(BAD), `${f} holds a passphrase`);
      }
    });
  });
}
