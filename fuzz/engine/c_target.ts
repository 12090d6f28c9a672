// Executor for the C targets: a child process (fuzz/out/<target>, the
// target linked with fuzz/runner/runner.c) fed over two FIFOs, with its
// SanitizerCoverage 8-bit counters copied after every run into a shared
// file the engine reads. The child enforces -timeout itself (SIGALRM); a
// crash is the reply pipe closing. See runner.c for the protocol.

export const SHM_HEADER = 64;

export type Outcome =
  | { kind: "ok"; micros: number }
  | { kind: "crash"; detail: string }
  | { kind: "timeout"; detail: string }
  | { kind: "leak"; detail: string };

export class CTarget {
  readonly counters: Uint8Array;
  #child: Deno.ChildProcess;
  #in: Deno.FsFile;
  #out: Deno.FsFile;
  #shm: Deno.FsFile;
  #dir: string;
  #reply = new Uint8Array(5);

  private constructor(
    child: Deno.ChildProcess,
    inF: Deno.FsFile,
    outF: Deno.FsFile,
    shm: Deno.FsFile,
    dir: string,
    n: number,
  ) {
    this.#child = child;
    this.#in = inF;
    this.#out = outF;
    this.#shm = shm;
    this.#dir = dir;
    this.counters = new Uint8Array(n);
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** Starts binary as a runner; throws when it does not come up. */
  static async start(binary: string, timeoutSec: number, env: Record<string, string> = {}): Promise<CTarget> {
    const base = (() => {
      try {
        return Deno.statSync("/dev/shm").isDirectory ? "/dev/shm" : undefined;
      } catch {
        return undefined;
      }
    })();
    const dir = await Deno.makeTempDir({ dir: base, prefix: "instar-fuzz-" });
    const inPath = `${dir}/in`, outPath = `${dir}/out`, shmPath = `${dir}/cov`;
    for (const p of [inPath, outPath]) {
      const r = await new Deno.Command("mkfifo", { args: ["-m", "600", p] }).output();
      if (!r.success) throw new Error(`Cannot create FIFO ${p}`);
    }
    const child = new Deno.Command(binary, {
      args: [`-timeout=${timeoutSec}`, "-serve", inPath, outPath, shmPath],
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
      env: {
        ASAN_OPTIONS:
          "detect_leaks=1:allocator_may_return_null=1:quarantine_size_mb=64:malloc_context_size=20",
        UBSAN_OPTIONS: "print_stacktrace=1",
        ...env,
      },
    }).spawn();
    // Opening a FIFO waits for the other end; race it against the child dying.
    const died = child.status.then((s) => {
      throw new Error(`Fuzz runner ${binary} exited with code ${s.code} before serving`);
    });
    const inF = await Promise.race([Deno.open(inPath, { write: true }), died]);
    const outF = await Promise.race([Deno.open(outPath, { read: true }), died]);
    died.catch(() => {});
    const hello = new Uint8Array(5);
    readExact(outF, hello);
    if (hello[0] !== 0x48) throw new Error("Fuzz runner sent no greeting");
    const n = new DataView(hello.buffer).getUint32(1, true);
    const shm = Deno.openSync(shmPath, { read: true });
    return new CTarget(child, inF, outF, shm, dir, n);
  }

  /** Runs one input; on "ok", `counters` holds its hit counts. */
  run(data: Uint8Array, leakCheck = false): Outcome {
    const msg = new Uint8Array(5 + data.length);
    msg[0] = leakCheck ? 0x4c : 0x52;
    new DataView(msg.buffer).setUint32(1, data.length, true);
    msg.set(data, 5);
    try {
      writeExact(this.#in, msg);
    } catch {
      return { kind: "crash", detail: "the runner stopped reading" };
    }
    const got = readExact(this.#out, this.#reply, true);
    if (got === 0) return { kind: "crash", detail: "deadly signal or sanitizer report" };
    const tag = String.fromCharCode(this.#reply[0]);
    if (tag === "T") return { kind: "timeout", detail: "timeout" };
    if (tag === "K") return { kind: "leak", detail: "memory leak" };
    if (got < 5 || tag !== "O") return { kind: "crash", detail: "broken reply" };
    this.#shm.seekSync(SHM_HEADER, Deno.SeekMode.Start);
    readExact(this.#shm, this.counters);
    return { kind: "ok", micros: new DataView(this.#reply.buffer).getUint32(1, true) };
  }

  /** Resident set of the child in MiB (0 when unknown). */
  rssMb(): number {
    try {
      const s = Deno.readTextFileSync(`/proc/${this.#child.pid}/status`);
      const m = /VmRSS:\s+(\d+)/.exec(s);
      return m ? Math.round(Number(m[1]) / 1024) : 0;
    } catch {
      return 0;
    }
  }

  /** Waits for the child to end (after a finding); its exit code, or 77 when a signal killed it. */
  async wait(): Promise<number> {
    const s = await this.#child.status;
    this.#cleanup();
    return s.signal ? 77 : s.code;
  }

  async stop(): Promise<void> {
    try {
      writeExact(this.#in, new Uint8Array([0x51, 0, 0, 0, 0]));
    } catch { /* already gone */ }
    await this.#child.status;
    this.#cleanup();
  }

  #cleanup() {
    for (const f of [this.#in, this.#out, this.#shm]) {
      try {
        f.close();
      } catch { /* closed */ }
    }
    try {
      Deno.removeSync(this.#dir, { recursive: true });
    } catch { /* gone */ }
  }
}

/** Reads buf fully; with eofOk returns the bytes read when EOF comes first. */
function readExact(f: Deno.FsFile, buf: Uint8Array, eofOk = false): number {
  let done = 0;
  while (done < buf.length) {
    const n = f.readSync(buf.subarray(done));
    if (n === null || n === 0) {
      if (eofOk) return done;
      throw new Error("Unexpected end of fuzz runner data");
    }
    done += n;
  }
  return done;
}

function writeExact(f: Deno.FsFile, buf: Uint8Array) {
  let done = 0;
  while (done < buf.length) done += f.writeSync(buf.subarray(done));
}
