// convert -n into an existing LUKS1 image (nova's and cinder's
// `convert -n --target-image-opts driver=luks,key-secret=...`) against
// qemu-img 7.2: targets made by cryptsetup, each written once by qemu-img
// and once by instar from the same copy; the two files must be equal byte
// for byte (header and key material untouched, the payload encrypted with
// the image's own master key), with and without --target-is-zero and -S,
// and qemu-img must read the source's bytes back. Every refusal prints
// qemu-img's message with its exit code and leaves the target as it was;
// the passphrase reaches no child's argv, no output and no file.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  asInstar,
  exec,
  haveQemuImg,
  instarHere,
  type Outcome,
  qemuImg,
  sh,
  withTempDir,
} from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { cryptsetupLuksImage } from "./support/luks_images.ts";
import { assertChildrenSeen, recordingChildren } from "./support/qcrypt_compare.ts";
import { loopDevice } from "./support/loop_device.ts";
import { run } from "../lib/cli/run.ts";

const PW = "instar-luks-into-pw-7d3a19";
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
const opts = (name: string) => `driver=luks,key-secret=sec0,file.filename=${name}`;

async function cmp(dir: string, a: string, b: string, n?: number): Promise<boolean> {
  const r = await exec("cmp", [...(n === undefined ? [] : ["-n", String(n)]), a, b], dir);
  return r.code === 0;
}

/** A qcow2 source of `size` with data, zero clusters, zero blocks inside data and unallocated runs. */
async function makeSource(dir: string, name: string, size: string): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", name, size);
  await sh(
    dir,
    "qemu-io",
    "-f",
    "qcow2",
    "-c",
    "write -P 0xab 0 700k",
    "-c",
    "write -P 0 64k 8k",
    "-c",
    "write -z 1M 256k",
    "-c",
    "write -P 0x5c 1536k 4k",
    "-c",
    "write -P 0 2M 128k",
    "-c",
    "write -P 0x11 2600k 1k",
    name,
  );
}

/** instar in this process with the PBKDF2 calibration's answer given (convert -O luks runs no benchmark). */
async function instarRated(args: string[], cwd: string): Promise<Outcome> {
  let stdout = "", stderr = "";
  const env = { ...Deno.env.toObject(), INSTAR_LUKS_PBKDF2_RATE: "200000" };
  const code = await run(args, {
    out: (t) => (stdout += t),
    err: (t) => (stderr += t),
    context: { cwd, env },
  });
  return { stdout, stderr, code };
}

/** The LUKS payload offset cryptsetup chose (bytes). */
async function payloadOffset(dir: string, name: string): Promise<number> {
  const r = await exec("cryptsetup", ["luksDump", name], dir);
  const m = r.stdout.match(/Payload offset:\s*(\d+)/);
  assert(m, r.stdout);
  return Number(m[1]) * 512;
}

/**
 * Runs `args` (naming TARGET for the target file) with qemu-img on one copy
 * of `base` and with instar on another; both outcomes and both files must
 * be equal. Returns qemu-img's outcome.
 */
async function sameInto(dir: string, base: string, args: string[]): Promise<Outcome> {
  await Deno.copyFile(`${dir}/${base}`, `${dir}/q.luks`);
  await Deno.copyFile(`${dir}/${base}`, `${dir}/i.luks`);
  const q = await qemuImg(args.map((x) => x.replace("TARGET", "q.luks")), dir);
  const i = await instarHere(args.map((x) => x.replace("TARGET", "i.luks")), dir);
  assertEquals(i, asInstar({ ...q, stderr: q.stderr.replaceAll("q.luks", "i.luks") }), args.join(" "));
  assert(await cmp(dir, "q.luks", "i.luks"), `target files differ: ${args.join(" ")}`);
  return q;
}

