// Per-call cost through the thin client and a warm `instar serve`, against
// qemu-img and the direct Deno CLI, in the same run (docs/bench.md):
//   scripts/deno.sh task bench:service [--runs N] [--loop N]
// 1. info and check of a small qcow2 made by qemu-img (and measure --size,
//    which needs no guest): median wall time per call of each, and ratios;
// 2. `info` N times in a loop (default 1000), client vs qemu-img: totals;
// 3. the service's RSS before and after the loop, and its peak (VmHWM).
// Every call is a fresh process spawned the same way, as a caller would.
import { parseArgs } from "node:util";
import { startServiceBench } from "./bench_service_setup.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { runs: { type: "string", default: "31" }, loop: { type: "string", default: "1000" } },
});
const RUNS = Number(values.runs);
const LOOP = Number(values.loop);
const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const DENO = Deno.execPath();

const bench = await startServiceBench("instar-bench-svc-");
const { dir, env, client } = bench;

async function time(cmd: string, args: string[]): Promise<{ ms: number; code: number }> {
  const t0 = performance.now();
  const r = await new Deno.Command(cmd, { args, cwd: dir, env, stdout: "null", stderr: "null" }).output();
  return { ms: performance.now() - t0, code: r.code };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of Deno.readTextFileSync(`/proc/${pid}/status`).split("\n")) {
    const m = /^(\w+):\s+(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

try {
  await bench.sh("qemu-img", "create", "-q", "-f", "qcow2", "ref.qcow2", "1G");
  await bench.sh("qemu-io", "-f", "qcow2", "-c", "write -P 5 0 4M", "-c", "write -P 6 512M 1M", "ref.qcow2");
  const kvmOk = (await time(client, ["info", "ref.qcow2"])).code === 0;
  const ops = [["info", "ref.qcow2"], ["check", "ref.qcow2"], ["measure", "-O", "qcow2", "--size", "1G"]];
  const runners: [string, string, string[]][] = [
    ["client+service", client, []],
    ["qemu-img", "qemu-img", []],
    ["direct CLI", DENO, ["run", "-A", `${REPO}/main.ts`]],
  ];
  console.log(
    `instar client/service bench: ${RUNS} runs per cell (median), ${navigator.hardwareConcurrency} cores`,
  );
  if (!kvmOk) {
    console.log(
      "WARNING: instar info failed here (no working /dev/kvm?): info/check rows time the error path",
    );
  }
  console.log("| op | qemu-img ms | client ms | client / qemu-img | direct CLI ms | direct / qemu-img |");
  console.log("|---|---|---|---|---|---|");
  for (const op of ops) {
    const med: Record<string, number> = {};
    for (const [name, cmd, pre] of runners) {
      await time(cmd, [...pre, ...op]); // warm-up
      const xs: number[] = [];
      const n = name === "direct CLI" ? Math.min(RUNS, 11) : RUNS;
      for (let i = 0; i < n; i++) xs.push((await time(cmd, [...pre, ...op])).ms);
      med[name] = median(xs);
    }
    const q = med["qemu-img"];
    console.log(
      `| ${op.join(" ")} | ${q.toFixed(2)} | ${med["client+service"].toFixed(2)} | ` +
        `${(med["client+service"] / q).toFixed(2)}x | ${med["direct CLI"].toFixed(1)} | ` +
        `${(med["direct CLI"] / q).toFixed(1)}x |`,
    );
  }

  const before = status(bench.pid);
  const loop = async (cmd: string) => {
    const t0 = performance.now();
    let failed = 0;
    for (let i = 0; i < LOOP; i++) if ((await time(cmd, ["info", "ref.qcow2"])).code !== 0) failed++;
    return { s: (performance.now() - t0) / 1000, failed };
  };
  const c = await loop(client);
  const q = await loop("qemu-img");
  const after = status(bench.pid);
  console.log(
    `\n${LOOP} x info in a loop: client ${c.s.toFixed(2)} s, qemu-img ${q.s.toFixed(2)} s, ` +
      `ratio ${(c.s / q.s).toFixed(2)}x (non-zero exits: client ${c.failed}, qemu-img ${q.failed})`,
  );
  console.log(
    `service RSS: ${before.VmRSS} before the loop, ${after.VmRSS} after; peak (VmHWM) ${after.VmHWM}`,
  );
} finally {
  await bench.stop();
}
