// snapshot -c/-d where qemu 7.2 has to grow the refcount table
// (alloc_refcount_block -> qcow2_refcount_area) against qemu-img on copies
// of the same image: 512-byte clusters and 64-bit refcounts, so one refcount
// block covers 64 clusters and the one-cluster table 2 MiB of file; the
// writes leave the file exactly at that edge, so the snapshot's first
// allocation needs a 65th block. Each case asserts that qemu's own command
// moved the table (the case cannot pass without the growth), then: the same
// output and exit code; the files byte-identical but for the new snapshot's
// date fields (masked copies compared with cmp); `qemu-img check` clean;
// `qemu-img info --output=json` the same but for the allocation (actual-size); the raw contents of the active
// layer and every snapshot the same.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { reftableOffset, sameContents, sameFiles, SMALL_REFCOUNTS as OPTS } from "./support/growth.ts";

await useHostedGuestsWithoutKvm();
const ready = built() && haveQemuImg();

/** A copy of `path` with each snapshot's date_sec and date_nsec zeroed. */
async function masked(path: string, out: string) {
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  const nb = dv.getUint32(60);
  let at = Number(dv.getBigUint64(64));
  for (let i = 0; i < nb; i++) {
    at = (at + 7) & ~7;
    b.fill(0, at + 16, at + 24);
    at += 40 + dv.getUint32(at + 36) + dv.getUint16(at + 12) + dv.getUint16(at + 14);
  }
  await Deno.writeFile(out, b);
}

async function same(dir: string, label: string) {
  await masked(`${dir}/q.qcow2`, `${dir}/q.masked`);
  await masked(`${dir}/i.qcow2`, `${dir}/i.masked`);
  await sameFiles(dir, label, ["q.masked", "i.masked"], false);
  await sameContents(dir, label);
}

interface Case {
  name: string;
  /** qemu-io writes and qemu-img snapshot commands that make the image. */
  setup: string[][];
  /** The snapshot command compared (its table growth asserted). */
  snap: string[];
  /** Compared afterwards (no growth asserted). */
  then?: string[][];
}

const CASES: Case[] = [
  {
    // The file ends at 2 MiB: the L1 copy needs block 64, past the table.
    name: "-c: the L1 copy needs a block past the table",
    setup: [["io", "write -P 1 0 1980k"]],
    snap: ["-c", "s1"],
    then: [["-c", "s2"], ["-d", "s1"]],
  },
  {
    // The table moves while the L1 copy is allocated; the new snapshot
    // table then lands in the clusters of the old refcount table.
    name: "-c: the snapshot table reuses the old refcount table",
    setup: [["io", "write -P 1 0 1976k"]],
    snap: ["-c", "s1"],
  },
  {
    // Two snapshots, then data that fills the holes and ends the file at
    // 2 MiB: -d allocates the smaller table past the last block.
    name: "-d: the new snapshot table needs a block past the table",
    setup: [["io", "write -P 1 0 1900k"], ["snap", "-c", "a"], ["snap", "-c", "b"], [
      "io",
      "write -P 2 8M 71k",
    ]],
    snap: ["-d", "a"],
    then: [["-a", "b"]],
  },
];

for (const c of CASES) {
  Deno.test({
    name: `snapshot with a growing refcount table as qemu-img: ${c.name}`,
    ignore: !ready,
    fn: () =>
      withTempDir("instar-snapgrow-", async (dir) => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...OPTS, "q.qcow2", "16M");
        for (const [kind, ...args] of c.setup) {
          if (kind === "io") await sh(dir, "qemu-io", "-c", args[0], "q.qcow2");
          else await sh(dir, "qemu-img", "snapshot", ...args, "q.qcow2");
        }
        await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
        const before = await reftableOffset(`${dir}/q.qcow2`);
        for (const [n, args] of [c.snap, ...(c.then ?? [])].entries()) {
          const label = `${c.name}: snapshot ${args.join(" ")}`;
          const q = await qemuImg(["snapshot", ...args, "q.qcow2"], dir);
          const i = await instarHere(["snapshot", ...args, "i.qcow2"], dir);
          assertEquals(i, asInstar({ ...q, stderr: q.stderr.replaceAll("q.qcow2", "i.qcow2") }), label);
          assertEquals(q.code, 0, label);
          if (n === 0) {
            assert(await reftableOffset(`${dir}/q.qcow2`) !== before, `${label}: qemu kept the table`);
          }
          await same(dir, label);
        }
      }),
  });
}
