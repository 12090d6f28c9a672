// Unnamed output files (O_TMPFILE, vmm/file_ops.c): convert writes its output
// into a file that has no name until linkat gives it one, so a convert killed
// at any point (SIGKILL included) leaves nothing behind. The file is written
// through /proc/<pid>/fd/<fd>, which the VMM, a hosted guest and Deno's own
// file calls can all open. Where the file system has no O_TMPFILE the caller
// falls back to a named temporary file.
import { hostPath } from "../host/context.ts";

interface TmpLib {
  vmm_tmpfile_open(dir: Uint8Array): number;
  vmm_tmpfile_link(fd: number, path: Uint8Array): number;
  vmm_fd_close(fd: number): number;
}
interface FfiModule {
  vmmLib(): Promise<TmpLib>;
  strerror(lib: TmpLib, errno: number): string;
  cString(s: string): Uint8Array;
}
// Loaded on first use (ffi.ts needs the generated lib/embedded), as in image_lock.ts.
const FFI = "./ffi.ts";
let ffi: Promise<FfiModule> | undefined;

export class UnnamedFile {
  #open = true;
  private constructor(
    private readonly mod: FfiModule,
    private readonly lib: TmpLib,
    readonly fd: number,
  ) {}

  /** The path every writer opens. */
  get path(): string {
    return `/proc/${Deno.pid}/fd/${this.fd}`;
  }

  /** An unnamed file in `dir`, or undefined where the file system cannot make one. */
  static async create(dir: string): Promise<UnnamedFile | undefined> {
    ffi ??= import(new URL(FFI, import.meta.url).href) as Promise<FfiModule>;
    const mod = await ffi;
    const lib = await mod.vmmLib();
    const fd = lib.vmm_tmpfile_open(mod.cString(hostPath(dir)));
    return fd < 0 ? undefined : new UnnamedFile(mod, lib, fd);
  }

  /** Gives the file the name `path`; false when that name exists already. */
  link(path: string): boolean {
    const rc = this.lib.vmm_tmpfile_link(this.fd, this.mod.cString(hostPath(path)));
    if (rc === -17) return false; // EEXIST
    if (rc !== 0) throw new Error(this.mod.strerror(this.lib, -rc));
    return true;
  }

  /** Closes it: an unlinked file is gone. */
  close(): void {
    if (this.#open) this.lib.vmm_fd_close(this.fd);
    this.#open = false;
  }
}
