// `deno task bench:inspect`: inspect of the 2 GiB bench image (issue 16):
// time and bytes read, for the file and for the same bytes through a pipe
// (`cat IMG | instar inspect -`, which reads the whole stream to learn its
// size), next to `qemu-img info` on the file (qemu-img cannot judge a
// stream). Makes the half-random image as `deno task bench` does
// (scripts/gen_bench_image.ts) and copies qemu-img converts of it.
// --cli runs another entry point (tests/support/hosted_main.ts without
// /dev/kvm: a smoke run of this script, not product numbers).
// Usage: deno task bench:inspect [--size-mib N] [--runs N] [--dir DIR] [--cli PATH]
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "size-mib": { type: "string", default: "2048" },
    runs: { type: "string", default: "5" },
    dir: { type: "string" },
    cli: { type: "string" },
  },
});
const runs = Number(values.runs);
const repo = new URL("..", import.meta.url).pathname;
const dir = values.dir ?? await Deno.makeTempDir({ prefix: "instar-bench-inspect-" });
const deno = Deno.execPath();
const cli = values.cli ? new URL(values.cli, `file://${Deno.cwd()}/`).pathname : `${repo}main.ts`;

async function run(cmd: string, args: string[]): Promise<{ ms: number; out: string }> {
  const t0 = performance.now();
  const r = await new Deno.Command(cmd, { args, cwd: dir, stdout: "piped", stderr: "piped" }).output();
  const ms = performance.now() - t0;
  if (r.code > 1) throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(r.stderr)}`);
  return { ms, out: new TextDecoder().decode(r.stdout) };
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

console.error(`making the ${values["size-mib"]} MiB half-random image in ${dir}`);
await run(deno, ["run", "-A", `${repo}scripts/gen_bench_image.ts`, "half.raw", values["size-mib"]!]);
for (const [fmt, name] of [["qcow2", "half.qcow2"], ["vhdx", "half.vhdx"], ["vmdk", "half.vmdk"]]) {
  await run("qemu-img", ["convert", "-f", "raw", "-O", fmt, "half.raw", name]);
}

console.log(`runs per row: ${runs} (median)`);
console.log(
  "| image | instar inspect FILE | bytes read | cat FILE \\| instar inspect - | qemu-img info FILE |",
);
console.log("|---|---|---|---|---|");
for (const name of ["half.qcow2", "half.vhdx", "half.vmdk", "half.raw"]) {
  const file: number[] = [], pipe: number[] = [], info: number[] = [];
  let bytes = "?";
  for (let i = 0; i < runs; i++) {
    const f = await run(deno, ["run", "-A", cli, "inspect", "--output=json", name]);
    file.push(f.ms);
    bytes = String(JSON.parse(f.out)["bytes-read"]);
    pipe.push((await run("sh", ["-c", `cat ${name} | '${deno}' run -A '${cli}' inspect -`])).ms);
    info.push((await run("qemu-img", ["info", name])).ms);
  }
  console.log(
    `| ${name} | ${median(file).toFixed(0)} ms | ${bytes} | ${median(pipe).toFixed(0)} ms | ` +
      `${median(info).toFixed(0)} ms |`,
  );
}
if (!values.dir) await Deno.remove(dir, { recursive: true });
