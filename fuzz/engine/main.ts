// `deno task fuzz`: a coverage-guided fuzzer speaking libFuzzer's dialect.
//
//   deno task fuzz --list
//   deno task fuzz <target> [CORPUS_DIR...] [-runs=N] [-max_total_time=S] [-seed=N]
//       [-max_len=N] [-timeout=S] [-artifact_prefix=P] [-jobs=N] [-dict=F] [-detect_leaks=0]
//   deno task fuzz <target> FILE...      (reproducer mode: run each input once)
//
// C targets run in a child process (fuzz/c_target.ts); TypeScript targets
// in-process. New coverage goes to the first corpus directory as files
// named by SHA-1; findings to <artifact_prefix>{crash,timeout,leak}-<sha1>.
// Exit status as libFuzzer's: 0 when nothing was found, 1 for a sanitizer
// report (or a TypeScript target's throw), 77 for a deadly signal (e.g. an
// invariant's abort) or a leak, 70 for a timeout.
import { encodeBase64 } from "./base64.ts";
import { CTarget, type Outcome } from "./c_target.ts";
import { Coverage, StructuralCoverage } from "./coverage.ts";
import { parseDict } from "./dict.ts";
import { type Flags, parseFlags } from "./flags.ts";
import { Mutator } from "./mutate.ts";
import { Rng } from "./rng.ts";
import { buildC, FUZZ_DIR, listTargets, loadTsTarget, type TargetInfo } from "./targets.ts";
import type { TsTarget } from "./ts_target.ts";

const enc = new TextEncoder();
function log(s: string) {
  Deno.stderr.writeSync(enc.encode(s + "\n"));
}

async function sha1(data: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-1", new Uint8Array(data)));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function sizeStr(n: number): string {
  if (n < 1 << 14) return `${n}b`;
  if (n < 1 << 24) return `${n >> 10}Kb`;
  return `${n >> 20}Mb`;
}

/** One way of running inputs: a C runner child or an in-process TS target. */
interface Executor {
  run(data: Uint8Array, leakCheck: boolean): Outcome;
  counters(): Uint8Array;
  rssMb(): number;
  stop(): Promise<void>;
  /** After a crash/timeout/leak: wait for the child's report; its exit code (0 in-process). */
  settle(): Promise<number>;
}

class CExecutor implements Executor {
  constructor(private t: CTarget) {}
  run(data: Uint8Array, leakCheck: boolean): Outcome {
    return this.t.run(data, leakCheck);
  }
  counters() {
    return this.t.counters;
  }
  rssMb() {
    return this.t.rssMb();
  }
  stop() {
    return this.t.stop();
  }
  settle() {
    return this.t.wait();
  }
}

