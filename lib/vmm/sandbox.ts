// Runs one guest operation in a fresh single-use VM and hands back its
// re-validated results. Every byte that comes back from the guest is
// untrusted: the record stream goes through decodeRecords (type, size and
// count checks), and anything but a clean RUN_DONE becomes a SandboxError.
// The VM is destroyed in a finally block, and no pointer view outlives it:
// results and log are copied out first.
import { decodeRecords, readStruct, RecordError, structSpec, writeStruct } from "../abi/records.ts";
import type { Rec } from "../abi/records.ts";
import {
  ABI_VERSION,
  attachFlags,
  hypercalls,
  limits,
  PARAMS_MAGIC,
  runStatus,
  vmmFlags,
} from "../abi/spec.ts";
import { loadGuest } from "../embedded/lazy.ts";
import { cString, strerror, vmmLib } from "./ffi.ts";
import { Cancelled, cancelSignal, guestCaps, hostPath } from "../host/context.ts";
import { packSecrets, secretSlots } from "./secrets.ts";

export interface GuestInput {
  path: string;
  format: number; // formats.*
  nofollow?: boolean;
  snapshot?: number; // params.input_snapshot: k + 1 reads qcow2 internal snapshot k
  secret?: Uint8Array; // an encrypted input's passphrase (params.secret, this run only)
}

export interface RunRequest {
  op: string; // embedded guest name ("info", "check", "map", ...)
  binary?: Uint8Array; // tests only: run this flat binary instead of an embedded one
  opCode: number; // ops.* written into params.op
  inputs: GuestInput[];
  args?: bigint[]; // params.arg[0..7]
  flags?: number; // params.flags
  kdfMaxIters?: bigint; // params.kdf_max_iters (LUKS PBKDF2 bound)
  ramBytes?: number; // default limits.RAM_DEFAULT
  timeoutMs?: number; // default 30000
  resultCap?: number; // default 64 MiB
  output?: { path: string; cap: bigint };
  /** The host fdatasyncs the output right after: start writeback as the guest writes (vmmFlags.WRITE_BEHIND). */
  writeBehind?: boolean;
  onProgress?: (done: bigint, total: bigint) => void;
  noSeccomp?: boolean; // tests only
}

export interface RunResult {
  status: number;
  detail: number;
  err: bigint;
  guestStatus: bigint;
  records: Rec[]; // decodeRecords() of the result stream
  inputs: { size: bigint; dev: bigint; ino: bigint }[];
  log: string;
  exits: bigint;
  elapsedNs: bigint;
  setupNs: bigint;
}

/** SandboxError.status when the run finished but its result stream was malformed. */
export const BAD_RECORDS = -1;

/** A guest run that did not end cleanly (status runStatus.* or BAD_RECORDS). */
export class SandboxError extends Error {
  status: number;
  detail: number;
  /** HOST_ERROR of an output write: errno, its text and the output offset that failed. */
  write?: { errno: number; text: string; offset: bigint };
  constructor(message: string, status: number, detail: number) {
    super(message);
    this.name = "SandboxError";
    this.status = status;
    this.detail = detail;
  }
}

const DEFAULT_TIMEOUT_MS = 30000;
const DEFAULT_RESULT_CAP = 64 * 1024 * 1024;
const LOG_CAP = 64 * 1024;
const PROGRESS_POLL_MS = 100;

const binaries = new Map<string, Uint8Array>();

async function guestBinary(op: string): Promise<Uint8Array> {
  let bin = binaries.get(op);
  if (!bin) {
    const b64 = await loadGuest(op);
    if (b64 === undefined) throw new Error(`No embedded guest named ${op}`);
    bin = Uint8Array.fromBase64(b64);
    binaries.set(op, bin);
  }
  return bin;
}

