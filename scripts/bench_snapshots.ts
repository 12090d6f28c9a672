// `deno task bench:snapshots`: info and map of a qcow2 with 65,536 internal
// snapshots (issue 14's goal: at most qemu-img's time, at most twice its
// memory). The image is qemu-img's one-snapshot qcow2 with its snapshot
// table copied out (tests/support/many_snapshots.ts). Each command runs
// through the direct CLI (`deno run -A main.ts`), through the client and a
// warm `instar serve`, and as qemu-img 7.2, alternately; prints the median
// wall time and the peak RSS of the process the caller starts (GNU time's
// %M), and for the client path also the service's peak RSS (VmHWM), which
// holds the decoded list while the call runs.
//
//   scripts/deno.sh task bench:snapshots [--runs N] [--count N]
import { parseArgs } from "node:util";
import { manySnapshots } from "../tests/support/many_snapshots.ts";
import { startServiceBench } from "./bench_service_setup.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { runs: { type: "string", default: "5" }, count: { type: "string", default: "65536" } },
});
const RUNS = Number(values.runs);
const DENO = Deno.execPath();
const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const bench = await startServiceBench("instar-bench-snap-");
const { dir, env } = bench;

/** Wall time and the peak RSS (KiB) of one run, by GNU time. */
async function timed(cmd: string, args: string[]): Promise<{ ms: number; kib: number }> {
  const t0 = performance.now();
  const r = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "%M", cmd, ...args],
    cwd: dir,
    env,
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  const err = new TextDecoder().decode(r.stderr).trim().split("\n");
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${err.join(" ")}`);
  return { ms, kib: Number(err[err.length - 1]) };
}

function hwmKib(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  return m ? Number(m[1]) : NaN;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  await bench.sh("qemu-img", "create", "-q", "-f", "qcow2", "one.qcow2", "64M");
  await bench.sh("qemu-img", "snapshot", "-c", "s", "one.qcow2");
  await manySnapshots(`${dir}/one.qcow2`, `${dir}/many.qcow2`, Number(values.count));
  const runners: [string, string, string[]][] = [
    ["qemu-img", "qemu-img", []],
    ["direct CLI", DENO, ["run", "-A", `${REPO}/main.ts`]],
    ["client", bench.client, []],
  ];
  console.log(
    `${values.count} snapshots, ${RUNS} runs per cell (median time; peak RSS of the started process)`,
  );
  console.log(
    "| command | qemu-img | direct CLI | ratio | client + service | ratio | service peak RSS |",
  );
  console.log("|---|---|---|---|---|---|---|");
  const ops = [
    ["info", "many.qcow2"],
    ["info", "--output=json", "many.qcow2"],
    ["map", "--output=json", "many.qcow2"],
    ["snapshot", "-l", "many.qcow2"],
  ];
  for (const op of ops) {
    const ms: Record<string, number[]> = {};
    const kib: Record<string, number[]> = {};
    for (const [, cmd, pre] of runners) await timed(cmd, [...pre, ...op]); // warm-up
    for (let i = 0; i < RUNS; i++) {
      for (const [name, cmd, pre] of runners) {
        const r = await timed(cmd, [...pre, ...op]);
        (ms[name] ??= []).push(r.ms);
        (kib[name] ??= []).push(r.kib);
      }
    }
    const cell = (n: string) =>
      `${(median(ms[n]) / 1000).toFixed(2)} s / ${(median(kib[n]) / 1024).toFixed(0)} MB`;
    const q = median(ms["qemu-img"]);
    console.log(
      `| ${op.join(" ")} | ${cell("qemu-img")} | ${cell("direct CLI")} | ${
        (median(ms["direct CLI"]) / q).toFixed(2)
      } | ` +
        `${cell("client")} | ${(median(ms["client"]) / q).toFixed(2)} | ${
          (hwmKib(bench.pid) / 1024).toFixed(0)
        } MB |`,
    );
  }
} finally {
  await bench.stop();
}