class TsExecutor implements Executor {
  #cov = new StructuralCoverage();
  #last: Uint8Array = new Uint8Array(0);
  constructor(private t: TsTarget, private timeoutSec: number) {}
  run(data: Uint8Array): Outcome {
    this.#cov.reset();
    const t0 = performance.now();
    try {
      this.t.run(data, this.#cov);
    } catch (e) {
      const what = e instanceof Error ? e.name : (e as object)?.constructor?.name ?? typeof e;
      log(`==${Deno.pid}== ERROR: libFuzzer: deadly signal (TypeScript target threw ${what})`);
      log(e instanceof Error ? String(e.stack) : `thrown value: ${Deno.inspect(e)}`);
      return { kind: "crash", detail: e instanceof Error ? e.message : `threw ${what}` };
    }
    const ms = performance.now() - t0;
    if (ms > this.timeoutSec * 1000) {
      log(`==${Deno.pid}== ERROR: libFuzzer: timeout after ${Math.round(ms / 1000)} seconds`);
      return { kind: "timeout", detail: "timeout" };
    }
    this.#last = this.#cov.collect();
    return { kind: "ok", micros: Math.round(ms * 1000) };
  }
  counters() {
    return this.#last;
  }
  rssMb() {
    return Math.round(Deno.memoryUsage().rss / (1 << 20));
  }
  async stop() {}
  settle() {
    return Promise.resolve(0);
  }
}

interface Unit {
  data: Uint8Array;
  ft: number;
}

function isDir(p: string): boolean {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
}

function readCorpus(dirs: string[]): { name: string; data: Uint8Array }[] {
  const out: { name: string; data: Uint8Array }[] = [];
  for (const d of dirs) {
    let n = 0;
    for (const e of [...Deno.readDirSync(d)].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (!e.isFile) continue;
      out.push({ name: `${d}/${e.name}`, data: Deno.readFileSync(`${d}/${e.name}`) });
      n++;
    }
    log(`INFO: ${String(n).padStart(8)} files found in ${d}`);
  }
  return out;
}

async function makeExecutor(info: TargetInfo, flags: Flags): Promise<Executor> {
  if (info.kind === "c") {
    const bin = await buildC(info.name);
    const t = await CTarget.start(
      bin,
      flags.timeout,
      flags.detect_leaks ? {} : {
        ASAN_OPTIONS: "detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=64",
      },
    );
    const n = t.counters.length;
    log(`INFO: Loaded 1 modules   (${n} inline 8-bit counters)`);
    log(`INFO: Loaded 1 PC tables (${n} PCs)`);
    return new CExecutor(t);
  }
  log(`INFO: TypeScript target, structural coverage`);
  return new TsExecutor(await loadTsTarget(info), flags.timeout);
}

async function writeArtifact(kind: string, data: Uint8Array, flags: Flags): Promise<string> {
  const path = flags.exact_artifact_path || `${flags.artifact_prefix}${kind}-${await sha1(data)}`;
  Deno.writeFileSync(path, data);
  return path;
}

async function reportFinding(
  o: Outcome,
  data: Uint8Array,
  seq: string[],
  base: string,
  flags: Flags,
  ex: Executor,
): Promise<number> {
  const childCode = await ex.settle();
  const kind = o.kind === "timeout" ? "timeout" : o.kind === "leak" ? "leak" : "crash";
  if (kind === "crash" && o.kind === "crash") log(`==${Deno.pid}== instar fuzz: ${o.detail}`);
  if (seq.length) log(`MS: ${seq.length} ${seq.map((s) => s + "-").join("")}; base unit: ${base}`);
  if (data.length <= 64) {
    log([...data].map((b) => `0x${b.toString(16)},`).join(""));
  }
  const path = await writeArtifact(kind, data, flags);
  log(`artifact_prefix='${flags.artifact_prefix}'; Test unit written to ${path}`);
  if (data.length <= 1024) log(`Base64: ${encodeBase64(data)}`);
  if (kind === "timeout") log("SUMMARY: libFuzzer: timeout");
  // libFuzzer's exit codes: 70 timeout, 77 leak or deadly signal, else the
  // sanitizer's (1).
  if (kind === "timeout") return 70;
  if (kind === "leak") return 77;
  return childCode > 1 ? childCode : 1;
}

/** Reproducer mode: run each file once. */
async function replay(info: TargetInfo, files: string[], flags: Flags): Promise<number> {
  if (info.kind === "c") {
    const bin = await buildC(info.name);
    const r = await new Deno.Command(bin, {
      args: [`-timeout=${flags.timeout}`, ...files],
      stdout: "inherit",
      stderr: "inherit",
      env: {
        ASAN_OPTIONS: "detect_leaks=1:allocator_may_return_null=1",
        UBSAN_OPTIONS: "print_stacktrace=1",
      },
    }).output();
    if (r.signal) return 77;
    if (r.code !== 0) return r.code;
  } else {
    const ex = new TsExecutor(await loadTsTarget(info), flags.timeout);
    for (const f of files) {
      log(`Running: ${f}`);
      const t0 = performance.now();
      const o = ex.run(Deno.readFileSync(f));
      if (o.kind !== "ok") return o.kind === "timeout" ? 70 : 1;
      log(`Executed ${f} in ${Math.round(performance.now() - t0)} ms`);
    }
  }
  log("***");
  log("*** NOTE: fuzzing was not performed, you have only");
  log("***       executed the target code on a fixed set of inputs.");
  log("***");
  return 0;
}

async function fuzz(info: TargetInfo, dirs: string[], flags: Flags): Promise<number> {
  const seed = flags.seed || ((Date.now() ^ (Deno.pid << 16)) >>> 0) || 1;
  log(`INFO: Seed: ${seed >>> 0}`);
  const rng = new Rng(seed);
  const ex = await makeExecutor(info, flags);
  const cov = new Coverage();
  const corpus: Unit[] = [];
  let corpusBytes = 0;
  const dictPath = flags.dict || `${FUZZ_DIR}/dict/${info.name}.dict`;
  const mut = new Mutator(rng, 0);
  try {
    mut.dict = parseDict(Deno.readTextFileSync(dictPath), dictPath);
    log(`Dictionary: ${mut.dict.length} entries`);
  } catch (e) {
    if (flags.dict || !(e instanceof Deno.errors.NotFound)) throw e;
  }
  const seeds = readCorpus(dirs);
  const largest = seeds.reduce((m, s) => Math.max(m, s.data.length), 0);
  mut.maxLen = flags.max_len || Math.max(4096, largest);
  if (!flags.max_len) {
    log(`INFO: -max_len is not provided; libFuzzer will not generate inputs larger than ${mut.maxLen} bytes`);
  }
  mut.corpus = () => corpus.length ? corpus[rng.below(corpus.length)].data : undefined;
  const known = new Set<string>();
  for (const d of dirs) for (const e of Deno.readDirSync(d)) known.add(e.name);

  const start = performance.now();
  let runs = 0;
  const elapsed = () => (performance.now() - start) / 1000;
  const status = (what: string, extra = "") => {
    const secs = elapsed();
    const eps = secs >= 1 ? Math.floor(runs / secs) : 0;
    log(
      `#${runs}\t${what.padEnd(6)} cov: ${cov.cov} ft: ${cov.ft} corp: ${corpus.length}/${
        sizeStr(corpusBytes)
      } exec/s: ${eps} rss: ${ex.rssMb()}Mb${extra}`,
    );
  };
  const add = (data: Uint8Array) => {
    corpus.push({ data, ft: Coverage.count(ex.counters()) });
    corpusBytes += data.length;
  };
  const done = () =>
    (flags.runs >= 0 && runs >= flags.runs) ||
    (flags.max_total_time > 0 && elapsed() >= flags.max_total_time);

  let code = 0;
  try {
    // Seed corpus, smallest first (as libFuzzer reads it).
    if (seeds.length) {
      const sizes = seeds.map((s) => s.data.length);
      log(
        `INFO: seed corpus: files: ${seeds.length} min: ${Math.min(...sizes)}b max: ${
          Math.max(...sizes)
        }b total: ${sizes.reduce((a, b) => a + b, 0)}b rss: ${ex.rssMb()}Mb`,
      );
    } else {
      log("INFO: A corpus is not provided, starting from an empty corpus");
    }
    const initial = seeds.map((s) => s.data.subarray(0, mut.maxLen)).sort((a, b) => a.length - b.length);
    if (!initial.length) initial.push(new Uint8Array([0x0a]));
    for (const data of initial) {
      const o = ex.run(data, false);
      runs++;
      if (o.kind !== "ok") return code = await reportFinding(o, data, [], "", flags, ex);
      if (cov.addCounters(ex.counters()) > 0 || corpus.length === 0) {
        if (info.kind === "c" && flags.detect_leaks) {
          const l = ex.run(data, true);
          runs++;
          if (l.kind !== "ok") return code = await reportFinding(l, data, [], "", flags, ex);
        }
        add(data);
      }
    }
    status("INITED");
    let nextPulse = 2;
    while (!done()) {
      const base = corpus[pickUnit(rng, corpus.length)];
      let data = base.data;
      mut.sequence = [];
      const depth = 1 + rng.below(5);
      for (let d = 0; d < depth && !done(); d++) {
        data = mut.mutate(data);
        const o = ex.run(data, false);
        runs++;
        if (o.kind !== "ok") {
          return code = await reportFinding(o, data, mut.sequence, await sha1(base.data), flags, ex);
        }
        if (cov.addCounters(ex.counters()) > 0) {
          if (info.kind === "c" && flags.detect_leaks) {
            const l = ex.run(data, true);
            runs++;
            if (l.kind !== "ok") {
              return code = await reportFinding(l, data, mut.sequence, await sha1(base.data), flags, ex);
            }
          }
          add(data);
          const name = await sha1(data);
          if (dirs.length && !known.has(name)) {
            Deno.writeFileSync(`${dirs[0]}/${name}`, data);
            known.add(name);
          }
          status(
            "NEW",
            ` L: ${data.length}/${mut.maxLen} MS: ${mut.sequence.length} ${
              mut.sequence.map((s) => s + "-").join("")
            }`,
          );
          break;
        }
        if (runs >= nextPulse) {
          status("pulse");
          nextPulse *= 2;
        }
      }
    }
    status("DONE");
    log(`Done ${runs} runs in ${Math.floor(elapsed())} second(s)`);
    return 0;
  } finally {
    if (code === 0) await ex.stop();
  }
}

/** Newer corpus units (usually the more interesting ones) a little more often. */
function pickUnit(rng: Rng, n: number): number {
  if (n === 1) return 0;
  const r = rng.next() / 0x1_0000_0000;
  return Math.min(n - 1, Math.floor(n * Math.sqrt(r)));
}

/** -jobs=N: N independent runs with seeds seed+i, each logging to fuzz-<i>.log. */
async function jobs(args: string[], flags: Flags): Promise<number> {
  const n = flags.jobs;
  const workers = flags.workers || Math.max(1, Math.min(n, Math.floor(navigator.hardwareConcurrency / 2)));
  const base = flags.seed || ((Date.now() >>> 0) || 1);
  const rest = args.filter((a) => !/^-{1,2}(jobs|workers|seed)=/.test(a));
  let next = 0, worst = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      const jobArgs = [...rest, `-seed=${(base + i) >>> 0}`];
      const logPath = `fuzz-${i}.log`;
      log(`Running: deno task fuzz ${jobArgs.join(" ")} > ${logPath} 2>&1`);
      const file = await Deno.open(logPath, { write: true, create: true, truncate: true });
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL(import.meta.url).pathname, ...jobArgs],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const drain = async (stream: ReadableStream<Uint8Array>) => {
        for await (const chunk of stream) file.writeSync(chunk);
      };
      await Promise.all([drain(child.stdout), drain(child.stderr)]);
      const s = await child.status;
      file.close();
      if (s.code !== 0) {
        log(`================== Job ${i} exited with exit code ${s.code} ============`);
        worst = worst || s.code;
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
  return worst;
}

export async function main(args: string[]): Promise<number> {
  if (args[0] === "--list" || args[0] === "-list") {
    for (const t of listTargets()) console.log(`${t.name.padEnd(20)} ${t.kind.padEnd(3)} ${t.description}`);
    return 0;
  }
  if (!args.length || args[0] === "--help" || args[0] === "-help=1") {
    log("usage: deno task fuzz <target> [CORPUS_DIR|FILE...] [-runs=N] [-max_total_time=S] [-seed=N]");
    log("       [-max_len=N] [-timeout=S] [-artifact_prefix=P] [-jobs=N] [-dict=F] [-detect_leaks=0|1]");
    log("       deno task fuzz --list");
    return args.length ? 0 : 2;
  }
  const info = listTargets().find((t) => t.name === args[0]);
  if (!info) {
    log(`instar fuzz: unknown target '${args[0]}' (deno task fuzz --list)`);
    return 2;
  }
  const { flags, positional, warnings } = parseFlags(args.slice(1));
  for (const w of warnings) log(w);
  if (flags.jobs > 0) return await jobs(args, flags);
  const dirs = positional.filter(isDir), files = positional.filter((p) => !isDir(p));
  if (files.length && dirs.length) {
    log("instar fuzz: give either corpus directories or input files, not both");
    return 2;
  }
  if (files.length) return await replay(info, files, flags);
  return await fuzz(info, dirs, flags);
}

if (import.meta.main) {
  // `deno task` runs in the repository; paths on the command line are the
  // caller's, as with a libFuzzer binary.
  const cwd = Deno.env.get("INIT_CWD");
  if (cwd) Deno.chdir(cwd);
  Deno.exit(await main(Deno.args));
}
