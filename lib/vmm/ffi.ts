// The only Deno.dlopen in instar. The VMM shared library travels inside
// lib/embedded (base64); at first use it is written to a fresh private
// directory (mode 0700, under INSTAR_RUNTIME_DIR if set, else TMPDIR),
// dlopen'd, and the directory removed at once. The library is cached for
// the life of the process.
import { loadVmmSo } from "../embedded/lazy.ts";

const symbols = {
  vmm_create: { parameters: ["buffer"], result: "pointer" },
  vmm_load: { parameters: ["pointer", "buffer", "u64"], result: "i32" },
  vmm_set_params: { parameters: ["pointer", "buffer", "u64"], result: "i32" },
  vmm_attach_input: { parameters: ["pointer", "buffer", "u32", "buffer"], result: "i32" },
  vmm_attach_output: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  // One nonblocking call per guest run: all hypercalls are served in C on
  // a VMM-owned thread, so the JS event loop stays free to draw progress.
  vmm_run: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  vmm_result: { parameters: ["pointer", "buffer"], result: "pointer" },
  vmm_log: { parameters: ["pointer", "buffer"], result: "pointer" },
  vmm_progress: { parameters: ["pointer"], result: "pointer" },
  vmm_destroy: { parameters: ["pointer"], result: "void" },
  vmm_last_errno: { parameters: [], result: "i32" },
  vmm_strerror: { parameters: ["i32"], result: "pointer" },
  vmm_collapse_range: { parameters: ["buffer", "u64", "u64"], result: "i32" },
  vmm_file_range: { parameters: ["buffer", "u32", "u64", "u64", "u64", "u64"], result: "i32" },
  // Cancels a pending vmm_run from the JS thread (a client's SIGINT).
  vmm_cancel: { parameters: ["pointer"], result: "void" },
  // The socket side of `instar serve` (vmm/serve.c, docs/service.md). The calls
  // that wait for a peer or a full pipe are nonblocking.
  vmm_serve_listen: { parameters: ["buffer"], result: "i32" },
  vmm_serve_accept: { parameters: ["i32", "buffer"], result: "i32", nonblocking: true },
  vmm_serve_read: { parameters: ["i32", "buffer", "u32", "buffer"], result: "i32", nonblocking: true },
  vmm_conn_wait: { parameters: ["i32"], result: "i32", nonblocking: true },
  vmm_conn_reply: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  vmm_conn_end: { parameters: ["i32"], result: "i32" },
  vmm_fd_write: { parameters: ["i32", "buffer", "u64"], result: "i32", nonblocking: true },
  vmm_fd_read: { parameters: ["i32", "buffer", "u64"], result: "i64", nonblocking: true },
  vmm_fd_isatty: { parameters: ["i32"], result: "i32" },
  vmm_fd_close: { parameters: ["i32"], result: "i32" },
  vmm_fd_is_listener: { parameters: ["i32"], result: "i32" },
  // QEMU's image locks (vmm/lock.c, lib/vmm/image_lock.ts).
  vmm_lock_open: { parameters: ["buffer", "u32", "buffer"], result: "i32" },
  vmm_lock_apply: { parameters: ["i32", "u32", "u32", "buffer"], result: "i32" },
  // Unnamed convert outputs (vmm/file_ops.c, lib/cli/output_file.ts).
  vmm_tmpfile_open: { parameters: ["buffer"], result: "i32" },
  vmm_tmpfile_link: { parameters: ["i32", "buffer"], result: "i32" },
} as const;

export type VmmLib = Deno.DynamicLibrary<typeof symbols>["symbols"];

let cached: VmmLib | undefined;

async function privateDir(): Promise<string> {
  const base = Deno.env.get("INSTAR_RUNTIME_DIR");
  const dir = await Deno.makeTempDir(base ? { dir: base, prefix: "instar-" } : { prefix: "instar-" });
  await Deno.chmod(dir, 0o700);
  return dir;
}

let loading: Promise<VmmLib> | undefined;

/** Loads the embedded VMM library once per process (concurrent first callers share one load). */
export function vmmLib(): Promise<VmmLib> {
  if (cached) return Promise.resolve(cached);
  loading ??= load().finally(() => loading = undefined);
  return loading;
}

async function load(): Promise<VmmLib> {
  const so = Uint8Array.fromBase64(await loadVmmSo());
  const dir = await privateDir();
  try {
    const path = `${dir}/libinstar_vmm.so`;
    await Deno.writeFile(path, so, { mode: 0o500, createNew: true });
    try {
      cached = Deno.dlopen(path, symbols).symbols;
    } catch (e) {
      throw new Error(
        `Could not load the VMM library: ${(e as Error).message} (on a noexec mount, set INSTAR_RUNTIME_DIR)`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return cached;
}

/** glibc's text for an errno value, as qemu-img prints it. */
export function strerror(lib: VmmLib, errno: number): string {
  const p = lib.vmm_strerror(errno);
  return p === null ? `Unknown error ${errno}` : Deno.UnsafePointerView.getCString(p);
}

/** A NUL-terminated copy of a path for the C side. */
export function cString(s: string): Uint8Array {
  const enc = new TextEncoder().encode(s);
  if (enc.includes(0)) throw new Error("Path contains a NUL byte");
  const out = new Uint8Array(enc.length + 1);
  out.set(enc);
  return out;
}
