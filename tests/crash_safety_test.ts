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

/**
 * What a kill may leave in a qcow2: at most leaks (check exit 0 or 3), or
 * one of the two windows no order of writes avoids: OFLAG_COPIED out of
 * step with a refcount that just changed (the flag and the refcount live in
 * different clusters; the planners take the side where qemu at worst copies
 * a cluster it could have written in place), or the dirty bit set while
 * refcounts are rebuilt (qemu's make_completely_empty: opening the image
 * repairs it). In those cases `check -r all` must give a clean image.
 */
async function checkAfterKill(dir: string, file: string, step: number) {
  const c = await exec("qemu-img", ["check", file], dir);
  if (c.code === 0 || c.code === 3) return;
  const errors = (c.stdout + c.stderr).split("\n").filter((l) => l.startsWith("ERROR"));
  const header = await Deno.readFile(`${dir}/${file}`).then((b) => b.subarray(0, 80));
  const dirty = header.length >= 80 && (header[79] & 1) === 1;
  assert(
    dirty || (errors.length > 0 && errors.every((l) => l.startsWith("ERROR OFLAG_COPIED"))),
    `${file} after step ${step}: check exit ${c.code}: ${c.stdout}${c.stderr}`,
  );
  await Deno.copyFile(`${dir}/${file}`, `${dir}/${file}.fix`);
  await sh(dir, "qemu-img", "check", "-q", "-r", "all", `${file}.fix`).catch(() => {});
  const r = await exec("qemu-img", ["check", `${file}.fix`], dir);
  await Deno.remove(`${dir}/${file}.fix`);
  assertEquals(r.code, 0, `${file} after step ${step}, repaired: ${r.stdout}${r.stderr}`);
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
        if (fmt === "qcow2") await checkAfterKill(dir, "img", step);
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

/**
 * commit: the overlay `img` over `base` (both fresh for every kill point).
 * Killed after any step, both files check with at most leaks, and the
 * overlay still reads as it did: the base holds a prefix of the commit's
 * writes, and the overlay is emptied only after the base has them all.
 */
async function commitSweep(t: Deno.TestContext, name: string, opts: string, args: string[]) {
  await t.step(name, () =>
    withTempDir("instar-crash-", async (dir) => {
      await qcow2(dir, "base.orig", opts, "8M", "write -P 1 0 1M", "write -P 2 4M 64k");
      await Deno.copyFile(`${dir}/base.orig`, `${dir}/base`);
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        "-b",
        "base",
        "-F",
        "qcow2",
        "img.orig",
      );
      await sh(
        dir,
        "qemu-io",
        "-c",
        "write -P 3 512k 1M",
        "-c",
        "write -z 4M 64k",
        "-c",
        "write -P 4 7M 64k",
        "img.orig",
      );
      await Deno.copyFile(`${dir}/img.orig`, `${dir}/img`);
      await sh(dir, "qemu-img", "convert", "-O", "raw", "img", "view.raw");
      let killed = 0;
      for (let step = 1; step < 64; step++) {
        await Deno.copyFile(`${dir}/base.orig`, `${dir}/base`);
        await Deno.copyFile(`${dir}/img.orig`, `${dir}/img`);
        const r = await killedRun(args, dir, step);
        if (!r.killed) {
          assertEquals(r.code, 0, r.stderr);
          break;
        }
        killed++;
        for (const f of ["base", "img"]) await checkAfterKill(dir, f, step);
        const v = await exec("qemu-img", ["compare", "-U", "-F", "raw", "img", "view.raw"], dir);
        assertEquals(v.code, 0, `after step ${step}: the overlay reads differently: ${v.stdout}${v.stderr}`);
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
    const snap = (d: string, f: string) =>
      qcow2(d, f, "cluster_size=4k", "8M", ...data).then(() => sh(d, "qemu-img", "snapshot", "-c", "one", f))
        .then(() => sh(d, "qemu-io", "-c", "write -P 9 0 64k", "-c", "write -P 8 6M 4k", f));
    await sweep(t, "qcow2 snapshot -c", "qcow2", snap, ["snapshot", "-c", "two", "IMG"]);
    await sweep(t, "qcow2 snapshot -d", "qcow2", snap, ["snapshot", "-d", "one", "IMG"]);
    // -a changes what the image reads: before (the active layer) or after (snapshot one).
    await sweep(t, "qcow2 snapshot -a", "qcow2", snap, ["snapshot", "-a", "one", "IMG"]);
    await commitSweep(t, "qcow2 commit (overlay emptied)", "cluster_size=4k", ["commit", "img"]);
    await commitSweep(t, "qcow2 commit -d, 512-byte clusters", "cluster_size=512", ["commit", "-d", "img"]);
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

Deno.test(
  {
    name: "crash safety: SIGKILL after every step of an amend that lays out new refcount structures",
    ignore: !ready,
  },
  async (t) => {
    // 64-bit refcounts at 512-byte clusters, the file at the 2 MiB the
    // one-cluster table covers: the 16-bit blocks' allocations move the old
    // table (its own steps), then the width switches.
    await sweep(
      t,
      "qcow2 amend refcount_bits=16 moving the old table",
      "qcow2",
      (d, f) => qcow2(d, f, "cluster_size=512,refcount_bits=64", "16M", "write -P 1 0 1980k"),
      ["amend", "-o", "refcount_bits=16", "IMG"],
    );
    // An overlay's plain zero clusters in L2 tables a snapshot shares, past
    // a block's edge (7 s more: the whole run only).
    if (FULL_TESTS) {
      await sweep(
        t,
        "qcow2 amend compat=0.10 of an overlay (zero clusters allocated, shared L2 tables)",
        "qcow2",
        async (d, f) => {
          await qcow2(d, "base", "cluster_size=512", "4M", "write -P 7 0 4M");
          await sh(
            d,
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "-b",
            "base",
            "-F",
            "qcow2",
            f,
          );
          await sh(d, "qemu-io", "-c", "write -P 1 0 100k", "-c", "write -z 1M 64k", f);
          await sh(d, "qemu-img", "snapshot", "-c", "s1", f);
        },
        ["amend", "-o", "compat=0.10", "IMG"],
      );
    }
  },
);
