// Benchmarks for the in-place qcow2 writers (issue 14): `commit` of a 1 GiB
// overlay with 512 MiB written, and a safe `rebase` across two 2 GiB
// backing files that differ in places. Each run makes fresh, identical
// chains for instar and qemu-img (qemu-img create -b, data by qemu-io),
// runs both alternately and prints medians and their ratio. After each run
// the results are checked: `qemu-img compare` of the two bases (commit) or
// of the two overlays (rebase) must say identical, and the rebased overlays
// must be the same bytes. Needs /dev/kvm (instar runs its guests in the VM).
//
//   scripts/deno.sh task bench:inplace [--runs N]
import { parseArgs } from "node:util";

const { values } = parseArgs({ args: Deno.args, options: { runs: { type: "string", default: "3" } } });
const runs = Number(values.runs);
const root = new URL("..", import.meta.url).pathname;
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

interface Case {
  label: string;
  /** Shell lines that make the inputs in a directory. */
  setup: string[];
  /** The command after `instar`/`qemu-img`. */
  args: string;
  /** A check of the two directories' results (shell, in the parent directory; must exit 0). */
  check: string;
}

const io = (file: string, ...cmds: string[]) => `qemu-io ${cmds.map((c) => `-c '${c}'`).join(" ")} ${file}`;

const cases: Case[] = [
  {
    label: "`commit` of a 1 GiB overlay with 512 MiB written",
    setup: [
      "qemu-img create -q -f qcow2 base.qcow2 1G",
      io("base.qcow2", "write -P 1 0 256M"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 1G",
      io("ov.qcow2", "write -P 2 128M 384M", "write -P 3 768M 128M"),
    ],
    args: "commit -q ov.qcow2",
    check: "qemu-img compare -q i/base.qcow2 q/base.qcow2",
  },
  {
    label: "safe `rebase` across two 2 GiB backing files",
    setup: [
      "qemu-img create -q -f qcow2 old.qcow2 2G",
      io("old.qcow2", "write -P 1 0 1G", "write -P 4 1536M 256M"),
      "qemu-img create -q -f qcow2 new.qcow2 2G",
      io("new.qcow2", "write -P 1 0 512M", "write -P 5 1G 256M"),
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2 2G",
      io("ov.qcow2", "write -P 2 256M 64M"),
    ],
    args: "rebase -b new.qcow2 -F qcow2 ov.qcow2",
    check: "cmp i/ov.qcow2 q/ov.qcow2",
  },
];

const dir = await Deno.makeTempDir({ prefix: "instar-bench-inplace-" });
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
        const cmd = k === 0 ? `${deno} run -A ${root}main.ts ${c.args}` : `qemu-img ${c.args}`;
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
