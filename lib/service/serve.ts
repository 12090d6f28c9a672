// `instar serve`: the per-user service the thin client talks to
// (docs/service.md). The socket side is C in the VMM library (accept,
// SO_PEERCRED, SCM_RIGHTS); this module runs each request through the same
// run(args, io) as the CLI, with an Io that writes to the client's
// descriptors and a host context carrying the client's working directory,
// environment entries, limits (guest RAM <= RLIMIT_AS, watchdog <=
// RLIMIT_CPU) and cancel. Requests run concurrently up to the core count;
// every guest is its own VM, so a guest that crashes or hangs harms only
// its own request.
import { getopt } from "../cli/getopt.ts";
import { CliError, usageError } from "../cli/messages.ts";
import { type InstarOptions, type Io } from "../cli/common.ts";
import { run } from "../cli/run.ts";
import { enableConcurrentContexts, type HostContext } from "../host/context.ts";
import type { HostStdio } from "../host/stdio.ts";
import { cString, strerror, type VmmLib, vmmLib } from "../vmm/ffi.ts";
import { decodeRequest, ProtocolError, type Request, socketPath } from "./protocol.ts";

const enc = new TextEncoder();
const SERVE_HELP = `usage: instar serve [--socket PATH] [--jobs N]
Serves instar's thin client (instar install-client) for this user.
  --socket PATH  listen on PATH (default: $INSTAR_SOCKET, else
                 $XDG_RUNTIME_DIR/instar.sock, else /run/instar/<uid>.sock;
                 a socket passed by systemd (LISTEN_FDS) is used if present)
  --jobs N       run at most N requests at a time (default: the core count)
`;
const REQ_BUF = 1 << 20;

/** Output of one request, written to the client's descriptors in order by
 * nonblocking FFI writes (a caller's full pipe must not stall the service). */
