// Benchmarks for encrypted images (issue 15): convert of a 1 GiB LUKS1
// (aes-256-xts) image to raw, raw to LUKS1, and the PBKDF2 unlock alone
// (convert of a 1 MiB LUKS1 image whose key slot was calibrated by qemu-img
// with the default iter-time: both tools derive the same iteration count),
// each against qemu-img in the same run. Each run makes fresh inputs, runs
// both tools alternately and prints medians and their ratio; the outputs are
// then checked (the raw outputs must be the same bytes, the LUKS outputs must
// read back as the source under qemu-img). Needs /dev/kvm; `--cli
// tests/support/hosted_main.ts --size-mib 16` runs the hosted stand-in (a
// smoke run of the script, not instar's numbers).
//
//   scripts/deno.sh task bench:luks [--runs N] [--size-mib M] [--cli PATH]
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "3" },
    "size-mib": { type: "string", default: "1024" },
    cli: { type: "string", default: "main.ts" },
  },
});
const runs = Number(values.runs);
const mib = Number(values["size-mib"]);
const root = new URL("..", import.meta.url).pathname;
const cli = values.cli.startsWith("/") ? values.cli : `${root}${values.cli}`;
const deno = Deno.execPath();

async function sh(line: string, cwd: string): Promise<string> {
  const r = await new Deno.Command("sh", { args: ["-c", line], cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!r.success) throw new Error(`${line}: ${new TextDecoder().decode(r.stderr)}`);
  return new TextDecoder().decode(r.stdout);
}

async function timed(line: string, cwd: string): Promise<number> {
  const t0 = performance.now();
  await sh(line, cwd);
  return performance.now() - t0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const SECRET = "--object secret,id=sec0,data=bench-passphrase";
const opts = (f: string) => `--image-opts driver=luks,key-secret=sec0,file.filename=${f}`;
// Half random data, half holes, as the other convert benchmarks' image.
const RAW = [
  `qemu-img create -q -f raw src.raw ${mib}M`,
  `head -c ${(mib / 2) << 20} /dev/urandom | dd of=src.raw conv=notrunc status=none`,
];
// qemu-img's LUKS create calibrates PBKDF2 and flakes here at random
// ("Unable to get accurate CPU usage"): retried.
const luks = (src: string, out: string) =>
  `for i in 1 2 3 4 5 6 7 8; do qemu-img convert ${SECRET} -O luks -o key-secret=sec0 ${src} ${out} && break; done`;

interface Case {
  label: string;
  setup: string[];
  args: string;
  check: string;
}

const cases: Case[] = [
  {
    label: `convert ${mib} MiB LUKS1 (aes-256-xts) → raw`,
    setup: [...RAW, luks("src.raw", "src.luks"), "rm src.raw"],
    args: `convert ${SECRET} ${opts("src.luks")} -O raw out.raw`,
    check: "cmp i/out.raw q/out.raw",
  },
  {
    label: `convert raw → ${mib} MiB LUKS1 (aes-256-xts)`,
    setup: RAW,
    args: `convert ${SECRET} -f raw -O luks -o key-secret=sec0 src.raw out.luks`,
    check: ["i", "q"]
      .map((d) => `qemu-img compare ${SECRET} ${opts(`${d}/out.luks`)} driver=raw,file.filename=${d}/src.raw`)
      .join(" && "),
  },
  {
    label: "PBKDF2 unlock (convert of a 1 MiB LUKS1 image, default iter-time)",
    setup: ["qemu-img create -q -f raw small.raw 1M", luks("small.raw", "small.luks")],
    args: `convert ${SECRET} ${opts("small.luks")} -O raw out.raw`,
    check: "cmp i/out.raw q/out.raw",
  },
];

const dir = await Deno.makeTempDir({ prefix: "instar-bench-luks-" });
try {
  console.log(`| command | instar | qemu-img | ratio |\n|---|---|---|---|`);
  for (const c of cases) {
    const ours: number[] = [], theirs: number[] = [];
    for (let i = 0; i <= runs; i++) {
      await sh("rm -rf i q && mkdir q", dir);
      for (const line of c.setup) await sh(`${line} >/dev/null`, `${dir}/q`);
      await sh("cp -a q i && sync", dir);
      // Alternate which tool goes first: the page cache favours the second.
      for (const k of i % 2 ? [1, 0] : [0, 1]) {
        const cmd = k === 0 ? `${deno} run -A ${cli} ${c.args}` : `qemu-img ${c.args}`;
        const t = await timed(cmd, `${dir}/${k === 0 ? "i" : "q"}`);
        if (i > 0) (k === 0 ? ours : theirs).push(t); // run 0 warms up
      }
      await sh(c.check, dir);
    }
    const [a, b] = [median(ours), median(theirs)];
    console.log(`| ${c.label} | ${a.toFixed(0)} ms | ${b.toFixed(0)} ms | ${(a / b).toFixed(2)} |`);
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
