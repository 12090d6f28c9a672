// `deno task bench:pipeline`: `-` for stdin and stdout (docs/pipelines.md)
// against the file-to-file runs and against qemu-img, which must stage the
// stream in a file first. Makes the half-random raw image of docs/bench.md
// (scripts/gen_bench_image.ts, default 2 GiB) and a qcow2 copy, then times
// each row alternately with its rivals, medians over --runs:
//   qcow2 → stdout raw:  instar convert -O raw IN - | cat > out
//                        vs instar file-to-file, vs qemu-img convert to a file then cat
//   stdin raw → qcow2:   cat in.raw | instar convert -f raw -O qcow2 - out
//                        vs instar file-to-file, vs cat > staged; qemu-img convert staged
//   stdin vmdk → raw:    cat in.vmdk | instar convert -f vmdk -O raw - out (streamOptimized, one pass)
//                        vs instar file-to-file, vs cat > staged; qemu-img convert staged
// Needs /dev/kvm (not run by the test suite). --cli runs another entry point
// (tests/support/hosted_main.ts: a smoke run, not product numbers).
// Usage: deno task bench:pipeline [--size-mib N] [--runs N] [--dir DIR] [--cli PATH]
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "size-mib": { type: "string", default: "2048" },
    runs: { type: "string", default: "3" },
    dir: { type: "string" },
    cli: { type: "string" },
  },
});
const runs = Number(values.runs);
const repo = new URL("..", import.meta.url).pathname;
const dir = values.dir ?? await Deno.makeTempDir({ prefix: "instar-bench-pipe-" });
const deno = Deno.execPath();
const cli = values.cli ?? `${repo}main.ts`;
const I = `${deno} run -A ${cli}`;

/** Times one shell pipeline (pipefail: any failing stage fails the run). */
async function time(script: string): Promise<number> {
  await Deno.remove(`${dir}/out`).catch(() => {});
  await Deno.remove(`${dir}/staged`).catch(() => {});
  await new Deno.Command("sync").output();
  const t0 = performance.now();
  const r = await new Deno.Command("bash", {
    args: ["-o", "pipefail", "-c", script],
    cwd: dir,
    env: { I },
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  if (r.code !== 0) throw new Error(`${script} failed: ${new TextDecoder().decode(r.stderr)}`);
  return ms;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

console.error(`making the ${values["size-mib"]} MiB half-random image in ${dir}`);
await time(`${deno} run -A ${repo}scripts/gen_bench_image.ts half.raw ${values["size-mib"]}`);
await time("qemu-img convert -f raw -O qcow2 half.raw half.qcow2");
await time("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized half.raw half.vmdk");

const rows: [string, string[]][] = [
  ["qcow2 → raw on stdout", [
    "$I convert -O raw half.qcow2 - | cat > out",
    "$I convert -O raw half.qcow2 out",
    "qemu-img convert -O raw half.qcow2 staged && cat staged > out",
  ]],
  ["raw on stdin → qcow2", [
    "cat half.raw | $I convert -f raw -O qcow2 - out",
    "$I convert -f raw -O qcow2 half.raw out",
    "cat half.raw > staged && qemu-img convert -f raw -O qcow2 staged out",
  ]],
  ["streamOptimized vmdk on stdin → raw", [
    "cat half.vmdk | $I convert -f vmdk -O raw - out",
    "$I convert -f vmdk -O raw half.vmdk out",
    "cat half.vmdk > staged && qemu-img convert -f vmdk -O raw staged out",
  ]],
  ["qcow2 → qcow2 on stdout", [
    "$I convert -O qcow2 half.qcow2 - | cat > out",
    "$I convert -O qcow2 half.qcow2 out",
    "qemu-img convert -O qcow2 half.qcow2 staged && cat staged > out",
  ]],
];
const lines = [
  "| operation | instar through the pipe (median ms) | instar file-to-file | qemu-img staged | pipe / qemu-img |",
  "|---|---|---|---|---|",
];
for (const [name, scripts] of rows) {
  const ms: number[][] = scripts.map(() => []);
  try {
    for (let i = 0; i < runs; i++) {
      // Rotate the order each run so no variant always goes first.
      for (let k = 0; k < scripts.length; k++) {
        const j = (k + i) % scripts.length;
        ms[j].push(await time(scripts[j]));
      }
    }
  } catch (e) {
    lines.push(`| ${name} | failed | | | ${(e instanceof Error ? e.message : String(e)).split("\n")[0]} |`);
    console.error(lines[lines.length - 1]);
    continue;
  }
  const [p, f, q] = ms.map(median);
  lines.push(`| ${name} | ${p.toFixed(0)} | ${f.toFixed(0)} | ${q.toFixed(0)} | ${(p / q).toFixed(2)} |`);
  console.error(lines[lines.length - 1]);
}
console.log(lines.join("\n"));
if (!values.dir) await Deno.remove(dir, { recursive: true });
