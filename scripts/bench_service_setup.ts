// The setup the per-call benchmarks through the client share
// (bench_service.ts, bench_snapshots.ts): a temporary directory, the thin
// client installed in it (`install-client`), `instar serve` listening on a
// socket there, and a shell helper with INSTAR_SOCKET set. stop() ends the
// service and removes the directory.
const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const DENO = Deno.execPath();

export interface ServiceBench {
  dir: string;
  /** The environment every timed command gets (INSTAR_SOCKET). */
  env: Record<string, string>;
  /** The installed client's path. */
  client: string;
  /** The service's process id (for /proc/PID/status). */
  pid: number;
  /** Runs a command in `dir`; throws with its stderr when it fails. */
  sh(cmd: string, ...args: string[]): Promise<void>;
  stop(): Promise<void>;
}

export async function startServiceBench(prefix: string): Promise<ServiceBench> {
  const dir = await Deno.makeTempDir({ prefix });
  const socket = `${dir}/s.sock`;
  const env = { INSTAR_SOCKET: socket };
  const sh = async (cmd: string, ...args: string[]) => {
    const r = await new Deno.Command(cmd, { args, cwd: dir, env, stdout: "piped", stderr: "piped" }).output();
    if (!r.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  };
  await sh(DENO, "run", "-A", `${REPO}/main.ts`, "install-client", `${dir}/bin`);
  const svc = new Deno.Command(DENO, {
    args: ["run", "-A", `${REPO}/main.ts`, "serve", "--socket", socket],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 200 && !(await Deno.stat(socket).then(() => true, () => false)); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    dir,
    env,
    client: `${dir}/bin/instar`,
    pid: svc.pid,
    sh,
    async stop() {
      svc.kill("SIGTERM");
      await svc.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
