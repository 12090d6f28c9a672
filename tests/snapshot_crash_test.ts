// Crash order of snapshot -c/-a/-d (lib/formats/qcow2/snapshot_plan.ts): the
// applier syncs every step before the next, so a SIGKILL can leave the image
// as it is after any prefix of the steps. For each action and each prefix,
// this test applies the planned steps up to there to a copy of a qemu-made
// image and asserts what the planner's head promises: `qemu-img check -r
// leaks` repairs whatever `qemu-img check` finds (leaks and the OFLAG_COPIED
// flags that go with them) and a second check is clean; every snapshot the
// table lists reads back as that snapshot read before; and the active layer
// reads back as before or as after the command.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { openImage } from "../lib/cli/image.ts";
import { ops } from "../lib/abi/spec.ts";
import { runGuest } from "../lib/vmm/guest.ts";
import type { FilePlan } from "../lib/formats/plan.ts";
import { qcow2Snapshot, type SnapshotAction } from "../lib/formats/qcow2/snapshot.ts";
import { fileSha256 as sha } from "./support/bytes.ts";

await useHostedGuestsWithoutKvm();
const ready = built() && haveQemuImg();

/** The steps instar would apply for `snapshot -<action> name file` (nothing written). */
async function planOf(file: string, action: SnapshotAction, name: string): Promise<FilePlan[]> {
  const img = await openImage(file);
  let steps: FilePlan[] = [];
  await qcow2Snapshot(img.qcow2!, action, name, {
    async scan(args) {
      const r = await runGuest({
        op: "snapshot_scan",
        opCode: ops.SNAPSHOT_SCAN,
        inputs: [{ path: file, format: img.formatCode }],
        args,
      });
      return { records: r.records, fileSize: r.inputs[0].size, guestStatus: r.guestStatus };
    },
    applySteps(s) {
      steps = s;
      return Promise.resolve();
    },
    fail: (lines) => new Error(lines.join("\n")),
    now: () => ({ sec: 1, nsec: 2000 }),
  });
  return steps;
}

async function apply(file: string, steps: FilePlan[]) {
  using f = await Deno.open(file, { read: true, write: true });
  for (const s of steps) {
    for (const p of s.patches) {
      await f.seek(p.offset, Deno.SeekMode.Start);
      if (p.kind === "write") await f.write(p.bytes);
      else if (p.kind === "zero") await f.write(new Uint8Array(Number(p.length)));
      else throw new Error("copy patch in a snapshot plan");
    }
    await f.truncate(Number(s.fileSize));
  }
}

/** id -> SHA-256 of its raw contents ("" for the active layer). */
async function contents(dir: string, file: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const l = await qemuImg(["snapshot", "-l", file], dir);
  const ids = l.stdout.split("\n").slice(2).filter((x) => x.trim()).map((x) => x.split(/\s+/)[0]);
  for (const id of ["", ...ids]) {
    await sh(
      dir,
      "qemu-img",
      "convert",
      ...(id ? ["-l", `snapshot.id=${id}`] : []),
      "-O",
      "raw",
      file,
      "c.raw",
    );
    out.set(id, await sha(`${dir}/c.raw`));
  }
  return out;
}

const ACTIONS: [SnapshotAction, string][] = [["c", "new"], ["a", "s1"], ["d", "s1"]];

/** Applies every prefix of the plan for `snapshot -<action> name` to copies of base.qcow2 and checks each. */
async function crashEveryStep(
  dir: string,
  action: SnapshotAction,
  name: string,
  minSteps: number,
): Promise<FilePlan[]> {
  const base = `${dir}/base.qcow2`;
  const before = await contents(dir, "base.qcow2");
  const steps = await planOf(base, action, name);
  assert(steps.length >= minSteps, `${steps.length} steps`);
  await Deno.copyFile(base, `${dir}/after.qcow2`);
  await apply(`${dir}/after.qcow2`, steps);
  const after = await contents(dir, "after.qcow2");
  for (let k = 0; k <= steps.length; k++) {
    const f = `${dir}/crash.qcow2`;
    await Deno.copyFile(base, f);
    await apply(f, steps.slice(0, k));
    const label = `-${action} crashed after ${k} of ${steps.length} steps`;
    const first = await qemuImg(["check", "crash.qcow2"], dir);
    assert(!/ERROR (?!OFLAG_COPIED)/.test(first.stderr), `${label}: ${first.stderr}`);
    const fix = await qemuImg(["check", "-r", "leaks", "crash.qcow2"], dir);
    assertEquals(fix.code, 0, `${label}: check -r leaks: ${fix.stdout}${fix.stderr}`);
    const clean = await qemuImg(["check", "crash.qcow2"], dir);
    assertEquals(clean.code, 0, `${label}: after repair: ${clean.stdout}${clean.stderr}`);
    const now = await contents(dir, "crash.qcow2");
    const active = now.get("")!;
    assert(active === before.get("") || active === after.get(""), `${label}: active layer`);
    for (const [id, h] of now) {
      if (id) assertEquals(h, before.get(id) ?? after.get(id), `${label}: snapshot ${id}`);
    }
  }
  return steps;
}

for (const [action, name] of ACTIONS) {
  Deno.test({
    name: `snapshot -${action}: a crash after any step leaves at most leaks`,
    ignore: !ready,
    fn: () =>
      withTempDir("instar-snapcrash-", async (dir) => {
        const base = `${dir}/base.qcow2`;
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", base, "8M");
        await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "-c", "write -c -P 2 2M 64k", base);
        await sh(dir, "qemu-img", "snapshot", "-c", "s1", base);
        await sh(dir, "qemu-io", "-c", "write -P 3 512k 1M", "-c", "write -P 4 4M 8k", base);
        await sh(dir, "qemu-img", "snapshot", "-c", "s2", base);
        await sh(dir, "qemu-io", "-c", "write -P 5 0 64k", base);
        await crashEveryStep(dir, action, name, 3);
      }),
  });
}

Deno.test({
  name: "snapshot -c that moves the refcount table: a crash after any step leaves at most leaks",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-snapcrash-", async (dir) => {
      // 512-byte clusters, 64-bit refcounts: the file ends at the 2 MiB the
      // one-cluster table covers, so the L1 copy moves the table (in
      // steps of its own, before the snapshot's).
      const base = `${dir}/base.qcow2`;
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=64",
        base,
        "16M",
      );
      await sh(dir, "qemu-io", "-c", "write -P 1 0 1980k", base);
      const steps = await crashEveryStep(dir, "c", "new", 5);
      const moved = steps.findIndex((st) => st.patches.some((p) => p.offset === 48n));
      const published = steps.findIndex((st) => st.patches.some((p) => p.offset === 60n));
      assert(
        moved >= 1 && moved < published,
        `the table moves (step ${moved}) before the snapshot (${published})`,
      );
    }),
});
