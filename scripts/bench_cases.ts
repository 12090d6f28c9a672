// The case runner the command-line benchmarks against qemu-img share
// (bench_inplace.ts, bench_luks.ts): per case, fresh identical inputs for
// instar (`i/`) and qemu-img (`q/`) from shell lines, both tools run
// alternately `runs` times after one warm-up, the results checked by a shell
// line, and a Markdown row of medians and their ratio printed.

const deno = Deno.execPath();

export async function sh(line: string, cwd: string): Promise<string> {
  const r = await new Deno.Command("sh", { args: ["-c", line], cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!r.success) throw new Error(`${line}: ${new TextDecoder().decode(r.stderr)}`);
  return new TextDecoder().decode(r.stdout);
}

/** The time of one run of `line`; a run that fails with `retryOn` in its error is run again, and only the last counts. */
async function timed(line: string, cwd: string, retryOn?: string): Promise<number> {
  for (let attempt = 1;; attempt++) {
    const t0 = performance.now();
    try {
      await sh(line, cwd);
      return performance.now() - t0;
    } catch (e) {
      if (!retryOn || attempt >= 8 || !(e as Error).message.includes(retryOn)) throw e;
    }
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

export interface Case {
  label: string;
  /** Shell lines that make the inputs in a directory. */
  setup: string[];
  /** The command after `instar`/`qemu-img`. */
  args: string;
  /** A check of the two directories' results (shell, in the parent directory; must exit 0). */
  check: string;
  /** A run failing with this text in its error is retried (qemu-img's flaky PBKDF2 calibration). */
  retryOn?: string;
}

/**
 * Runs every case (see the module comment); `cli` is the instar entry point
 * `deno run -A` runs, or `instar` the command line that starts instar
 * instead (the installed client of a warm service).
 */
export async function runCases(
  cases: Case[],
  runs: number,
  cli: string,
  prefix: string,
  instar = `${deno} run -A ${cli}`,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
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
          const cmd = k === 0 ? `${instar} ${c.args}` : `qemu-img ${c.args}`;
          // The other tool's writes are on disk before this one starts: else
          // their writeback lands in this run's time (seen: 0.5x-2.2x swings).
          await sh("sync", dir);
          const t = await timed(cmd, `${dir}/${k === 0 ? "i" : "q"}`, c.retryOn);
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
}