function statusMessage(
  status: number,
  detail: number,
  err: bigint,
  timeoutMs: number,
  errText: string,
): string {
  switch (status) {
    case runStatus.GUEST_FAULT:
      return "guest crashed";
    case runStatus.TIMEOUT:
      return `guest timed out after ${timeoutMs} ms`;
    case runStatus.BAD_HYPERCALL:
      return `guest made a bad hypercall (nr ${detail})`;
    case runStatus.OUTPUT_CAP:
      return "guest wrote past the output cap";
    case runStatus.RESULT_CAP:
      return "guest results exceeded the result cap";
    case runStatus.HOST_ERROR:
      return `host error during the guest run: ${errText} (${err})`;
    case runStatus.UNEXPECTED_EXIT:
      return `guest stopped with an unexpected exit (reason ${detail})`;
    case runStatus.SETUP_ERROR:
      return `guest could not be set up: ${errText}`;
    default:
      return `guest run ended with unknown status ${status}`;
  }
}

function checkRequest(req: RunRequest, ram: number, timeoutMs: number, resultCap: number): void {
  if (req.inputs.length > limits.MAX_INPUTS) {
    throw new Error(`Too many inputs: ${req.inputs.length} > ${limits.MAX_INPUTS}`);
  }
  if ((req.args?.length ?? 0) > 8) throw new Error("At most 8 guest arguments");
  if (!Number.isSafeInteger(ram) || ram < limits.RAM_MIN || ram > limits.RAM_MAX || ram % (2 * 1024 * 1024)) {
    throw new Error(`Guest RAM ${ram} must be a multiple of 2 MiB in [${limits.RAM_MIN}, ${limits.RAM_MAX}]`);
  }
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw new Error(`Bad guest timeout ${timeoutMs}`);
  if (!Number.isSafeInteger(resultCap) || resultCap < 0 || resultCap > 1024 * 1024 * 1024) {
    throw new Error(`Bad result cap ${resultCap}`);
  }
}

/** A guest that would not fit in the caller's limits (the service's clients). */
export class GuestLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestLimitError";
  }
}

const MiB = 1024 * 1024;

/** The RAM and watchdog a request gets under the caller's limits (the
 * service's clients): GuestLimitError when it cannot fit, Cancelled when the
 * request was cancelled. Shared with the tests' hosted stand-in. */
export function requestLimits(req: RunRequest): { ram: number; timeoutMs: number; resultCap: number } {
  const ram = req.ramBytes ?? limits.RAM_DEFAULT;
  const caps = guestCaps();
  let timeoutMs = req.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (caps.timeoutMs !== undefined) timeoutMs = Math.max(1, Math.min(timeoutMs, caps.timeoutMs));
  if (caps.deadline !== undefined) {
    const left = Math.floor(caps.deadline - performance.now());
    if (left <= 0) throw new GuestLimitError(`the caller's ${caps.cpuSource ?? "time limit"} is used up`);
    timeoutMs = Math.min(timeoutMs, left);
  }
  const resultCap = req.resultCap ?? DEFAULT_RESULT_CAP;
  checkRequest(req, ram, timeoutMs, resultCap);
  if (caps.ramBytes !== undefined && ram > caps.ramBytes) {
    throw new GuestLimitError(
      `the ${req.op} guest needs ${Math.ceil(ram / MiB)} MiB of memory, more than the caller's ` +
        `${caps.ramSource ?? "limit"} allows`,
    );
  }
  const signal = cancelSignal();
  if (signal?.aborted) throw new Cancelled();
  return { ram, timeoutMs, resultCap };
}

/** Runs one guest operation; see the module comment. Paths resolve against the
 * request's working directory; the caller's limits cap RAM and watchdog. */
