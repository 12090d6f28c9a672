// The thin client and `instar serve` (docs/service.md): under
// `prlimit --as=1G --cpu=30` the client prints the same bytes and exits
// with the same codes as the direct CLI; other uids are refused; 8 clients
// at once get right answers; with no service the client execs the direct
// CLI when it can and prints one line when it cannot; a cancel mid-convert
// leaves no target; a service that dies mid-request gives a clear error.
// Every test starts its own service on a temporary socket and stops it.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, CLI_ENTRY, DENO, exec, haveQemuImg, instar, type Outcome, REPO, sh } from "./cli_helpers.ts";

const ready = built() && haveQemuImg();
/** A working KVM (the node can exist without the module behind it). */
const kvm = (() => {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return true;
  } catch {
    return false;
  }
})();
const haveTool = (t: string) => {
  try {
    return new Deno.Command(t, { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
};
const LIMITS = ["--as=1073741824", "--cpu=30"];

interface Service {
  socket: string;
  child: Deno.ChildProcess;
  log: () => string;
  stop: () => Promise<void>;
}

/** Starts `instar serve` on `socket` (cwd "/", so relative paths must come from the client). */
async function startService(socket: string): Promise<Service> {
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", CLI_ENTRY, "serve", "--socket", socket],
    cwd: "/",
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const reader = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) log += dec.decode(chunk);
  })();
  for (let i = 0; i < 300 && !log.includes("listening"); i++) await new Promise((r) => setTimeout(r, 50));
  assert(log.includes("listening"), `the service did not start: ${log}`);
  let stopped = false;
  return {
    socket,
    child,
    log: () => log,
    stop: async () => {
      if (!stopped) {
        stopped = true;
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
      }
      await child.status;
      await reader;
    },
  };
}

async function installClient(dir: string): Promise<string> {
  const r = await instar(["install-client", `${dir}/bin`, "--name", "qemu-img"], dir);
  assertEquals(r.code, 0, r.stderr);
  return `${dir}/bin/qemu-img`;
}

/** Runs the client under prlimit with INSTAR_SOCKET = socket. */
function client(bin: string, socket: string, args: string[], cwd: string, limits = LIMITS): Promise<Outcome> {
  return execEnv("prlimit", [...limits, bin, ...args], cwd, { INSTAR_SOCKET: socket });
}

async function execEnv(
  cmd: string,
  args: string[],
  cwd: string,
  env: Record<string, string>,
): Promise<Outcome> {
  const out = await new Deno.Command(cmd, { args, cwd, env, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), code: out.code };
}

/** Two identical directories of qemu-img-made images: one for the direct CLI, one for the client. */
async function images(root: string): Promise<[string, string]> {
  const dirs: [string, string] = [`${root}/direct`, `${root}/client`];
  for (const d of dirs) {
    await Deno.mkdir(d, { recursive: true });
    await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M");
    await sh(d, "qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "write -P 9 10M 64k", "a.qcow2");
    await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "64M");
    await sh(d, "qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", "b.qcow2");
    await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "r.qcow2", "16M");
  }
  return dirs;
}

async function tempDir(): Promise<string> {
  const d = await Deno.makeTempDir({ prefix: "instar-svc-" });
  await Deno.chmod(d, 0o755);
  return d;
}

