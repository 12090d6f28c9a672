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
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();
const ready = built() && haveQemuImg();

const OPTS = ["-o", "cluster_size=512,refcount_bits=64"];

/** The header's refcount table offset. */
async function reftableOffset(path: string): Promise<bigint> {
  const f = await Deno.open(path);
  try {
    const b = new Uint8Array(8);
    await f.seek(48, Deno.SeekMode.Start);
    await f.read(b);
    return new DataView(b.buffer).getBigUint64(0);
  } finally {
    f.close();
  }
}

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
  const cmp = await exec("cmp", ["q.masked", "i.masked"], dir);
  assertEquals(cmp.code, 0, `${label}: files differ: ${cmp.stdout}${cmp.stderr}`);
  const check = await qemuImg(["check", "i.qcow2"], dir);
  assertEquals(check.code, 0, `${label}: check: ${check.stdout}${check.stderr}`);
  const info = async (f: string) => {
    const o = JSON.parse((await qemuImg(["info", "--output=json", f], dir)).stdout);
    // actual-size is the file system's allocation (qemu's writes leave it
    // a block larger here); the bytes themselves are compared with cmp.
    delete o.filename, delete o["actual-size"];
    for (const s of o.snapshots ?? []) delete s["date-sec"], delete s["date-nsec"];
    return o;
  };
  assertEquals(await info("i.qcow2"), await info("q.qcow2"), `${label}: info`);
  const list = (await qemuImg(["snapshot", "-l", "i.qcow2"], dir)).stdout;
  const ids = list.split("\n").slice(2).filter((l) => l.trim()).map((l) => l.split(/\s+/)[0]);
  for (const id of ["", ...ids]) {
    const l = id ? ["-l", `snapshot.id=${id}`] : [];
    await sh(dir, "qemu-img", "convert", ...l, "-O", "raw", "q.qcow2", "q.raw");
    await sh(dir, "qemu-img", "convert", ...l, "-O", "raw", "i.qcow2", "i.raw");
    const c = await exec("cmp", ["q.raw", "i.raw"], dir);
    assertEquals(c.code, 0, `${label}: contents of ${id || "the active layer"}`);
  }
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
