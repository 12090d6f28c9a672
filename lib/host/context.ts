// The per-request host context. The direct CLI runs one command per process
// with the process's working directory, environment and no caller limits;
// `instar serve` runs many at once, each with its client's working
// directory, environment entries, resource limits and cancel. Commands
// never read those from the process: every path a command opens goes
// through hostPath(), every environment entry through hostEnv(), and the
// sandbox takes its caps from guestCaps() and its cancel from cancelSignal().
// In the service the context follows each command across awaits
// (AsyncLocalStorage, enabled by enableConcurrentContexts()), so concurrent
// requests never see each other's (no process-wide Deno.chdir). The direct
// CLI runs one command per process and skips node:async_hooks (~9 ms of
// start-up): its context is a plain module variable.
import type { AsyncLocalStorage } from "node:async_hooks";
import type { HostStdio } from "./stdio.ts";

/** The caller's limits applied to guests (from the client's RLIMIT_AS/RLIMIT_CPU). */
export interface GuestCaps {
  /** Guest RAM must not exceed this (bytes). */
  ramBytes?: number;
  /** Guest watchdog at most this (ms). */
  timeoutMs?: number;
  /** performance.now() by which the whole request's guests must be done (its
   * RLIMIT_CPU spent as wall-clock time, however many guests it runs). */
  deadline?: number;
  /** The CPU-time limit in words, for messages ("RLIMIT_CPU 30 s"). */
  cpuSource?: string;
  /** Where the caps come from, for messages ("RLIMIT_AS 1024 MiB"). */
  ramSource?: string;
}

export interface HostContext {
  /** Absolute working directory relative paths resolve against. */
  cwd?: string;
  /** The caller's environment entries (the whole set the command sees). */
  env?: Record<string, string>;
  caps?: GuestCaps;
  /** Aborted with reason "SIGINT" or "SIGTERM" when the caller cancels. */
  signal?: AbortSignal;
  /** Set for requests `instar serve` runs (commands like serve refuse to run there). */
  service?: boolean;
  /** The caller's stdin and stdout (lib/host/stdio.ts); unset: the process's own. */
  stdio?: HostStdio;
  /** Image locks the command holds (lib/vmm/image_lock.ts); run() releases them at its end. */
  locks?: { release(): void }[];
}

let store: AsyncLocalStorage<HostContext> | undefined;
let current: HostContext = {};

/** Called once by `instar serve` before it runs requests concurrently. */
export async function enableConcurrentContexts(): Promise<void> {
  if (store) return;
  const { AsyncLocalStorage } = await import("node:async_hooks");
  store = new AsyncLocalStorage<HostContext>();
}

/** Runs fn with ctx as the host context of everything it awaits. Without
 * enableConcurrentContexts(), calls must not overlap (the direct CLI, tests). */
export async function withHostContext<T>(ctx: HostContext, fn: () => Promise<T>): Promise<T> {
  if (store) return await store.run(ctx, fn);
  const prev = current;
  current = ctx;
  try {
    return await fn();
  } finally {
    current = prev;
  }
}

export function hostContext(): HostContext {
  return store?.getStore() ?? current;
}

/** The path to hand to the OS for a path the user (or a backing chain) named. */
export function hostPath(path: string): string {
  const cwd = hostContext().cwd;
  if (cwd === undefined || path.startsWith("/") || path === "") return path;
  return cwd.endsWith("/") ? cwd + path : `${cwd}/${path}`;
}

/** An environment entry of the caller. */
export function hostEnv(name: string): string | undefined {
  const env = hostContext().env;
  return env ? (Object.hasOwn(env, name) ? env[name] : undefined) : Deno.env.get(name);
}

export function guestCaps(): GuestCaps {
  return hostContext().caps ?? {};
}

export function cancelSignal(): AbortSignal | undefined {
  return hostContext().signal;
}

/** The exit status of a cancelled command (the shell's 128 + signal). */
export function cancelStatus(signal: AbortSignal): number {
  return signal.reason === "SIGTERM" ? 143 : 130;
}

/**
 * For a command that must clean up when interrupted (convert): in the
 * direct CLI, SIGINT/SIGTERM become this context's cancel (instead of
 * killing the process); in the service the client's cancel already is.
 * Returns the signal and a dispose function.
 */
export function trapSignals(): { signal: AbortSignal; dispose: () => void } {
  const ctx = hostContext();
  if (ctx.signal) return { signal: ctx.signal, dispose: () => {} };
  const ac = new AbortController();
  const int = () => ac.abort("SIGINT");
  const term = () => ac.abort("SIGTERM");
  Deno.addSignalListener("SIGINT", int);
  Deno.addSignalListener("SIGTERM", term);
  ctx.signal = ac.signal;
  return {
    signal: ac.signal,
    dispose: () => {
      Deno.removeSignalListener("SIGINT", int);
      Deno.removeSignalListener("SIGTERM", term);
    },
  };
}

/** Thrown by the sandbox when the caller cancelled the run. */
export class Cancelled extends Error {
  constructor() {
    super("cancelled");
    this.name = "Cancelled";
  }
}