Deno.test({
  name: "service: the client under prlimit --as=1G --cpu=30 prints what the direct CLI prints",
  ignore: !ready,
}, async (t) => {
  const root = await tempDir();
  const svc = await startService(`${root}/s.sock`);
  try {
    const bin = await installClient(root);
    const [direct, viaClient] = await images(root);
    const cases: string[][] = [
      ["info", "a.qcow2"],
      ["info", "--output=json", "a.qcow2"],
      ["check", "a.qcow2"],
      ["check", "--output=json", "a.qcow2"],
      ["map", "a.qcow2"],
      ["map", "--output=json", "a.qcow2"],
      ["convert", "-O", "raw", "a.qcow2", "out.raw"],
      ["convert", "-O", "qcow2", "-c", "a.qcow2", "out.qcow2"],
      ["compare", "a.qcow2", "b.qcow2"],
      ["measure", "-O", "qcow2", "a.qcow2"],
      ["measure", "-O", "qcow2", "--size", "2G"],
      ["create", "-f", "qcow2", "new.qcow2", "1G"],
      ["create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "over.qcow2"],
      ["resize", "r.qcow2", "+16M"],
      ["info", "missing.qcow2"],
      ["frobnicate"],
      [],
    ];
    for (const args of cases) {
      await t.step(args.join(" ") || "(no arguments)", async () => {
        const want = await instar(args, direct);
        const got = await client(bin, svc.socket, args, viaClient);
        assertEquals(got, want);
      });
    }
    await t.step("the files the commands wrote are the same", async () => {
      for (const f of ["out.raw", "out.qcow2", "new.qcow2", "over.qcow2", "r.qcow2"]) {
        const a = await Deno.readFile(`${direct}/${f}`).catch(() => undefined);
        const b = await Deno.readFile(`${viaClient}/${f}`).catch(() => undefined);
        assertEquals(a === undefined, b === undefined, f);
        if (a && b && f !== "out.qcow2") assertEquals(a.length, b.length, f);
      }
    });
    // `-` through the client: the service reads and writes the descriptors the
    // client passed, so a pipeline under the caller's limits works as directly.
    await t.step("pipelines: '-' for stdin and stdout, inspect -", async () => {
      const env = { INSTAR_SOCKET: svc.socket, C: `prlimit ${LIMITS.join(" ")} ${bin}` };
      const piped = await execEnv(
        "sh",
        [
          "-c",
          "cat a.qcow2 | $C convert -O raw - - > piped.raw && $C convert -O qcow2 a.qcow2 - | cat > piped.qcow2",
        ],
        viaClient,
        env,
      );
      assertEquals(piped, { stdout: "", stderr: "", code: 0 });
      assertEquals(await Deno.readFile(`${viaClient}/piped.raw`), await Deno.readFile(`${direct}/out.raw`));
      const back = await exec(
        "qemu-img",
        ["compare", "-f", "qcow2", "-F", "raw", "piped.qcow2", "piped.raw"],
        viaClient,
      );
      assertEquals(back.code, 0, back.stdout + back.stderr);
      const script = `${DENO} run -A ${CLI_ENTRY} inspect --output=json - < a.qcow2`;
      const want = await execEnv("sh", ["-c", script], direct, {});
      const got = await execEnv("sh", ["-c", "$C inspect --output=json - < a.qcow2"], viaClient, env);
      assertEquals(got, want);
      assertEquals(want.code, 0, want.stderr);
    });
    await t.step("--version names the qemu-img version the output follows", async () => {
      const q = await exec("qemu-img", ["--version"], root);
      const qv = /qemu-img version ([0-9.]*)/.exec(q.stdout)![1];
      const got = await client(bin, svc.socket, ["--version"], viaClient);
      assertEquals(got.code, 0);
      assertEquals(/qemu-img version ([0-9.]*)/.exec(got.stdout)?.[1], qv);
      assertEquals(got, await instar(["--version"], direct));
    });
  } finally {
    await svc.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "service: limits, peers, concurrency and the no-service fallback", ignore: !ready },
  async (t) => {
    const root = await tempDir();
    const svc = await startService(`${root}/s.sock`);
    try {
      const bin = await installClient(root);
      const [direct, viaClient] = await images(root);

      await t.step("a guest larger than the client's RLIMIT_AS is refused, no output file", async () => {
        const r = await client(bin, svc.socket, ["convert", "-O", "raw", "a.qcow2", "small.raw"], viaClient, [
          "--as=33554432",
        ]);
        assertEquals(r.code, 1);
        assert(/address-space limit \(RLIMIT_AS 32 MiB\)/.test(r.stderr), r.stderr);
        assertEquals(r.stdout, "");
        assert(!(await exists(`${viaClient}/small.raw`)));
        assertEquals(
          (await Array.fromAsync(Deno.readDir(viaClient))).filter((e) => e.name.includes(".instar-")),
          [],
        );
      });

      await t.step("8 clients at once all get right answers", async () => {
        const args = kvm ? ["info", "--output=json", "a.qcow2"] : ["measure", "-O", "qcow2", "--size", "3G"];
        const want = await instar(args, direct);
        const got = await Promise.all(
          Array.from({ length: 8 }, () => client(bin, svc.socket, args, viaClient)),
        );
        for (const g of got) assertEquals(g, want);
      });

      await t.step("8 clients at once from 8 working directories each get their own", async () => {
        const dirs = Array.from({ length: 8 }, (_, i) => `${root}/cwd${i}`);
        for (const d of dirs) await Deno.mkdir(d);
        const got = await Promise.all(
          dirs.map((d, i) => client(bin, svc.socket, ["create", "-q", "-f", "raw", "n.raw", `${i + 1}M`], d)),
        );
        for (const [i, g] of got.entries()) {
          assertEquals(g, { stdout: "", stderr: "", code: 0 });
          assertEquals((await Deno.stat(`${dirs[i]}/n.raw`)).size, (i + 1) << 20);
        }
        assert(!(await exists("/n.raw")), "a request used the service's working directory");
      });

      await t.step({
        name: "a peer of another uid is refused",
        ignore: Deno.uid() !== 0 || !haveTool("setpriv"),
        fn: async () => {
          await Deno.chmod(svc.socket, 0o666); // let it connect, so SO_PEERCRED decides
          const r = await execEnv(
            "setpriv",
            [
              "--reuid",
              "nobody",
              "--regid",
              "nogroup",
              "--clear-groups",
              bin,
              "measure",
              "--size",
              "1G",
            ],
            "/",
            { INSTAR_SOCKET: svc.socket },
          );
          assertEquals(r.code, 1);
          assertEquals(r.stdout, "");
          assert(/serves only its own user/.test(r.stderr), r.stderr);
          await Deno.chmod(svc.socket, 0o600);
          // The service logs the refusal after it closed the connection: on a
          // busy machine the client's exit can come first (a fresh-clone CI run
          // failed so), so wait for the line a little.
          for (let i = 0; i < 50 && !/refused a peer with uid/.test(svc.log()); i++) {
            await new Promise((r) => setTimeout(r, 100));
          }
          assert(/refused a peer with uid/.test(svc.log()), svc.log());
        },
      });

      await t.step("no service under --as=1G: one line, exit 1", async () => {
        const r = await client(bin, `${root}/none.sock`, ["info", "a.qcow2"], viaClient);
        assertEquals(r.code, 1);
        assertEquals(r.stdout, "");
        assertEquals(r.stderr.split("\n").length, 2, r.stderr);
        assert(/no instar service at .*none\.sock.*instar serve/.test(r.stderr), r.stderr);
      });

      await t.step("no service and no limit: the client execs the direct CLI", async () => {
        const args = ["measure", "-O", "qcow2", "--size", "5G"];
        const r = await execEnv(bin, args, viaClient, { INSTAR_SOCKET: `${root}/none.sock` });
        assertEquals(r, await instar(args, direct));
      });

      await t.step(
        "the direct CLI the client execs: --cli at install time, INSTAR_CLI at run time",
        async () => {
          const r0 = await instar(["install-client", `${root}/echo`, "--cli", "/bin/echo"], root);
          assertEquals(r0.code, 0, r0.stderr);
          const none = { INSTAR_SOCKET: `${root}/none.sock` };
          assertEquals(await execEnv(`${root}/echo/instar`, ["info", "x y"], root, none), {
            stdout: "info x y\n",
            stderr: "",
            code: 0,
          });
          const r1 = await execEnv(bin, ["a", "b"], root, { ...none, INSTAR_CLI: "/bin/echo" });
          assertEquals(r1, { stdout: "a b\n", stderr: "", code: 0 });
        },
      );

      await t.step("installed as qemu-img first in PATH, the client is not taken for qemu-img", async () => {
        const path = `${root}/bin:${Deno.env.get("PATH")}`;
        const q = await exec("qemu-img", ["--version"], root);
        const qv = /qemu-img version ([0-9.]*)/.exec(q.stdout)![1];
        for (const socket of [svc.socket, `${root}/none.sock`]) {
          const r = await execEnv("timeout", ["60", "qemu-img", "--version"], viaClient, {
            PATH: path,
            INSTAR_SOCKET: socket,
          });
          assertEquals(r.code, 0, r.stderr);
          assertEquals(/qemu-img version ([0-9.]*) compatible/.exec(r.stdout)?.[1], qv, r.stdout);
        }
      });

      await t.step("a silent or malformed connection delays no one", async () => {
        const silent = await Deno.connect({ transport: "unix", path: svc.socket });
        const args = ["measure", "-O", "qcow2", "--size", "2G"];
        const t0 = performance.now();
        assertEquals(await client(bin, svc.socket, args, viaClient), await instar(args, direct));
        assert(performance.now() - t0 < 3000, "a silent connection held up the next request");
        const bad = await Deno.connect({ transport: "unix", path: svc.socket });
        await bad.write(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n".padEnd(40, " ")));
        const reply = new Uint8Array(4096);
        const n = await bad.read(reply);
        const text = new TextDecoder().decode(reply.subarray(16, n ?? 16));
        assert(/malformed request/.test(text), text);
        bad.close();
        silent.close();
      });

      await t.step("serve and install-client are refused through the service", async () => {
        const r = await client(bin, svc.socket, ["serve", "--socket", `${root}/x.sock`], viaClient);
        assertEquals(r, {
          stdout: "",
          stderr: "instar: 'serve' cannot run through the instar service\n",
          code: 1,
        });
      });

      await t.step("the service keeps serving after all that", async () => {
        const args = ["measure", "-O", "qcow2", "--size", "1G"];
        assertEquals(await client(bin, svc.socket, args, viaClient), await instar(args, direct));
      });
    } finally {
      await svc.stop();
      await Deno.remove(root, { recursive: true });
    }
  },
);

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.lstat(p);
    return true;
  } catch {
    return false;
  }
}

Deno.test(
  { name: "service: SIGINT to the client mid-convert leaves no target file", ignore: !ready },
  async () => {
    const root = await tempDir();
    const svc = await startService(`${root}/s.sock`);
    try {
      const bin = await installClient(root);
      await sh(root, "qemu-img", "create", "-q", "-f", "qcow2", "big.qcow2", "2G");
      await sh(root, "qemu-io", "-f", "qcow2", "-c", "write -P 3 0 1536M", "big.qcow2");
      const child = new Deno.Command("prlimit", {
        args: [...LIMITS, bin, "convert", "-O", "qcow2", "-c", "big.qcow2", "t.qcow2"],
        cwd: root,
        env: { INSTAR_SOCKET: svc.socket },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      // Wait for the temporary output to appear: the guest is running.
      for (let i = 0; i < 200; i++) {
        const names = (await Array.fromAsync(Deno.readDir(root))).map((e) => e.name);
        if (names.some((n) => n.includes(".instar-"))) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 200));
      // prlimit execs the client, so the child's pid is the client's.
      Deno.kill(child.pid, "SIGINT");
      const st = await child.output();
      assertEquals(st.code, 130, new TextDecoder().decode(st.stderr));
      const names = (await Array.fromAsync(Deno.readDir(root))).map((e) => e.name);
      assert(!names.includes("t.qcow2"), names.join(" "));
      assertEquals(names.filter((n) => n.includes(".instar-")), []);
    } finally {
      await svc.stop();
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  { name: "service: killing the service mid-request gives the client a clear error", ignore: !ready },
  async () => {
    const root = await tempDir();
    const svc = await startService(`${root}/s.sock`);
    try {
      const bin = await installClient(root);
      // A request that takes a while without any guest: 4 GiB of zeroes written.
      const child = new Deno.Command("prlimit", {
        args: [...LIMITS, bin, "create", "-f", "raw", "-o", "preallocation=full", "big.raw", "4G"],
        cwd: root,
        env: { INSTAR_SOCKET: svc.socket },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      for (let i = 0; i < 200 && !(await exists(`${root}/big.raw`)); i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      svc.child.kill("SIGKILL");
      const st = await child.output();
      assertEquals(st.code, 1);
      const err = new TextDecoder().decode(st.stderr);
      assert(/service closed the connection before the command finished/.test(err), err);
    } finally {
      await svc.stop();
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  { name: "service: the caller's limits and cancel bound hostile guests", ignore: !ready || !kvm },
  async (t) => {
    const { runGuest, GuestLimitError, SandboxError } = await import("../lib/vmm/sandbox.ts");
    const { Cancelled, withHostContext } = await import("../lib/host/context.ts");
    const { ops } = await import("../lib/abi/spec.ts");
    const guest = (name: string) => Deno.readFileSync(`${REPO}/build/test-guests/${name}.bin`);
    const loop = () =>
      runGuest({ op: "loop", binary: guest("loop"), opCode: ops.TEST, inputs: [], timeoutMs: 30000 });
    await t.step("RLIMIT_CPU 1 s stops a looping guest after a second", async () => {
      const t0 = performance.now();
      await rejectsWith(
        withHostContext({ caps: { timeoutMs: 1000 } }, loop),
        SandboxError,
        /timed out after 1000 ms/,
      );
      const took = performance.now() - t0;
      assert(took >= 1000 && took < 1500, `${took} ms`);
    });
    await t.step("the request's deadline covers all its guests", async () => {
      const caps = {
        timeoutMs: 60000,
        deadline: performance.now() + 800,
        cpuSource: "CPU-time limit (RLIMIT_CPU 1 s)",
      };
      await withHostContext({ caps }, async () => {
        await rejectsWith(loop(), SandboxError, /timed out after \d+ ms/);
        await rejectsWith(loop(), GuestLimitError, /CPU-time limit \(RLIMIT_CPU 1 s\) is used up/);
      });
    });
    await t.step("a guest larger than RLIMIT_AS is not started", async () => {
      await rejectsWith(
        withHostContext(
          { caps: { ramBytes: 32 << 20, ramSource: "address-space limit (RLIMIT_AS 32 MiB)" } },
          () =>
            runGuest({
              op: "touch_ram",
              binary: guest("touch_ram"),
              opCode: ops.TEST,
              inputs: [],
              ramBytes: 64 << 20,
            }),
        ),
        GuestLimitError,
        /needs 64 MiB of memory, more than the caller's address-space limit \(RLIMIT_AS 32 MiB\)/,
      );
    });
    await t.step("a cancel stops a running guest at once", async () => {
      const ac = new AbortController();
      setTimeout(() => ac.abort("SIGINT"), 200);
      const t0 = performance.now();
      await rejectsWith(withHostContext({ signal: ac.signal }, loop), Cancelled, /cancelled/);
      assert(performance.now() - t0 < 1000);
    });
  },
);

async function rejectsWith(p: Promise<unknown>, cls: new (...a: any[]) => Error, re: RegExp) {
  try {
    await p;
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    assert(re.test((e as Error).message), (e as Error).message);
    return;
  }
  assert(false, "expected a rejection");
}

Deno.test({
  name: "service: systemd socket activation, graceful stop, stale and live sockets",
  ignore: !ready,
}, async (t) => {
  const root = await tempDir();
  try {
    const bin = await installClient(root);
    const args = ["measure", "-O", "qcow2", "--size", "7G"];
    const want = await instar(args, root);

    await t.step({
      name: "a socket passed by systemd (LISTEN_FDS) is served",
      ignore: !haveTool("systemd-socket-activate"),
      fn: async () => {
        const socket = `${root}/act.sock`;
        const act = new Deno.Command("systemd-socket-activate", {
          args: ["-l", socket, DENO, "run", "-A", CLI_ENTRY, "serve"],
          cwd: "/",
          stdin: "null",
          stdout: "null",
          stderr: "piped",
        }).spawn();
        try {
          for (let i = 0; i < 200 && !(await exists(socket)); i++) {
            await new Promise((r) => setTimeout(r, 25));
          }
          assertEquals(await client(bin, socket, args, root), want);
          assertEquals(await client(bin, socket, args, root), want);
        } finally {
          act.kill("SIGTERM");
          const out = await act.output();
          const log = new TextDecoder().decode(out.stderr);
          assert(/listening on the socket systemd passed \(fd 3\)/.test(log), log);
        }
      },
    });

    await t.step("SIGTERM lets the request in flight finish, then removes the socket", async () => {
      const svc = await startService(`${root}/g.sock`);
      try {
        const child = new Deno.Command("prlimit", {
          args: [...LIMITS, bin, "create", "-q", "-f", "raw", "-o", "preallocation=full", "full.raw", "1G"],
          cwd: root,
          env: { INSTAR_SOCKET: svc.socket },
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        for (let i = 0; i < 400 && !(await exists(`${root}/full.raw`)); i++) {
          await new Promise((r) => setTimeout(r, 10));
        }
        svc.child.kill("SIGTERM");
        const out = await child.output();
        assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
        assertEquals((await Deno.stat(`${root}/full.raw`)).size, 1 << 30);
        assertEquals((await svc.child.status).code, 0);
        assert(!(await exists(svc.socket)), "the socket file is left behind");
      } finally {
        await svc.stop();
      }
    });

    await t.step("a stale socket is replaced; a live one is not taken over", async () => {
      const svc = await startService(`${root}/k.sock`);
      svc.child.kill("SIGKILL");
      await svc.stop();
      assert(await exists(`${root}/k.sock`));
      const second = await startService(`${root}/k.sock`);
      try {
        assertEquals(await client(bin, second.socket, args, root), want);
        const third = await new Deno.Command(DENO, {
          args: ["run", "-A", CLI_ENTRY, "serve", "--socket", second.socket],
          stdout: "null",
          stderr: "piped",
        }).output();
        assertEquals(third.code, 1);
        assert(
          /another instar service is already listening there/.test(new TextDecoder().decode(third.stderr)),
        );
        assertEquals(await client(bin, second.socket, args, root), want);
      } finally {
        await second.stop();
      }
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "service: a request whose time is used up starts no more guests", ignore: !ready },
  async () => {
    const { runGuest, GuestLimitError } = await import("../lib/vmm/sandbox.ts");
    const { withHostContext } = await import("../lib/host/context.ts");
    const { ops } = await import("../lib/abi/spec.ts");
    const caps = { deadline: performance.now() - 1, cpuSource: "CPU-time limit (RLIMIT_CPU 1 s)" };
    await rejectsWith(
      withHostContext({ caps }, () => runGuest({ op: "info", opCode: ops.INFO, inputs: [] })),
      GuestLimitError,
      /^the caller's CPU-time limit \(RLIMIT_CPU 1 s\) is used up$/,
    );
  },
);