export async function runGuest(req: RunRequest): Promise<RunResult> {
  const { ram, timeoutMs, resultCap } = requestLimits(req);
  const signal = cancelSignal();
  const binary = req.binary ?? await guestBinary(req.op);
  const lib = await vmmLib();

  const cfg = writeStruct(structSpec("vmm_config"), {
    abi_version: ABI_VERSION,
    flags: (req.noSeccomp ? vmmFlags.NO_SECCOMP : 0) | (req.writeBehind ? vmmFlags.WRITE_BEHIND : 0),
    ram_bytes: BigInt(ram),
    timeout_ms: BigInt(timeoutMs),
    output_cap: req.output?.cap ?? 0n,
    result_cap: BigInt(resultCap),
    log_cap: BigInt(LOG_CAP),
  });
  const vm = lib.vmm_create(cfg);
  if (vm === null) {
    const e = lib.vmm_last_errno();
    throw new SandboxError(`guest could not be set up: ${strerror(lib, e)}`, runStatus.SETUP_ERROR, e);
  }
  let poll: ReturnType<typeof setInterval> | undefined;
  try {
    let rc = lib.vmm_load(vm, binary, BigInt(binary.length));
    if (rc !== 0) {
      throw new SandboxError(`guest could not be loaded: ${strerror(lib, -rc)}`, runStatus.SETUP_ERROR, -rc);
    }

    const inputs: RunResult["inputs"] = [];
    const infoSpec = structSpec("vmm_input_info");
    for (const input of req.inputs) {
      const info = new Uint8Array(infoSpec.size);
      rc = lib.vmm_attach_input(
        vm,
        cString(hostPath(input.path)),
        input.nofollow ? attachFlags.NOFOLLOW : 0,
        info,
      );
      if (rc !== 0) throw Object.assign(new Error(strerror(lib, -rc)), { errno: -rc, path: input.path });
      const f = readStruct(new DataView(info.buffer), 0, infoSpec);
      inputs.push({ size: f.size as bigint, dev: f.dev as bigint, ino: f.ino as bigint });
    }
    if (req.output) {
      rc = lib.vmm_attach_output(
        vm,
        cString(hostPath(req.output.path)),
        attachFlags.WRITABLE | attachFlags.CREATE,
      );
      if (rc !== 0) throw Object.assign(new Error(strerror(lib, -rc)), { errno: -rc, path: req.output.path });
    }

    const sizes = inputs.map((i) => i.size);
    const secrets = packSecrets(secretSlots(req));
    const formats = req.inputs.map((i) => i.format);
    // Allocated bytes (st_blocks * 512): qcow2 map's metadata-preallocation test uses it like qemu.
    const allocs = req.inputs.map((i) => BigInt((Deno.statSync(hostPath(i.path)).blocks ?? 0) * 512));
    const snapshots = req.inputs.map((i) => i.snapshot ?? 0);
    const first = <T>(a: T[]): T[] => a.slice(0, limits.PARAM_INPUTS);
    const params = writeStruct(structSpec("params"), {
      magic: PARAMS_MAGIC,
      abi_version: ABI_VERSION,
      op: req.opCode,
      flags: req.flags ?? 0,
      n_inputs: req.inputs.length,
      ram_size: BigInt(ram),
      input_size: first(sizes),
      input_alloc: first(allocs),
      input_format: first(formats),
      input_snapshot: first(snapshots),
      output_cap: req.output?.cap ?? 0n,
      arg: req.args ?? [],
      kdf_max_iters: req.kdfMaxIters ?? 0n,
      secret_inputs: secrets?.mask ?? 0,
      input_secret_len: secrets?.lengths ?? [],
      secret: secrets?.bytes ?? new Uint8Array(0),
    });
    secrets?.bytes.fill(0);
    // Every input's entry (layout.INPUTS) follows the parameter block.
    const entrySpec = structSpec("input_entry");
    const block = new Uint8Array(params.length + entrySpec.size * sizes.length);
    block.set(params, 0);
    sizes.forEach((size, k) => {
      const entry = writeStruct(entrySpec, {
        size,
        alloc: allocs[k],
        format: formats[k],
        snapshot: snapshots[k],
      });
      block.set(entry, params.length + entrySpec.size * k);
    });
    rc = lib.vmm_set_params(vm, block, BigInt(block.length));
    // The passphrases now live in the guest's memory only (unmapped with the VM).
    params.fill(0);
    block.fill(0);
    if (rc !== 0) {
      throw new SandboxError(`guest could not be set up: ${strerror(lib, -rc)}`, runStatus.SETUP_ERROR, -rc);
    }

    const progress = req.onProgress ? lib.vmm_progress(vm) : null;
    let last = [-1n, -1n];
    const pollProgress = () => {
      if (!progress || !req.onProgress) return;
      const view = new Deno.UnsafePointerView(progress);
      const done = view.getBigUint64(0);
      const total = view.getBigUint64(8);
      if (done !== last[0] || total !== last[1]) {
        last = [done, total];
        req.onProgress(done, total);
      }
    };
    if (progress) poll = setInterval(pollProgress, PROGRESS_POLL_MS);

    const repSpec = structSpec("vmm_report");
    const repBuf = new Uint8Array(repSpec.size);
    const cancel = () => lib.vmm_cancel(vm);
    signal?.addEventListener("abort", cancel);
    try {
      rc = await lib.vmm_run(vm, repBuf);
    } finally {
      signal?.removeEventListener("abort", cancel);
    }
    if (signal?.aborted) throw new Cancelled();
    if (poll !== undefined) {
      clearInterval(poll);
      poll = undefined;
      pollProgress();
    }
    if (rc !== 0) {
      throw new SandboxError(`guest could not be run: ${strerror(lib, -rc)}`, runStatus.SETUP_ERROR, -rc);
    }
    const rep = readStruct(new DataView(repBuf.buffer), 0, repSpec);
    const status = rep.status as number;
    const detail = rep.detail as number;
    const err = rep.err as bigint;
    if (status !== runStatus.DONE) {
      const errText = err > 0n && err < 4096n ? strerror(lib, Number(err)) : "unknown error";
      const e = new SandboxError(statusMessage(status, detail, err, timeoutMs, errText), status, detail);
      if (status === runStatus.HOST_ERROR && (detail === hypercalls.WRITE || detail === hypercalls.WRITEV)) {
        e.write = { errno: Number(err), text: errText, offset: (rep.reserved as bigint[])[0] };
      }
      throw e;
    }

    // Copy results and log out of VMM memory before vmm_destroy frees it.
    const stream = copyOut(lib.vmm_result(vm, lenBuf()), lastLen, resultCap);
    const logBytes = copyOut(lib.vmm_log(vm, lenBuf()), lastLen, LOG_CAP);
    let records: Rec[];
    try {
      records = decodeRecords(stream);
    } catch (e) {
      if (e instanceof RecordError) {
        throw new SandboxError(`guest produced malformed results: ${e.message}`, BAD_RECORDS, 0);
      }
      throw e;
    }
    return {
      status,
      detail,
      err,
      guestStatus: rep.guest_status as bigint,
      records,
      inputs,
      log: new TextDecoder().decode(logBytes),
      exits: rep.exits as bigint,
      elapsedNs: rep.elapsed_ns as bigint,
      setupNs: rep.setup_ns as bigint,
    };
  } finally {
    if (poll !== undefined) clearInterval(poll);
    lib.vmm_destroy(vm);
  }
}