class FdWriter {
  #queue: { fd: number; bytes: Uint8Array }[] = [];
  #flushing: Promise<void> | undefined;
  #failed = false;
  constructor(private lib: VmmLib) {}
  write(fd: number, text: string) {
    if (this.#failed || text === "") return;
    this.#queue.push({ fd, bytes: enc.encode(text) });
    this.#flushing ??= this.#flush();
  }
  async #flush() {
    // Let the command's synchronous writes pile up, then write them in runs per fd.
    await Promise.resolve();
    while (this.#queue.length > 0) {
      const fd = this.#queue[0].fd;
      let n = 0;
      while (n < this.#queue.length && this.#queue[n].fd === fd) n++;
      const parts = this.#queue.splice(0, n);
      const bytes = parts.length === 1 ? parts[0].bytes : concat(parts.map((p) => p.bytes));
      const rc = await this.lib.vmm_fd_write(fd, bytes, BigInt(bytes.length));
      if (rc < 0) { // EPIPE and the like: the caller stopped reading; drop the rest
        this.#failed = true;
        this.#queue = [];
      }
    }
    this.#flushing = undefined;
  }
  async done() {
    while (this.#flushing) await this.#flushing;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A counting semaphore: requests beyond the core count wait their turn. */
class Slots {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async take() {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((r) => this.#waiting.push(r));
  }
  give() {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

/** The client's stdin and stdout as the request's `-` streams (lib/host/stdio.ts). */
function clientStdio(lib: VmmLib, inFd: number, outFd: number, w: FdWriter): HostStdio {
  return {
    read: async (p) => {
      const n = await lib.vmm_fd_read(inFd, p, BigInt(p.length));
      if (n < 0n) throw new Error(`error while reading stdin: ${strerror(lib, Number(-n))}`);
      return n === 0n ? null : Number(n);
    },
    write: async (bytes) => {
      await w.done(); // text the command queued for stdout goes first
      const rc = await lib.vmm_fd_write(outFd, bytes, BigInt(bytes.length));
      if (rc === -32) throw new Deno.errors.BrokenPipe("Broken pipe");
      if (rc < 0) throw new Error(strerror(lib, -rc));
      return bytes.length;
    },
    isTerminal: (which) => lib.vmm_fd_isatty(which === 0 ? inFd : outFd) === 1,
    statPath: (which) => `/proc/self/fd/${which === 0 ? inFd : outFd}`,
  };
}

const MiB = 1024n * 1024n;

/** The host context of one request: its cwd, env, limits and cancel. */
export function requestContext(req: Request, signal: AbortSignal): HostContext {
  const caps: HostContext["caps"] = {};
  if (req.rlimitAs !== undefined) {
    caps.ramBytes = req.rlimitAs > BigInt(Number.MAX_SAFE_INTEGER)
      ? Number.MAX_SAFE_INTEGER
      : Number(req.rlimitAs);
    caps.ramSource = `address-space limit (RLIMIT_AS ${req.rlimitAs / MiB} MiB)`;
  }
  if (req.rlimitCpu !== undefined) {
    caps.timeoutMs = req.rlimitCpu > 1_000_000_000n ? 1e12 : Math.max(1, Number(req.rlimitCpu) * 1000);
    caps.deadline = performance.now() + caps.timeoutMs;
    caps.cpuSource = `CPU-time limit (RLIMIT_CPU ${req.rlimitCpu} s)`;
  }
  return { cwd: req.cwd, env: req.env, caps, signal, service: true };
}

async function serveOne(lib: VmmLib, conn: number, fds: number[], req: Request, slots: Slots, log: Io) {
  const [inFd, outFd, errFd] = fds;
  const ac = new AbortController();
  let finished = false;
  const w = new FdWriter(lib);
  const io: Io = {
    out: (t) => w.write(outFd, t),
    err: (t) => w.write(errFd, t),
    context: { ...requestContext(req, ac.signal), stdio: clientStdio(lib, inFd, outFd, w) },
  };
  let code = 1;
  // The cancel watch starts with the request's turn: a waiting request holds no
  // thread of Deno's blocking pool (which vmm_run needs), however many wait.
  await slots.take();
  // The CPU-time deadline starts with the turn: waiting in the queue costs the caller nothing.
  const caps = io.context!.caps!;
  if (caps.timeoutMs !== undefined) caps.deadline = performance.now() + caps.timeoutMs;
  // 'I' / 'T' from the client's SIGINT / SIGTERM; 0 when it hung up (or we shut down).
  const waiting = lib.vmm_conn_wait(conn).then((b) => {
    if (finished) return;
    ac.abort(b === 84 ? "SIGTERM" : b === 73 ? "SIGINT" : "SIGHUP");
  });
  try {
    if (!ac.signal.aborted) {
      code = await run(req.args, io);
    }
  } catch (e) {
    io.err(`instar: Internal error: ${e instanceof Error ? e.message : String(e)}\n`);
    code = 1;
  } finally {
    slots.give();
  }
  await w.done();
  finished = true;
  if (!ac.signal.aborted || ac.signal.reason !== "SIGHUP") lib.vmm_conn_reply(conn, code, null);
  lib.vmm_conn_end(conn);
  await waiting;
  for (const fd of fds) lib.vmm_fd_close(fd);
  lib.vmm_fd_close(conn);
  if (ac.signal.aborted) {
    log.err(`instar serve: request cancelled (${ac.signal.reason}): ${req.args[0] ?? ""}\n`);
  }
}

interface ServeArgs {
  help?: boolean;
  socket?: string;
  jobs?: number;
}

function parseServeArgs(argv: string[]): ServeArgs {
  const a: ServeArgs = {};
  const rest = getopt(argv, ":hj:", [
    { name: "help", hasArg: false, id: "h" },
    { name: "socket", hasArg: true, id: "socket" },
    { name: "jobs", hasArg: true, id: "j" },
  ], ({ id, value }) => {
    if (id === "h") a.help = true;
    if (id === "socket") a.socket = value;
    if (id === "j") {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 1024) throw usageError(`Invalid --jobs '${value}'`);
      a.jobs = n;
    }
  });
  if (rest.length > 0) throw usageError("instar serve takes no file names");
  return a;
}

/** The listening socket: systemd's (LISTEN_FDS/LISTEN_PID) or our own. */
async function listen(lib: VmmLib, a: ServeArgs): Promise<{ fd: number; where: string }> {
  const pid = Deno.env.get("LISTEN_PID");
  const n = Number(Deno.env.get("LISTEN_FDS") ?? "0");
  if (a.socket === undefined && pid === String(Deno.pid) && n >= 1) {
    // sd_listen_fds: the first passed descriptor is 3; unset the variables so children do not see them.
    for (const v of ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]) Deno.env.delete(v);
    if (!lib.vmm_fd_is_listener(3)) {
      throw new CliError(["LISTEN_FDS is set but fd 3 is not a listening Unix stream socket"]);
    }
    return { fd: 3, where: "the socket systemd passed (fd 3)" };
  }
  const path = a.socket ?? socketPath();
  const dir = path.slice(0, path.lastIndexOf("/"));
  if (dir) await Deno.mkdir(dir, { recursive: true, mode: 0o700 }).catch(() => {});
  const fd = lib.vmm_serve_listen(cString(path));
  if (fd < 0) {
    const why = fd === -98 ? "another instar service is already listening there" : strerror(lib, -fd);
    throw new CliError([`Cannot listen on '${path}': ${why}`]);
  }
  return { fd, where: path };
}

export async function serveCommand(argv: string[], io: Io, _base?: InstarOptions): Promise<number> {
  const a = parseServeArgs(argv);
  if (a.help) {
    io.out(SERVE_HELP);
    return 0;
  }
  await enableConcurrentContexts();
  const lib = await vmmLib();
  const { fd: lfd, where } = await listen(lib, a);
  const jobs = a.jobs ?? navigator.hardwareConcurrency ?? 1;
  const slots = new Slots(jobs);
  io.err(`instar serve: listening on ${where} (uid ${Deno.uid()}, ${jobs} requests at a time)\n`);
  // SIGTERM/SIGINT to the service: requests in flight finish (up to 30 s), then
  // serveCommand returns 0 and main exits; our own socket file goes with it, so
  // clients fall back at once. A second signal returns 1 at once.
  let inFlight = 0;
  let stopping = false;
  let finish: (code: number) => void = () => {};
  const stopped = new Promise<number>((r) => finish = r);
  const stop = async () => {
    if (stopping) return finish(1);
    stopping = true;
    const until = Date.now() + 30_000;
    while (inFlight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    if (ownPath) await Deno.remove(ownPath).catch(() => {});
    finish(0);
  };
  const ownPath = where.startsWith("/") ? where : undefined;
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);

  // One request's stray rejection or timer exception must not end the others.
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    io.err(`instar serve: unhandled rejection in a request: ${e.reason}\n`);
  });
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    io.err(`instar serve: uncaught exception in a request: ${e.message}\n`);
  });

  // Accept, check the peer (in C), then read and serve each connection on its
  // own: a client slow to send its request delays only itself.
  const meta = new BigInt64Array(7);
  for (;;) {
    // The accept blocks in a worker thread; a stop does not wait for it (main
    // exits with the process, and that thread with it).
    const conn = await Promise.race([
      lib.vmm_serve_accept(lfd, new Uint8Array(meta.buffer)),
      stopped.then((code) => ({ code })),
    ]);
    if (typeof conn !== "number") return conn.code;
    if (conn < 0) {
      if (conn === -13) io.err(`instar serve: refused a peer with uid ${meta[2]} (pid ${meta[3]})\n`);
      else {
        io.err(`instar serve: accept failed: ${strerror(lib, -conn)}\n`);
        await new Promise((r) => setTimeout(r, 100));
      }
      continue;
    }
    inFlight++;
    handleConnection(lib, conn, Number(meta[3]), slots, io)
      .catch((e) => io.err(`instar serve: ${e}\n`))
      .finally(() => inFlight--);
  }
}

async function handleConnection(lib: VmmLib, conn: number, pid: number, slots: Slots, io: Io) {
  const buf = new Uint8Array(REQ_BUF);
  const meta = new BigInt64Array(7);
  const rc = await lib.vmm_serve_read(conn, buf, REQ_BUF, new Uint8Array(meta.buffer));
  if (rc < 0) { // the library replied and closed the connection
    io.err(`instar serve: malformed or late request from pid ${pid}\n`);
    return;
  }
  const fds = [Number(meta[4]), Number(meta[5]), Number(meta[6])];
  let req: Request;
  try {
    req = decodeRequest(buf.slice(0, Number(meta[1])));
  } catch (e) {
    const why = e instanceof ProtocolError ? e.message : String(e);
    lib.vmm_conn_reply(conn, 1, cString(`instar: malformed request: ${why}\n`));
    for (const fd of [...fds, conn]) lib.vmm_fd_close(fd);
    return;
  }
  await serveOne(lib, conn, fds, req, slots, io);
}
