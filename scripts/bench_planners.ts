// Benchmarks for the planner commands (issue: create, measure, resize): each
// case runs instar and qemu-img alternately on fresh, identical inputs and
// prints medians and their ratio, because absolute timings here are noisy.
// Every resize result is compared byte for byte with qemu-img's; a mismatch
// aborts the run.
//
// snapshot -c results are compared with the snapshot dates masked.
//
//   scripts/deno.sh task bench:planners [--runs N]
import { parseArgs } from "node:util";

const { values } = parseArgs({ args: Deno.args, options: { runs: { type: "string", default: "5" } } });
const runs = Number(values.runs);
const root = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();

async function run(cmd: string[], cwd: string): Promise<void> {
  const r = await new Deno.Command(cmd[0], { args: cmd.slice(1), cwd, stdout: "null", stderr: "piped" })
    .output();
  if (!r.success) throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

async function timed(cmd: string[], cwd: string): Promise<number> {
  const t0 = performance.now();
  await run(cmd, cwd);
  return performance.now() - t0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function same(a: string, b: string): Promise<boolean> {
  return (await new Deno.Command("cmp", { args: ["-s", a, b] }).output()).code === 0;
}

interface Case {
  label: string;
  /** Makes the input (qemu-img commands run in the work directory), or nothing. */
  setup?: string[][];
  /** The command after `instar`/`qemu-img`; FILE is replaced by each tool's file. */
  args: string[];
  /** The file each tool writes, compared afterwards (resize only). */
  compare?: boolean;
  /** Compared with each snapshot's date fields masked (snapshot -c). */
  compareSnapshot?: boolean;
  /** Makes the input once, before the runs (it is then copied for each). */
  template?: (path: string, dir: string) => Promise<void>;
}

/** The file with every snapshot table entry's date_sec/date_nsec zeroed. */
async function maskedSnapshots(path: string): Promise<Uint8Array> {
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  let at = Number(dv.getBigUint64(64));
  for (let i = 0, nb = dv.getUint32(60); i < nb; i++) {
    at = (at + 7) & ~7;
    b.fill(0, at + 16, at + 24);
    at += 40 + dv.getUint32(at + 36) + dv.getUint16(at + 12) + dv.getUint16(at + 14);
  }
  return b;
}

/** A qcow2 image with 4 KiB clusters and one written cluster in each of `tables` L2 tables. */
async function manyL2Tables(path: string, dir: string, tables: number): Promise<void> {
  // An L2 table of 4 KiB clusters maps 2 MiB: a sparse raw file with 4 KiB
  // of data every 2 MiB, converted (qemu-io writes one by one take minutes).
  const raw = `${dir}/template.raw`;
  using f = await Deno.open(raw, { write: true, create: true, truncate: true });
  await f.truncate(tables * 2 * 1024 * 1024);
  for (let t = 0; t < tables; t++) {
    await f.seek(t * 2 * 1024 * 1024, Deno.SeekMode.Start);
    await f.write(new Uint8Array(4096).fill(1 + (t % 250)));
  }
  await run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k", raw, path], dir);
  await Deno.remove(raw);
}

const cases: Case[] = [
  { label: "`create -f qcow2 FILE 1G`", args: ["create", "-q", "-f", "qcow2", "FILE", "1G"] },
  {
    label: "`create -f qcow2 -o preallocation=falloc FILE 10G`",
    args: ["create", "-q", "-f", "qcow2", "-o", "preallocation=falloc", "FILE", "10G"],
  },
  { label: "`measure -O qcow2 --size 1G`", args: ["measure", "-O", "qcow2", "--size", "1G"] },
  {
    label: "`resize FILE 2T` (empty 1 TiB qcow2)",
    setup: [["create", "-q", "-f", "qcow2", "FILE", "1T"]],
    args: ["resize", "-q", "FILE", "2T"],
    compare: true,
  },
  {
    label: "`resize --preallocation=falloc FILE +2G` (64 MiB qcow2)",
    setup: [["create", "-q", "-f", "qcow2", "FILE", "64M"]],
    args: ["resize", "-q", "--preallocation=falloc", "FILE", "+2G"],
    compare: true,
  },
  {
    label: "`resize --preallocation=metadata FILE +2G` (64 MiB qcow2)",
    setup: [["create", "-q", "-f", "qcow2", "FILE", "64M"]],
    args: ["resize", "-q", "--preallocation=metadata", "FILE", "+2G"],
    compare: true,
  },
  {
    label: "`resize FILE 10G`, 512 B clusters (refcount table moves)",
    setup: [["create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", "FILE", "64M"]],
    args: ["resize", "-q", "FILE", "10G"],
    compare: true,
  },
  {
    // Issue 14's number: qcow2_snapshot_create walks every L2 table.
    label: "`snapshot -c s FILE` (10,000 L2 tables, 4 KiB clusters)",
    template: (path, dir) => manyL2Tables(path, dir, 10000),
    args: ["snapshot", "-c", "s", "FILE"],
    compareSnapshot: true,
  },
];

const dir = await Deno.makeTempDir({ prefix: "instar-bench-planners-" });
try {
  console.log(`| command | instar | qemu-img | ratio |\n|---|---|---|---|`);
  for (const c of cases) {
    const ours: number[] = [], theirs: number[] = [];
    for (let i = 0; i <= runs; i++) {
      const files = [`${dir}/i.img`, `${dir}/q.img`];
      for (const f of files) await Deno.remove(f).catch(() => {});
      if (c.template) {
        const t = `${dir}/template.img`;
        if (i === 0) await c.template(t, dir);
        for (const f of files) await Deno.copyFile(t, f);
      }
      for (const s of c.setup ?? []) {
        await run(["qemu-img", ...s.map((a) => (a === "FILE" ? files[1] : a))], dir);
        await Deno.copyFile(files[1], files[0]);
      }
      // Alternate which tool goes first: the page cache favours the second.
      const order = i % 2 ? [1, 0] : [0, 1];
      for (const k of order) {
        const args = c.args.map((a) => (a === "FILE" ? files[k] : a));
        const cmd = k === 0 ? [deno, "run", "-A", `${root}main.ts`, ...args] : ["qemu-img", ...args];
        const t = await timed(cmd, dir);
        if (i > 0) (k === 0 ? ours : theirs).push(t); // run 0 warms up
      }
      if (c.compare && !(await same(files[0], files[1]))) throw new Error(`${c.label}: files differ`);
      if (c.compareSnapshot) {
        const [a, b] = await Promise.all(files.map(maskedSnapshots));
        if (a.length !== b.length || a.some((v, k) => v !== b[k])) {
          throw new Error(`${c.label}: files differ`);
        }
      }
    }
    const [a, b] = [median(ours), median(theirs)];
    console.log(`| ${c.label} | ${a.toFixed(1)} ms | ${b.toFixed(1)} ms | ${(a / b).toFixed(2)} |`);
    await Deno.remove(`${dir}/template.img`).catch(() => {});
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
