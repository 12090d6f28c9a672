// A stand-in for lib/vmm/sandbox.ts runGuest for machines without a usable
// /dev/kvm (tests only): runs the same operation program's hosted build
// (build/host/<op>, guest/host/rt_host.c) over the same inputs, output and
// parameters, and returns its records the way the VMM would. What it cannot
// stand in for (the VMM's isolation, caps and watchdog) is what
// tests/vmm_test.ts covers where KVM exists.
import { decodeRecords, RecordError } from "../../lib/abi/records.ts";
import { runStatus } from "../../lib/abi/spec.ts";
import type { RunRequest, RunResult } from "../../lib/vmm/guest.ts";
import { Cancelled, cancelSignal, hostPath } from "../../lib/host/context.ts";
import { requestLimits } from "../../lib/vmm/sandbox.ts";
import { packSecrets, secretSlots } from "../../lib/vmm/secrets.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const HOST = `${ROOT}build/host`;

/** The embedded guest name -> the hosted program built from the same sources. */
function program(op: string): string {
  return `${HOST}/${op}`;
}

export class HostedRunError extends Error {
  write?: { errno: number; text: string; offset: bigint };
  constructor(message: string, readonly status: number, readonly detail = 0) {
    super(message);
    this.name = "SandboxError";
  }
}

export async function hostedRunGuest(req: RunRequest): Promise<RunResult> {
  // The caller's limits and cancel apply as in the VM (the service's requests).
  const { ram, timeoutMs } = requestLimits(req);
  const args: string[] = [];
  for (const a of req.args ?? []) args.push("--arg", BigInt.asUintN(64, a).toString());
  if (req.flags) args.push("--flags", String(req.flags));
  args.push("--ram", String(ram));
  // Paths resolve against the request's working directory (the service's
  // requests carry their own), as lib/vmm/sandbox.ts resolves them.
  if (req.output) args.push("-O", hostPath(req.output.path), "--cap", req.output.cap.toString());
  const inputs: RunResult["inputs"] = [];
  for (const i of req.inputs) {
    const path = hostPath(i.path);
    const st = i.nofollow ? Deno.lstatSync(path) : Deno.statSync(path);
    if (st.isSymlink) {
      throw Object.assign(new Error("Too many levels of symbolic links"), { errno: 40, path: i.path });
    }
    // A block device's size as the VMM's BLKGETSIZE64 gives it (stat says 0).
    let size = BigInt(st.size);
    if (st.isBlockDevice) {
      using f = Deno.openSync(path, { read: true });
      size = BigInt(f.seekSync(0, Deno.SeekMode.End));
    }
    inputs.push({ size, dev: BigInt(st.dev), ino: BigInt(st.ino ?? 0) });
    if (i.snapshot) args.push("--snapshot", String(i.snapshot));
    args.push(`${i.format}:${path}`);
  }
  const env = req.onProgress ? { INSTAR_HOST_PROGRESS: "1" } : undefined;
  if (req.kdfMaxIters !== undefined) args.unshift("--kdf-max-iters", req.kdfMaxIters.toString());
  // Passphrases go over stdin in params' layout, never in argv.
  const secrets = packSecrets(secretSlots(req));
  if (secrets) args.unshift("--secrets-stdin");
  const child = new Deno.Command(program(req.op), {
    args,
    env,
    stdin: secrets ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (secrets) {
    // params.secret_inputs, input_secret_len[16], secret
    const block = new Uint8Array(4 + 64 + secrets.bytes.length);
    const view = new DataView(block.buffer);
    view.setUint32(0, secrets.mask, true);
    secrets.lengths.forEach((n, i) => view.setUint32(4 + 4 * i, n, true));
    block.set(secrets.bytes, 68);
    const w = child.stdin.getWriter();
    await w.write(block);
    await w.close();
    block.fill(0);
    secrets.bytes.fill(0);
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, timeoutMs);
  const signal = cancelSignal();
  const cancel = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  };
  signal?.addEventListener("abort", cancel);
  const out = await child.output();
  clearTimeout(timer);
  signal?.removeEventListener("abort", cancel);
  if (signal?.aborted) throw new Cancelled();
  const stderr = new TextDecoder().decode(out.stderr);
  if (timedOut) throw new HostedRunError(`guest timed out after ${timeoutMs} ms`, runStatus.TIMEOUT);
  if (out.signal) throw new HostedRunError(`guest crashed (hosted: ${out.signal})`, runStatus.GUEST_FAULT);
  if (out.code === 70) {
    throw new HostedRunError(
      `guest made a bad hypercall (hosted: ${stderr.trim()})`,
      runStatus.BAD_HYPERCALL,
    );
  }
  const w = /hosted rt: write error (\d+) at (\d+): (.*)/.exec(stderr);
  if (out.code === 71 && w) {
    // The VMM's HOST_ERROR of an output write, with the same details.
    const e = new HostedRunError(`host error during the guest run: ${w[3]} (${w[1]})`, runStatus.HOST_ERROR);
    e.write = { errno: Number(w[1]), text: w[3], offset: BigInt(w[2]) };
    throw e;
  }
  if (out.code !== 0) {
    throw new HostedRunError(`hosted guest exited ${out.code}: ${stderr.trim()}`, runStatus.HOST_ERROR);
  }
  let records;
  try {
    records = decodeRecords(out.stdout);
  } catch (e) {
    if (e instanceof RecordError) {
      throw new HostedRunError(`guest produced malformed results: ${e.message}`, -1);
    }
    throw e;
  }
  // The VMM's poll sees some of the guest's progress calls; a replay of all
  // of them, in order, is one of the sequences it could have seen.
  if (req.onProgress) {
    for (const p of stderr.matchAll(/^progress (\d+) (\d+)$/gm)) req.onProgress(BigInt(p[1]), BigInt(p[2]));
  }
  const m = /guest status (\d+)/.exec(stderr);
  return {
    status: runStatus.DONE,
    detail: 0,
    err: 0n,
    guestStatus: m ? BigInt(m[1]) : 0n,
    records,
    inputs,
    log: "",
    exits: 0n,
    elapsedNs: 0n,
    setupNs: 0n,
  };
}
