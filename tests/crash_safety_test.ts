// Crash safety of in-place writes: each command that changes an image is
// SIGKILLed after every step of its plan in turn (INSTAR_TEST_KILL_AFTER_STEP,
// lib/cli/apply_steps.ts), and what is left must be what the planners
// promise: `qemu-img check` finds at most leaked clusters (exit 0 or 3, no
// corruption) and the image reads back exactly as before or as after the
// command. One sweep per command shape; the kill points run until the
// command finishes on its own.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, CLI_ENTRY, DENO, exec, haveQemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { setRefcount } from "./support/qcow2_edit.ts";
import { FULL_TESTS } from "./support/full.ts";

const ready = built() && haveQemuImg();

/** Same guest contents and the same virtual size (qemu-img compare -s). */
async function sameAs(dir: string, fmt: string, a: string, b: string): Promise<boolean> {
  const r = await exec("qemu-img", ["compare", "-U", "-s", "-f", fmt, "-F", fmt, a, b], dir);
  if (r.code > 1) throw new Error(`qemu-img compare ${a} ${b}: ${r.stderr}`);
  return r.code === 0;
}

/** The first `mib` MiB of an image as raw bytes (qemu-img dd). */
async function head(dir: string, fmt: string, file: string, mib: number): Promise<Uint8Array> {
  await sh(
    dir,
    "qemu-img",
    "dd",
    "-U",
    "-f",
    fmt,
    "-O",
    "raw",
    "bs=1M",
    `count=${mib}`,
    `if=${file}`,
    `of=${file}.head`,
  );
  const b = await Deno.readFile(`${dir}/${file}.head`);
  await Deno.remove(`${dir}/${file}.head`);
  return b;
}

async function killedRun(args: string[], dir: string, step: number) {
  const o = await new Deno.Command(DENO, {
    args: ["run", "-A", CLI_ENTRY, ...args.map((a) => a === "IMG" ? "img" : a)],
    cwd: dir,
    env: { INSTAR_TEST_KILL_AFTER_STEP: String(step) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { killed: o.signal === "SIGKILL", code: o.code, stderr: new TextDecoder().decode(o.stderr) };
}

/**
 * Makes `img` with `make`, runs `args` (with IMG for the copy) to completion
 * once for the "after" contents, then kills it after step 1, 2, ... until it
 * completes unkilled.
 */
async function sweep(
  t: Deno.TestContext,
  name: string,
  fmt: string,
  make: (dir: string, file: string) => Promise<void>,
  args: string[],
  /** A shrink discards before it writes the size: only the first `keptMiB` must read as before. */
  keptMiB?: number,
) {
  await t.step(name, () =>
    withTempDir("instar-crash-", async (dir) => {
      await make(dir, "orig");
      await Deno.copyFile(`${dir}/orig`, `${dir}/full`);
      const done = await exec(DENO, [
        "run",
        "-A",
        CLI_ENTRY,
        ...args.map((a) => a === "IMG" ? "full" : a),
      ], dir);
      assertEquals(done.code, 0, done.stderr);
      let step = 1, killed = 0;
      for (; step < 64; step++) {
        await Deno.copyFile(`${dir}/orig`, `${dir}/img`);
        const r = await killedRun(args, dir, step);
        if (!r.killed) {
          assertEquals(r.code, 0, r.stderr);
          break;
        }
        killed++;
        if (fmt === "qcow2") {
          const c = await exec("qemu-img", ["check", "--output=json", "img"], dir);
          assert(
            c.code === 0 || c.code === 3,
            `after step ${step}: check exit ${c.code}: ${c.stdout}${c.stderr}`,
          );
          const j = JSON.parse(c.stdout);
          assertEquals(j["corruptions"] ?? 0, 0, `after step ${step}: ${c.stdout}`);
        }
        if (keptMiB !== undefined) {
          assertEquals(await head(dir, fmt, "img", keptMiB), await head(dir, fmt, "orig", keptMiB));
        } else {
          assert(
            await sameAs(dir, fmt, "img", "orig") || await sameAs(dir, fmt, "img", "full"),
            `after step ${step}: the image reads neither as before nor as after`,
          );
        }
      }
      assert(killed > 0, "the command finished before its first step: nothing was tested");
      console.log(`    ${name}: killed after each of ${killed} steps`);
    }));
}

async function qcow2(dir: string, file: string, opts: string, size: string, ...io: string[]) {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, file, size);
  if (io.length) await sh(dir, "qemu-io", "-f", "qcow2", ...io.flatMap((c) => ["-c", c]), file);
}

Deno.test(
  { name: "crash safety: SIGKILL after every step of an in-place write", ignore: !ready },
  async (t) => {
    const data = ["write -P 1 0 256k", "write -P 2 3M 64k", "write -c -P 3 5M 64k"];
    await sweep(
      t,
      "qcow2 resize grow (new L1, refcount blocks)",
      "qcow2",
      (d, f) => qcow2(d, f, "cluster_size=512", "8M", ...data),
      ["resize", "-f", "qcow2", "IMG", "+2G"],
    );
    await sweep(
      t,
      "qcow2 resize shrink (discard, L1 and refcount table shrink)",
      "qcow2",
      (d, f) => qcow2(d, f, "cluster_size=4k", "8M", ...data),
      ["resize", "-f", "qcow2", "--shrink", "IMG", "2M"],
      2,
    );
    await sweep(
      t,
      "qcow2 check -r all (leaked clusters)",
      "qcow2",
      async (d, f) => {
        await qcow2(d, f, "cluster_size=4k", "8M", ...data);
        // Refcounts above the references (leaks) on the header, the L1 table
        // and a data cluster: three refcount-block rewrites.
        for (const c of [0, 3, 6]) setRefcount(`${d}/${f}`, c, 2n);
      },
      ["check", "-r", "all", "IMG"],
    );
    await sweep(
      t,
      "vpc resize moving the BAT",
      "vpc",
      async (d, f) => {
        await sh(d, "qemu-img", "create", "-q", "-f", "vpc", f, "10M");
        await sh(d, "qemu-io", "-f", "vpc", "-c", "write -P 4 1M 1M", f);
      },
      ["resize", "-f", "vpc", "IMG", "600M"],
    );
    await sweep(
      t,
      // Past 128 GiB of 1 MiB blocks the BAT moves; qemu-img compare of 200 GiB
      // takes half a minute, so the default run stays below that.
      FULL_TESTS ? "vhdx resize moving the BAT" : "vhdx resize",
      "vhdx",
      async (d, f) => {
        await sh(d, "qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M", f, "16M");
        await sh(d, "qemu-io", "-f", "vhdx", "-c", "write -P 5 2M 1M", f);
      },
      ["resize", "-f", "vhdx", "IMG", FULL_TESTS ? "200G" : "40G"],
    );
  },
);
