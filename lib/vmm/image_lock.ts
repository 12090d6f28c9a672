// QEMU's image locks (block/file-posix.c), taken through the VMM library
// (vmm/lock.c says why there): for each command the same permission and
// shared-permission bytes qemu-img 7.2 takes, so a running VM and instar
// never write an image under each other. A lock lives until the command
// ends: lib/cli/run.ts releases every lock the command's host context holds.
import { hostContext, hostPath } from "../host/context.ts";

// ffi.ts needs the generated lib/embedded: loaded on first use, like sandbox.ts
// (lib/vmm/guest.ts), so --help and the unit tests run without a build.
interface LockLib {
  vmm_lock_open(path: Uint8Array, nofollow: number, st: BigUint64Array): number;
  vmm_lock_apply(fd: number, perm: number, shared: number, what: Uint32Array): number;
  vmm_fd_close(fd: number): number;
}
interface FfiModule {
  vmmLib(): Promise<LockLib>;
  strerror(lib: LockLib, errno: number): string;
  cString(s: string): Uint8Array;
}
const FFI = "./ffi.ts";
let ffi: Promise<FfiModule> | undefined;

/** qemu's BLK_PERM_* bits (7.2: BLK_PERM_ALL = 0xf). */
export const PERM = { CONSISTENT_READ: 1, WRITE: 2, WRITE_UNCHANGED: 4, RESIZE: 8, ALL: 15 } as const;
const PERM_NAMES = ["consistent read", "write", "write unchanged", "resize"];

/** What a user of the image takes (perm) and lets others take (shared). */
export interface LockMode {
  perm: number;
  shared: number;
}

const NOT_WRITE_RESIZE = PERM.ALL & ~(PERM.WRITE | PERM.RESIZE);

/** The modes qemu-img 7.2 takes on the file node, as strace shows them. */
export const LOCKS = {
  /** info: no permission, sharing neither write nor resize. */
  info: { perm: 0, shared: NOT_WRITE_RESIZE },
  /** check, map, compare, measure, snapshot -l, convert's source and every backing file. */
  read: { perm: PERM.CONSISTENT_READ, shared: NOT_WRITE_RESIZE },
  /** resize and snapshot (read-write opens). */
  write: { perm: PERM.CONSISTENT_READ | PERM.WRITE | PERM.RESIZE, shared: NOT_WRITE_RESIZE },
  /** raw_co_create: creating (truncating) a file. */
  create: { perm: PERM.WRITE | PERM.RESIZE, shared: PERM.ALL & ~PERM.RESIZE },
  /** convert's target while it is written. */
  output: { perm: PERM.CONSISTENT_READ | PERM.WRITE, shared: PERM.ALL },
} as const satisfies Record<string, LockMode>;

/** -U / --force-share: share everything (qemu's BDRV_O_FORCE_SHARE). */
export function forceShare(mode: LockMode): LockMode {
  return { perm: mode.perm, shared: PERM.ALL };
}

/** A lock qemu would not get, in qemu's words (the hint line included). */
export class LockError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LockError";
  }
}

/** A held lock: its file's identity; released when the command ends. */
export interface HeldLock {
  dev: bigint;
  ino: bigint;
  release(): void;
}

/**
 * Takes `mode` on the file at `path` (opened by the VMM library, O_NOFOLLOW
 * when asked). Throws LockError with qemu's text; `hintName` is the name qemu
 * puts in "Is another process using the image [NAME]?".
 */
export async function takeLock(
  path: string,
  mode: LockMode,
  hintName: string,
  nofollow = false,
): Promise<HeldLock> {
  ffi ??= import(new URL(FFI, import.meta.url).href) as Promise<FfiModule>;
  const { vmmLib, strerror, cString } = await ffi;
  const lib = await vmmLib();
  const st = new BigUint64Array(2);
  const fd = lib.vmm_lock_open(cString(hostPath(path)), nofollow ? 1 : 0, st);
  if (fd < 0) {
    throw Object.assign(new Error(strerror(lib, -fd)), { errno: -fd });
  }
  const what = new Uint32Array(1);
  const rc = lib.vmm_lock_apply(fd, mode.perm, mode.shared, what);
  if (rc !== 0) {
    lib.vmm_fd_close(fd);
    const kind = what[0] >> 8;
    const n = what[0] & 0xff;
    let text: string;
    if (kind === 1) text = `Failed to lock byte ${n}`;
    else text = `Failed to get ${kind === 3 ? "shared " : ""}"${PERM_NAMES[n] ?? "unknown"}" lock`;
    // raw_lock_error_setg_errno: EAGAIN (a holder) is the bare text, anything else gets strerror.
    if (-rc !== 11) text += `: ${strerror(lib, -rc)}`;
    throw new LockError(`${text}\nIs another process using the image [${hintName}]?`);
  }
  let open = true;
  const held: HeldLock = {
    dev: st[0],
    ino: st[1],
    release() {
      if (open) lib.vmm_fd_close(fd);
      open = false;
    },
  };
  const ctx = hostContext();
  (ctx.locks ??= []).push(held);
  return held;
}