// vmm_result / vmm_log write the length into an 8-byte buffer.
const lastLen = new BigUint64Array(1);
function lenBuf(): Uint8Array {
  lastLen[0] = 0n;
  return new Uint8Array(lastLen.buffer);
}

function copyOut(ptr: Deno.PointerValue, len: BigUint64Array, cap: number): Uint8Array {
  const n = len[0];
  if (n > BigInt(cap)) {
    throw new SandboxError(`VMM reported ${n} bytes, over the cap ${cap}`, runStatus.HOST_ERROR, 0);
  }
  if (ptr === null || n === 0n) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, Number(n))).slice();
}

/**
 * Removes [off, off+len) from a file, moving the rest down (fallocate
 * COLLAPSE_RANGE). Returns false when the filesystem cannot (the caller
 * keeps the range as a hole).
 */
export async function collapseRange(path: string, off: bigint, len: bigint): Promise<boolean> {
  const lib = await vmmLib();
  return lib.vmm_collapse_range(cString(hostPath(path)), off, len) === 0;
}

/**
 * A range operation on the file at `path`, which must still be (dev, ino):
 * "allocate" is posix_fallocate (preallocation=falloc), "punch" a hole
 * that keeps the size (qemu's discard). Returns undefined, or the
 * strerror() text of the failure.
 */
export async function fileRange(
  op: "allocate" | "punch",
  path: string,
  off: bigint,
  len: bigint,
  dev: bigint,
  ino: bigint,
): Promise<string | undefined> {
  const lib = await vmmLib();
  // vmm/file_ops.c: VMM_RANGE_ALLOCATE = 0, VMM_RANGE_PUNCH = 1.
  const rc = lib.vmm_file_range(cString(hostPath(path)), op === "allocate" ? 0 : 1, off, len, dev, ino);
  return rc === 0 ? undefined : strerror(lib, -rc);
}
