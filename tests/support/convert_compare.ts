// Shared by the convert -B and -o preallocation tests: the same setup in two
// directories, one command line run by qemu-img in one and by instar in the
// other, then everything qemu-img can say about the two targets compared.
export { io } from "../cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, instarHere, type Outcome, qemuImg, sh, withTempDir } from "../cli_helpers.ts";

export interface CompareCase {
  /** Setup commands (sh -c), run once; the directory is then copied. */
  make: string[];
  /** qemu-img's arguments, the target last. */
  args: string[];
  /** The targets must be the same bytes (else: same content, info and map without offsets). */
  sameBytes?: boolean;
  /** The targets' allocated sizes (st_blocks) must match (preallocation's file layout). */
  sameAllocation?: boolean;
  /** qemu-img check must count the same allocated and compressed clusters (map hides compression). */
  sameCounts?: boolean;
}

async function json(args: string[], cwd: string): Promise<unknown> {
  const r = await qemuImg(args, cwd);
  assertEquals(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** qemu-img info without what depends on the file's layout or the directory. */
async function info(cwd: string, name: string) {
  const i = await json(["info", "--output=json", name], cwd) as Record<string, unknown>;
  delete i["actual-size"];
  return i;
}

/** qemu-img map; offsets dropped (and entries merged) unless the bytes must be the same anyway. */
async function map(cwd: string, name: string, offsets: boolean) {
  const m = await json(["map", "--output=json", name], cwd) as Record<string, unknown>[];
  if (offsets) return m;
  // Without offsets, entries qemu splits only where the host clusters are not contiguous merge.
  const out: Record<string, unknown>[] = [];
  const key = (x: Record<string, unknown>) => JSON.stringify({ ...x, start: 0, length: 0 });
  for (const e of m) {
    delete e.offset;
    const last = out[out.length - 1];
    if (last && key(last) === key(e)) last.length = (last.length as number) + (e.length as number);
    else out.push(e);
  }
  return out;
}

async function exists(path: string) {
  return await Deno.stat(path).then(() => true, () => false);
}

/**
 * Runs the case with qemu-img and instar: stdout, stderr and the exit code
 * must be qemu's; a target qemu-img finished must compare identical with
 * instar's (qemu-img compare), with the same info and map, and pass check.
 * Where qemu-img fails, instar leaves no target behind.
 */
export async function compareConvert(c: CompareCase): Promise<{ want: Outcome; got: Outcome }> {
  let result: { want: Outcome; got: Outcome } | undefined;
  await withTempDir("instar-convert-cmp-", async (root) => {
    await setUp(root, c.make);
    result = await compareIn(root, c);
  });
  return result!;
}

/**
 * One test step a case: `convert -O qcow2 <args> out.qcow2` compared with
 * compareIn (cluster counts too) on images `make` set up once; `after`, when
 * given, runs in the step after the comparison.
 */
export async function convertQcow2Steps(
  t: Deno.TestContext,
  root: string,
  make: string[],
  cases: { name: string; args: string[] }[],
  after?: (args: string[]) => Promise<void>,
): Promise<void> {
  await setUp(root, make);
  for (const c of cases) {
    await t.step(c.name, async () => {
      await compareIn(root, {
        make: [],
        args: ["convert", "-O", "qcow2", ...c.args, "out.qcow2"],
        sameCounts: true,
      });
      if (after) await after(c.args);
    });
  }
}

/** Runs the setup in root/q and root/i (each its own: a copy may move a raw file's holes). */
export async function setUp(root: string, make: string[]): Promise<void> {
  for (const d of ["q", "i"]) {
    await Deno.mkdir(`${root}/${d}`);
    for (const l of make) await sh(`${root}/${d}`, "sh", "-c", l);
  }
}

/** compareConvert in directories setUp made; the targets are removed afterwards. */
export async function compareIn(root: string, c: CompareCase): Promise<{ want: Outcome; got: Outcome }> {
  const q = `${root}/q`, i = `${root}/i`;
  const target = c.args[c.args.length - 1];
  try {
    const want = await qemuImg(c.args, q);
    const got = await instarHere(c.args, i);
    assertEquals(got, asInstar(want), c.args.join(" "));
    if (want.code !== 0) {
      assert(!(await exists(`${i}/${target}`)), "instar left a target behind after an error");
      return { want, got };
    }
    // Each target compared in its own directory: relative backing names resolve the same.
    const cmp = await qemuImg(["compare", `${q}/${target}`, `${i}/${target}`], root);
    assertEquals(cmp.code, 0, cmp.stdout + cmp.stderr);
    assertEquals(await info(i, target), await info(q, target));
    assertEquals(await map(i, target, !!c.sameBytes), await map(q, target, !!c.sameBytes));
    if (c.args.includes("qcow2")) {
      const chk = await qemuImg(["check", target], i);
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
    }
    if (c.sameCounts) {
      const counts = async (d: string) => {
        const j = await json(["check", "--output=json", target], d) as Record<string, unknown>;
        return [j["allocated-clusters"], j["compressed-clusters"]];
      };
      assertEquals(await counts(i), await counts(q), "allocated and compressed clusters");
    }
    if (c.sameBytes) {
      const a = await Deno.readFile(`${q}/${target}`), b = await Deno.readFile(`${i}/${target}`);
      const at = a.findIndex((v, k) => v !== b[k]);
      assert(
        a.length === b.length && at < 0,
        `${target} differs from qemu-img's (${a.length} vs ${b.length}, at ${at})`,
      );
    }
    if (c.sameAllocation) {
      const [a, b] = await Promise.all([Deno.stat(`${q}/${target}`), Deno.stat(`${i}/${target}`)]);
      assertEquals(b.blocks, a.blocks, "allocated size (st_blocks)");
    }
    return { want, got };
  } finally {
    for (const d of [q, i]) await Deno.remove(`${d}/${target}`).catch(() => {});
  }
}

/** Runs an instar-only refusal: exit 1, the message, no target left. */
export async function refused(make: string[], args: string[], message: RegExp): Promise<void> {
  await withTempDir("instar-convert-ref-", async (dir) => {
    for (const l of make) await sh(dir, "sh", "-c", l);
    const got = await instarHere(args, dir);
    assertEquals(got.code, 1, got.stderr);
    assert(message.test(got.stderr), got.stderr);
    assert(!(await exists(`${dir}/${args[args.length - 1]}`)), "instar left a target behind");
  });
}

/**
 * One convert -n case into an existing target: `files` and `${target}.qcow2`
 * (as out.qcow2) copied from root into root/q and root/i; `args` (out.qcow2
 * last) run by qemu-img in q, which must succeed, and by instar in i, which
 * must say the same; the targets must be the same bytes (cmp) and instar's
 * pass qemu-img check. `after` runs before the two directories are removed.
 */
export async function convertIntoCopies(
  root: string,
  files: string[],
  target: string,
  args: string[],
  after?: () => Promise<void>,
): Promise<void> {
  const q = `${root}/q`, i = `${root}/i`;
  for (const d of [q, i]) {
    await Deno.mkdir(d);
    for (const f of files) await Deno.copyFile(`${root}/${f}`, `${d}/${f}`);
    await Deno.copyFile(`${root}/${target}.qcow2`, `${d}/out.qcow2`);
  }
  try {
    const want = await qemuImg(args, q);
    assertEquals(want.code, 0, want.stderr);
    assertEquals(await instarHere(args, i), asInstar(want));
    await sh(root, "cmp", "q/out.qcow2", "i/out.qcow2");
    if (after) await after();
    const chk = await qemuImg(["check", "out.qcow2"], i);
    assert(chk.code === 0, chk.stdout + chk.stderr);
  } finally {
    for (const d of [q, i]) await Deno.remove(d, { recursive: true });
  }
}
