// Benchmarks for the sandbox core (issue: info/check/map): runs instar and
// qemu-img alternately on the same images in the same process tree and prints
// medians and ratios, because absolute timings on this machine are noisy.
//
//   scripts/deno.sh task bench:core [--runs N]
//
// Images: the compat.md reference image, and a 2 GiB qcow2 with 16k map
// extents (8192 data clusters, every other 64 KiB cluster of the first 1 GiB).
import { parseArgs } from "node:util";

const { values } = parseArgs({ args: Deno.args, options: { runs: { type: "string", default: "15" } } });
const runs = Number(values.runs);
const root = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();

async function sh(cmd: string[], stdin?: string): Promise<void> {
  const p = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: stdin ? "piped" : "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  if (stdin) {
    const w = p.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const r = await p.output();
  if (!r.success) throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

async function timeOnce(cmd: string[], cwd: string): Promise<number> {
  const t0 = performance.now();
  const r = await new Deno.Command(cmd[0], { args: cmd.slice(1), cwd, stdout: "null", stderr: "null" })
    .output();
  const t = performance.now() - t0;
  if (r.code !== 0 && r.code !== 2 && r.code !== 3) throw new Error(`${cmd.join(" ")} exited ${r.code}`);
  return t;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Alternates the two commands `runs` times (after one warm-up each). */
async function compare(label: string, args: string[], cwd: string): Promise<string> {
  const ours = [deno, "run", "-A", `${root}main.ts`, ...args];
  const theirs = ["qemu-img", ...args];
  await timeOnce(ours, cwd);
  await timeOnce(theirs, cwd);
  const a: number[] = [], b: number[] = [];
  for (let i = 0; i < runs; i++) {
    a.push(await timeOnce(ours, cwd));
    b.push(await timeOnce(theirs, cwd));
  }
  const ma = median(a), mb = median(b);
  return `| ${label} | ${ma.toFixed(1)} ms | ${mb.toFixed(1)} ms | ${(ma / mb).toFixed(2)}x |`;
}

const dir = await Deno.makeTempDir({ prefix: "instar-bench-" });
try {
  await sh(["qemu-img", "create", "-q", "-f", "qcow2", `${dir}/s.qcow2`, "64M"]);
  await sh([
    "qemu-io",
    "-f",
    "qcow2",
    "-c",
    "write -P 0xab 0 1M",
    "-c",
    "write -P 0xcd 4M 512k",
    "-c",
    "write -z 8M 1M",
    "-c",
    "write -P 0x11 32M 64k",
    `${dir}/s.qcow2`,
  ]);
  await sh(["qemu-img", "create", "-q", "-f", "qcow2", `${dir}/big.qcow2`, "2G"]);
  const cmds: string[] = [];
  for (let i = 0; i < 8192; i++) cmds.push(`write -P ${(i % 250) + 1} ${i * 2 * 65536} 65536`);
  await sh(["qemu-io", "-f", "qcow2", `${dir}/big.qcow2`], cmds.join("\n") + "\nquit\n");

  const rows = [
    "| command | instar (median) | qemu-img (median) | ratio |",
    "|---|---|---|---|",
    await compare("info s.qcow2", ["info", "s.qcow2"], dir),
    await compare("info --output=json s.qcow2", ["info", "--output=json", "s.qcow2"], dir),
    await compare("check s.qcow2", ["check", "s.qcow2"], dir),
    await compare("map --output=json big.qcow2 (16k extents)", ["map", "--output=json", "big.qcow2"], dir),
  ];
  console.log(`runs per command: ${runs} (alternating, after one warm-up each)`);
  console.log(rows.join("\n"));
} finally {
  await Deno.remove(dir, { recursive: true });
}
