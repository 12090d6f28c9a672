// QEMU's image locks, both ways: while qemu-io holds an image (read-write or
// read-only), every instar command prints what qemu-img prints (stdout,
// stderr, exit code); while instar holds its locks, qemu-img is refused
// exactly as when qemu-io holds the same permissions, and the kernel's lock
// table (/proc/locks) shows the same bytes. A command whose output is one of
// its inputs is refused (directly, through a symlink, as a backing file, and
// with -U, where qemu-img would overwrite its own input).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  assertSameHere,
  built,
  haveQemuImg,
  instarHere,
  type Outcome,
  qemuImg,
  sh,
  withTempDir,
} from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { type HostContext, withHostContext } from "../lib/host/context.ts";
import { type LockMode, LOCKS, takeLock } from "../lib/vmm/image_lock.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const instar = instarHere;

const assertSame = assertSameHere;

const withDir = (fn: (dir: string) => Promise<void>) => withTempDir("instar-locks-", fn);

/** The OFD lock ranges the kernel lists for a file, sorted ("start-end"). */
async function lockBytes(path: string): Promise<string[]> {
  const ino = (await Deno.stat(path)).ino;
  const text = await Deno.readTextFile("/proc/locks");
  return text.split("\n").filter((l) => l.includes("OFDLCK") && l.split(/\s+/)[5]?.endsWith(`:${ino}`))
    .map((l) => l.trim().split(/\s+/).slice(-2).join("-")).sort();
}

/** Runs fn while qemu-io holds `file` (read-only with -r), its locks in place. */
async function whileQemuIoHolds(dir: string, file: string, readOnly: boolean, fn: () => Promise<void>) {
  const child = new Deno.Command("qemu-io", {
    args: [...(readOnly ? ["-r"] : []), "-c", "sleep 100000", file],
    cwd: dir,
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (let i = 0; (await lockBytes(`${dir}/${file}`)).length === 0; i++) {
      if (i > 200) throw new Error("qemu-io took no lock");
      await new Promise((r) => setTimeout(r, 25));
    }
    await fn();
  } finally {
    child.kill("SIGKILL");
    await child.status;
  }
}

/** Takes instar's lock `mode` on `file` (as a command would) until release(). */
async function instarHolds(dir: string, file: string, mode: LockMode): Promise<() => void> {
  const ctx: HostContext = { locks: [] };
  await withHostContext(ctx, () => takeLock(`${dir}/${file}`, mode, file));
  return () => ctx.locks!.forEach((l) => l.release());
}

async function images(dir: string): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "held.qcow2", "64M");
  await sh(dir, "qemu-io", "-c", "write -P 7 0 1M", "held.qcow2");
  await sh(dir, "qemu-img", "snapshot", "-c", "s1", "held.qcow2");
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "other.qcow2", "64M");
}

// Every command instar has, reading or writing held.qcow2.
const COMMANDS = [
  ["info", "held.qcow2"],
  ["info", "-U", "held.qcow2"],
  ["info", "--backing-chain", "top.qcow2"],
  ["check", "held.qcow2"],
  ["check", "-U", "held.qcow2"],
  ["map", "held.qcow2"],
  ["map", "--force-share", "top.qcow2"],
  ["compare", "held.qcow2", "other.qcow2"],
  ["compare", "-U", "held.qcow2", "other.qcow2"],
  ["measure", "-O", "qcow2", "held.qcow2"],
  ["measure", "-U", "-O", "qcow2", "held.qcow2"],
  ["snapshot", "-l", "held.qcow2"],
  ["snapshot", "-l", "-U", "held.qcow2"],
  ["snapshot", "held.qcow2"],
  ["resize", "held.qcow2", "+1M"],
  ["resize", "top.qcow2", "+1M"],
  ["convert", "-O", "raw", "held.qcow2", "out.raw"],
  ["convert", "-U", "-O", "raw", "top.qcow2", "out.raw"],
  ["convert", "-O", "raw", "other.qcow2", "held.qcow2"],
  ["create", "-f", "raw", "held.qcow2", "1M"],
  ["create", "-f", "qcow2", "held.qcow2", "1M"],
];

Deno.test({
  name: "an image qemu-io holds: every command prints what qemu-img prints",
  ignore: !ready,
  fn: () =>
    withDir(async (dir) => {
      await images(dir);
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "held.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
      );
      for (const readOnly of [false, true]) {
        await whileQemuIoHolds(dir, "held.qcow2", readOnly, async () => {
          let refused = 0;
          for (const args of COMMANDS) {
            const q = await assertSame(args, dir);
            if (q.stderr.includes("lock")) refused++;
          }
          // Both kinds of holder refuse some commands and let others through.
          assert(refused > 0 && refused < COMMANDS.length, `${refused} refused`);
        });
      }
    }),
});

Deno.test({
  name: "instar's locks are qemu's: same bytes, same refusals",
  ignore: !ready,
  fn: () =>
    withDir(async (dir) => {
      await images(dir);
      const probes = [
        ["info", "held.qcow2"],
        ["check", "held.qcow2"],
        ["resize", "held.qcow2", "+1M"],
        ["create", "-f", "raw", "held.qcow2", "1M"],
      ];
      for (const [mode, readOnly] of [[LOCKS.write, false], [LOCKS.read, true]] as const) {
        const theirs: { bytes: string[]; outcomes: Outcome[] } = { bytes: [], outcomes: [] };
        await whileQemuIoHolds(dir, "held.qcow2", readOnly, async () => {
          theirs.bytes = await lockBytes(`${dir}/held.qcow2`);
          for (const p of probes) theirs.outcomes.push(await qemuImg(p, dir));
        });
        const release = await instarHolds(dir, "held.qcow2", mode);
        try {
          assertEquals(await lockBytes(`${dir}/held.qcow2`), theirs.bytes);
          const ours: Outcome[] = [];
          for (const p of probes) ours.push(await qemuImg(p, dir));
          assertEquals(ours, theirs.outcomes);
          // qemu-io itself cannot open it for writing while instar holds it.
          const io = await new Deno.Command("qemu-io", { args: ["-c", "quit", "held.qcow2"], cwd: dir })
            .output();
          assertEquals(io.code !== 0, true);
        } finally {
          release();
        }
        assertEquals(await lockBytes(`${dir}/held.qcow2`), []);
      }
    }),
});

Deno.test({
  name: "an output that is one of the inputs is refused",
  ignore: !ready,
  fn: () =>
    withDir(async (dir) => {
      await images(dir);
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "held.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
      );
      await Deno.symlink("held.qcow2", `${dir}/link.qcow2`);
      const before = await Deno.readFile(`${dir}/held.qcow2`);
      for (
        const args of [
          ["convert", "-O", "raw", "held.qcow2", "held.qcow2"],
          ["convert", "-O", "qcow2", "held.qcow2", "link.qcow2"],
          ["convert", "-O", "raw", "top.qcow2", "held.qcow2"],
        ]
      ) {
        const q = await assertSame(args, dir);
        assertEquals(q.code, 1);
      }
      // qemu-img -U would overwrite its own input; instar refuses.
      const i = await instar(["convert", "-U", "-O", "raw", "held.qcow2", "held.qcow2"], dir);
      assertEquals(i.code, 1);
      assert(i.stderr.includes("Refusing to overwrite an image this command reads"), i.stderr);
      assertEquals(await Deno.readFile(`${dir}/held.qcow2`), before);
      // The locks are gone when the commands end.
      assertEquals(await lockBytes(`${dir}/held.qcow2`), []);
    }),
});
