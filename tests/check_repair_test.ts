// check -r leaks|all on qcow2 images qemu-img made, with refcounts edited
// here to make leaks and wrong refcounts (and the dirty bit set as an
// interrupted writer with lazy refcounts leaves it). Two copies of each
// image, one repaired by qemu-img, one by instar, each in its own directory
// under the same name: stdout, stderr (program name aside) and exit code
// must be the same, and so must the repaired files, byte for byte. Where
// instar refuses a repair qemu-img makes (a VHDX), it must say so and leave
// the file unchanged (rebuilds: tests/check_repair_rebuild_test.ts).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { repairBoth } from "./support/check_repair.ts";
import { setIncompat, setRefcount } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  create: string[];
  snapshot?: boolean;
  /** [cluster, refcount] edits */
  edits: [number, bigint][];
  dirty?: boolean;
  corrupt?: boolean;
  args: string[];
}

const CASES: Case[] = [
  ...[1, 2, 4, 8, 16, 32, 64].map((rb): Case => ({
    name: `leaks, refcount_bits=${rb}`,
    create: ["-o", `refcount_bits=${rb}`],
    edits: [[40, 1n], [41, 1n], [8, 1n]],
    args: ["-r", "leaks"],
  })),
  { name: "a refcount above its references", create: [], edits: [[3, 2n]], args: ["-r", "leaks"] },
  { name: "a clean image", create: [], edits: [], args: ["-r", "all"] },
  { name: "-r all, json", create: [], edits: [[40, 1n], [7, 3n]], args: ["-r", "all", "--output=json"] },
  { name: "-q", create: [], edits: [[40, 1n]], args: ["-r", "leaks", "-q"] },
  { name: "compat=0.10", create: ["-o", "compat=0.10"], edits: [[40, 1n]], args: ["-r", "leaks"] },
  {
    name: "4 KiB clusters, leaks past the refcounts qemu keeps in memory",
    create: ["-o", "cluster_size=4096"],
    edits: [[300, 1n], [301, 1n], [9, 2n]],
    args: ["-r", "all"],
  },
  // a shared cluster's refcount too low: -r leaks prints it twice and
  // leaves it (and the OFLAG_COPIED error it causes); -r all fixes it
  ...["leaks", "all"].map((m): Case => ({
    name: `snapshot, a refcount below its references, -r ${m}`,
    create: [],
    snapshot: true,
    edits: [[6, 1n]],
    args: ["-r", m],
  })),
  {
    name: "snapshot, a refcount above its references, -r all",
    create: [],
    snapshot: true,
    edits: [[6, 3n]],
    args: ["-r", "all"],
  },
  // the dirty bit (lazy refcounts): cleared by a repair that leaves no corruption
  ...([[], [[40, 1n]]] as [number, bigint][][]).map((edits): Case => ({
    name: `dirty bit, ${edits.length} leaks`,
    create: ["-o", "lazy_refcounts=on"],
    edits,
    dirty: true,
    args: ["-r", "leaks"],
  })),
  // a zero refcount needs a rebuild: -r leaks fails as qemu does, writing
  // nothing but the cleared dirty bit (qemu's close of the image)
  { name: "-r leaks on a zero refcount", create: [], edits: [[40, 1n], [5, 0n]], args: ["-r", "leaks"] },
  {
    name: "-r leaks on a zero refcount, dirty bit",
    create: ["-o", "lazy_refcounts=on"],
    edits: [[5, 0n]],
    dirty: true,
    args: ["-r", "leaks"],
  },
  // dirty and corrupt bits with a corruption left: the dirty bit goes, the corrupt bit stays
  {
    name: "dirty and corrupt bits, a corruption -r leaks leaves",
    create: [],
    snapshot: true,
    edits: [[6, 1n], [40, 1n]],
    dirty: true,
    corrupt: true,
    args: ["-r", "leaks"],
  },
];

async function makeImage(dir: string, c: Case): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...c.create, "img.qcow2", "64M");
  await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "img.qcow2");
  if (c.snapshot) await sh(dir, "qemu-img", "snapshot", "-c", "s1", "img.qcow2");
  for (const [cluster, v] of c.edits) setRefcount(`${dir}/img.qcow2`, cluster, v);
  if (c.dirty || c.corrupt) setIncompat(`${dir}/img.qcow2`, (c.dirty ? 1n : 0n) | (c.corrupt ? 2n : 0n));
}

Deno.test({ name: "check -r repairs as qemu-img repairs, byte for byte", ignore: !ready }, async (t) => {
  for (const c of CASES) {
    await t.step(c.name, async () => {
      await repairBoth("instar-repair-", c.args, (dir) => makeImage(dir, c));
    });
  }
});

Deno.test(
  { name: "check -r refuses what instar does not repair, writing nothing", ignore: !ready },
  async (t) => {
    const refusals: { name: string; fmt: string; make: (dir: string) => Promise<void>; args: string[] }[] = [
      {
        name: "a vhdx (qemu's repair replays the log and rewrites the headers)",
        fmt: "vhdx",
        make: (d) => sh(d, "qemu-img", "create", "-q", "-f", "vhdx", "img.qcow2", "8M"),
        args: ["-r", "all"],
      },
    ];
    for (const c of refusals) {
      await t.step(c.name, async () => {
        const dir = await Deno.makeTempDir({ prefix: "instar-repair-" });
        try {
          await c.make(dir);
          const before = await Deno.readFile(`${dir}/img.qcow2`);
          const r = await instarHere(["check", ...c.args, "img.qcow2"], dir);
          assertEquals(r.code, 1, r.stderr);
          assert(/^instar: Could not repair 'img.qcow2': .*\n$/.test(r.stderr), r.stderr);
          assertEquals(await Deno.readFile(`${dir}/img.qcow2`), before, "the image changed");
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      });
    }
  },
);