if (ready) {
  await useHostedGuestsWithoutKvm();

  for (
    const [what, extra] of [
      ["aes-xts-plain64", []],
      ["aes-cbc-essiv:sha256", ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"]],
    ] as const
  ) {
    Deno.test(`convert -n into LUKS1 (${what}): equal to qemu-img's file, header untouched`, async () => {
      await withTempDir("instar-luks-into-", async (dir) => {
        await Deno.writeTextFile(`${dir}/key`, PW);
        await cryptsetupLuksImage(dir, "t.luks", 6 << 20, PW, [
          "--type",
          "luks1",
          "--pbkdf-force-iterations",
          "1000",
          ...extra,
        ]);
        const payload = await payloadOffset(dir, "t.luks");
        await makeSource(dir, "s.qcow2", "3M");
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "small.raw", "1M");
        await sh(dir, "qemu-io", "-f", "raw", "-c", "write -P 0x77 4k 8k", "small.raw");
        // A target whose payload holds data already (written by qemu-img), so skipped zeroes show.
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "fill.raw", "4M");
        await sh(dir, "qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4M", "fill.raw");
        await Deno.copyFile(`${dir}/t.luks`, `${dir}/full.luks`);
        await sh(
          dir,
          "qemu-img",
          "convert",
          "-n",
          "-f",
          "raw",
          ...OBJ,
          "--target-image-opts",
          "fill.raw",
          opts("full.luks"),
        );

        const into = (...more: string[]) => ["convert", "-n", ...more, ...OBJ, "--target-image-opts"];
        await sameInto(dir, "t.luks", [...into("-f", "qcow2"), "s.qcow2", opts("TARGET")]);
        // qemu-img reads the source back from ours; the header region is the one cryptsetup wrote.
        const c = await qemuImg([
          "convert",
          ...OBJ,
          "--image-opts",
          opts("i.luks"),
          "-O",
          "raw",
          "back.raw",
        ], dir);
        assertEquals(c.code, 0, c.stderr);
        await Deno.truncate(`${dir}/back.raw`, 3 << 20);
        assertEquals(
          (await qemuImg(["compare", "-F", "raw", "-f", "qcow2", "s.qcow2", "back.raw"], dir)).code,
          0,
        );
        assert(await cmp(dir, "t.luks", "i.luks", payload), "the LUKS header or key material changed");

        // Into a target holding data: zeroes written encrypted, or left alone with --target-is-zero.
        await sameInto(dir, "full.luks", [...into("-f", "qcow2"), "s.qcow2", opts("TARGET")]);
        await sameInto(dir, "full.luks", [
          ...into("-f", "qcow2", "--target-is-zero"),
          "s.qcow2",
          opts("TARGET"),
        ]);
        assert(!(await cmp(dir, "full.luks", "i.luks")) && !(await cmp(dir, "t.luks", "i.luks")));
        await sameInto(dir, "full.luks", [
          ...into("-f", "qcow2", "--target-is-zero", "-S", "64k"),
          "s.qcow2",
          opts("TARGET"),
        ]);
        await sameInto(dir, "full.luks", [
          ...into("-f", "qcow2", "--target-is-zero", "-S", "0"),
          "s.qcow2",
          opts("TARGET"),
        ]);
        // A smaller source: the payload past its end is left as it was.
        await sameInto(dir, "full.luks", [...into("-f", "raw"), "small.raw", opts("TARGET")]);
        // A LUKS source (unlocked with its own secret) into a LUKS target.
        await sameInto(dir, "full.luks", [
          ...into("--image-opts"),
          opts("t.luks"),
          opts("TARGET"),
        ]);
      });
    });
  }

  Deno.test("convert -n into LUKS: qemu-img's refusals, the target untouched", async () => {
    await withTempDir("instar-luks-into-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      await Deno.writeTextFile(`${dir}/bad`, "not-" + PW);
      await cryptsetupLuksImage(dir, "t.luks", 3 << 20, PW);
      await cryptsetupLuksImage(dir, "l2.luks", 8 << 20, PW, [
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
      ]);
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "s.raw", "512k");
      await sh(dir, "qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", "s.raw");
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "big.raw", "2M");
      const BAD = ["--object", "secret,id=sec0,file=bad"];
      const cases: string[][] = [
        ["convert", "-n", "-f", "raw", ...BAD, "--target-image-opts", "s.raw", opts("TARGET")],
        ["convert", "-n", "-f", "raw", ...OBJ, "--target-image-opts", "big.raw", opts("TARGET")],
        ["convert", "-n", "-f", "raw", ...BAD, "--target-image-opts", "big.raw", opts("TARGET")],
        ["convert", "-n", "-f", "raw", "--target-image-opts", "s.raw", "driver=luks,file.filename=TARGET"],
        [
          "convert",
          "-n",
          "-f",
          "raw",
          ...OBJ,
          "--target-image-opts",
          "s.raw",
          opts("TARGET").replace("sec0", "nope"),
        ],
        ["convert", "-n", "-f", "raw", "-O", "luks", "s.raw", "TARGET"],
        ["convert", "-n", "-f", "raw", ...OBJ, "-O", "luks", "-o", "key-secret=sec0", "s.raw", "TARGET"],
        ["convert", "-n", "-c", "-f", "raw", ...OBJ, "--target-image-opts", "s.raw", opts("TARGET")],
        ["convert", "-n", "-f", "raw", ...OBJ, "--target-image-opts", "s.raw", opts("missing.luks")],
        ["convert", "-n", "-f", "raw", ...OBJ, "--target-image-opts", "s.raw", opts("big.raw")],
      ];
      for (const args of cases) {
        const q = await sameInto(dir, "t.luks", args);
        assertEquals(q.code, 1, `${args.join(" ")}: ${q.stderr}`);
        assert(await cmp(dir, "t.luks", "i.luks"), `target written: ${args.join(" ")}`);
      }
      // LUKS2: qemu 7.2's luks driver reads version 1 only.
      const l2 = await sameInto(dir, "l2.luks", [
        "convert",
        "-n",
        "-f",
        "raw",
        ...OBJ,
        "--target-image-opts",
        "s.raw",
        opts("TARGET"),
      ]);
      assert(l2.stderr.includes("LUKS version 2 is not supported"), l2.stderr);
      assert(await cmp(dir, "l2.luks", "i.luks"));
    });
  });

  Deno.test("encrypted sources into LUKS: qcow2 AES with -n and -O luks, LUKS2", async () => {
    await withTempDir("instar-luks-into-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      await cryptsetupLuksImage(dir, "t.luks", 6 << 20, PW);
      await cryptsetupLuksImage(dir, "l2.luks", 8 << 20, PW, [
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
      ]);
      // Legacy AES qcow2 (no PBKDF2 calibration in its create), filled through qemu-io with the key.
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        ...OBJ,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        "a.qcow2",
        "3M",
      );
      const aes = "driver=qcow2,encrypt.key-secret=sec0,file.filename=a.qcow2";
      await sh(
        dir,
        "qemu-io",
        ...OBJ,
        "--image-opts",
        aes,
        "-c",
        "write -P 0x3c 0 300k",
        "-c",
        "write -z 1M 64k",
        "-c",
        "write -P 0x7a 2M 4k",
      );
      await sameInto(dir, "t.luks", [
        "convert",
        "-n",
        ...OBJ,
        "--image-opts",
        aes,
        "--target-image-opts",
        opts("TARGET"),
      ]);
      const made = await instarRated([
        "convert",
        ...OBJ,
        "--image-opts",
        aes,
        "-O",
        "luks",
        "-o",
        "key-secret=sec0,iter-time=10",
        "o.luks",
      ], dir);
      assertEquals(made.code, 0, made.stderr);
      const c = await qemuImg(["compare", ...OBJ, "--image-opts", aes, opts("o.luks")], dir);
      assertEquals(c.code, 0, c.stdout + c.stderr);
      // LUKS2 (read by instar beyond qemu 7.2): the luks_write_luks2 guest reads it
      // (tests/luks2_targets_test.ts checks the bytes).
      const l2 = ["--image-opts", opts("l2.luks")];
      await Deno.copyFile(`${dir}/t.luks`, `${dir}/i.luks`);
      const n = await instarHere(
        ["convert", "-n", ...OBJ, ...l2, "--target-image-opts", opts("i.luks")],
        dir,
      );
      assertEquals(n, { stdout: "", stderr: "", code: 0 });
      const o = await instarRated(
        ["convert", ...OBJ, ...l2, "-O", "luks", "-o", "key-secret=sec0,iter-time=10", "o2.luks"],
        dir,
      );
      assertEquals(o, { stdout: "", stderr: "", code: 0 });
    });
  });

  Deno.test("convert -n into a LUKS1 volume on a block device (cinder's attached volume)", async () => {
    await withTempDir("instar-luks-into-", async (dir) => {
      await Deno.writeTextFile(`${dir}/key`, PW);
      await cryptsetupLuksImage(dir, "t.luks", 5 << 20, PW);
      const dev = await loopDevice(dir, "vol", 5 << 20);
      if (!dev) return; // not root, or no loop devices
      try {
        await Deno.writeFile(dev.node, await Deno.readFile(`${dir}/t.luks`));
        await makeSource(dir, "s.qcow2", "3M");
        const args = (
          t: string,
        ) => ["convert", "-n", "-f", "qcow2", ...OBJ, "--target-image-opts", "s.qcow2", opts(t)];
        await Deno.copyFile(`${dir}/t.luks`, `${dir}/q.luks`);
        assertEquals((await qemuImg(args("q.luks"), dir)).code, 0);
        assertEquals(await instarHere(args("vol"), dir), { stdout: "", stderr: "", code: 0 });
        assert(Deno.statSync(dev.node).isBlockDevice, "the device node was replaced");
        assertEquals(await Deno.readFile(dev.node), await Deno.readFile(`${dir}/q.luks`));
        // Too small a volume: qemu-img's refusal (its host_device driver opens the node too).
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "big.raw", "4M");
        const big = (
          t: string,
        ) => ["convert", "-n", "-f", "raw", ...OBJ, "--target-image-opts", "big.raw", opts(t)];
        const q = await qemuImg(big("vol"), dir);
        assertEquals(await instarHere(big("vol"), dir), asInstar(q));
      } finally {
        await dev.detach();
      }
    });
  });

  Deno.test("convert -n into LUKS: the passphrase reaches no child's argv, output or file", async () => {
    await withTempDir("instar-luks-into-", async (dir) => {
      await cryptsetupLuksImage(dir, "t.luks", 3 << 20, PW);
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "s.raw", "1M");
      await sh(dir, "qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", "s.raw");
      const start = Date.now();
      const argvs: string[][] = [];
      const outs: Outcome[] = [];
      await recordingChildren(argvs, async () => {
        for (const pw of [PW, "wrong-" + PW]) {
          outs.push(
            await instarHere([
              "convert",
              "-n",
              "-f",
              "raw",
              "--object",
              `secret,id=sec0,data=${pw}`,
              "--target-image-opts",
              "s.raw",
              opts("t.luks"),
            ], dir),
          );
        }
      });
      assertEquals(outs.map((o) => o.code), [0, 1]);
      assertChildrenSeen(argvs);
      for (const a of argvs) assert(!a.some((s) => s.includes(PW)), `passphrase in a child's argv: ${a[0]}`);
      for (const o of outs) assert(!o.stdout.includes(PW) && !o.stderr.includes(PW), "passphrase printed");
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
          const st = (() => {
            try {
              return Deno.statSync(p);
            } catch {
              return undefined;
            }
          })();
          if (!st?.isFile || (st.mtime?.getTime() ?? 0) < start - 1000 || st.size > 64 << 20) continue;
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
