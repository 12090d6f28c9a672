// Backing-chain policy. A backing file name is a string an untrusted image
// chose; it is checked here BEFORE anything is opened: no json: or protocol
// names, the resolved real path must lie inside an allowed directory, the
// chain is at most limits.CHAIN_MAX images long, and no file may appear twice
// (compared by device and inode, so links and "a/../a" spellings are caught).
import { limits } from "../abi/spec.ts";
import { hostPath } from "../host/context.ts";
import { ConfigError, effectivePolicy } from "../config/config.ts";

export class PolicyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PolicyError";
  }
}

/** qemu's path_has_protocol: a ':' before the first '/'. */
export function hasProtocol(path: string): boolean {
  const m = /[:/]/.exec(path);
  return m !== null && m[0] === ":";
}

/**
 * qemu's bdrv_get_full_backing_filename for a file-backed image: absolute
 * and protocol names stay as they are, relative names are joined to the
 * overlay's directory prefix without normalisation ("d/../b.qcow2").
 * Returns null where qemu cannot build one (relative name below a json: overlay).
 */
export function fullBackingFilename(overlay: string, backing: string): string | null {
  if (backing === "") return null;
  if (hasProtocol(backing) || backing.startsWith("/")) return backing;
  if (overlay === "" || overlay.startsWith("json:")) return null;
  const slash = overlay.lastIndexOf("/");
  return overlay.slice(0, slash + 1) + backing;
}

export interface ChainPolicy {
  /** Real paths of the directories backing files may live in. */
  allowDirs: string[];
  maxImages: number;
}

/**
 * The policy for a chain under `topPath`: the top image's own directory
 * (unless a config file says image_dir = false), then the directories of
 * the system and user config files, INSTAR_BACKING_DIRS and --backing-dir
 * (lib/config/config.ts). A configured directory that does not exist is
 * skipped; a missing --backing-dir is an error.
 */
export async function makePolicy(topPath: string, extraDirs: string[] = []): Promise<ChainPolicy> {
  let eff;
  try {
    eff = await effectivePolicy(extraDirs);
  } catch (e) {
    if (e instanceof ConfigError) throw new PolicyError(e.message);
    throw e;
  }
  const dirs: string[] = [];
  if (eff.imageDir) {
    const topReal = await Deno.realPath(hostPath(topPath));
    dirs.push(topReal.slice(0, topReal.lastIndexOf("/")) || "/");
  }
  for (const { dir, source } of eff.dirs) {
    try {
      dirs.push(await Deno.realPath(hostPath(dir)));
    } catch {
      if (source === "--backing-dir") throw new PolicyError(`Backing directory '${dir}' does not exist`);
    }
  }
  return { allowDirs: dirs, maxImages: limits.CHAIN_MAX };
}

export function insideDirs(real: string, dirs: string[]): boolean {
  return dirs.some((d) => d === "/" || real === d || real.startsWith(d + "/"));
}

export interface ChainLink {
  /** The name qemu would print and open (overlay-relative, unnormalised). */
  filename: string;
  /** Real path to hand to the sandbox (opened with O_NOFOLLOW). */
  realPath: string;
  dev: bigint;
  ino: bigint;
}

export const fileKey = (dev: bigint, ino: bigint) => `${dev}:${ino}`;

/**
 * Decides whether backing file `name` of the image `overlay` (at chain index
 * `index`, 0 = top) may be opened. `seen` holds fileKey()s of the chain so far.
 * Throws PolicyError (nothing opened) or a Deno error from realPath/stat when
 * the file does not exist.
 */
export async function checkBacking(
  policy: ChainPolicy,
  overlay: string,
  name: string,
  index: number,
  seen: Set<string>,
): Promise<ChainLink> {
  if (name.startsWith("json:") || hasProtocol(name)) {
    throw new PolicyError(`Refusing backing file '${name}': json: and protocol names are never opened`);
  }
  if (index + 1 >= policy.maxImages) {
    throw new PolicyError(
      `Refusing backing file '${name}': backing chain longer than ${policy.maxImages} images`,
    );
  }
  const filename = fullBackingFilename(overlay, name);
  if (filename === null) throw new PolicyError(`Cannot use relative backing file names for '${overlay}'`);
  const realPath = await Deno.realPath(hostPath(filename));
  if (!insideDirs(realPath, policy.allowDirs)) {
    throw new PolicyError(
      policy.allowDirs.length === 0
        ? `Refusing backing file '${name}': the backing-file policy is empty (see instar config)`
        : `Refusing backing file '${name}': '${realPath}' is outside the allowed directories (see --backing-dir and instar config)`,
    );
  }
  const st = await Deno.stat(realPath);
  const key = fileKey(BigInt(st.dev), BigInt(st.ino ?? 0));
  if (seen.has(key)) throw new PolicyError(`Backing file '${filename}' creates an infinite loop.`);
  return { filename, realPath, dev: BigInt(st.dev), ino: BigInt(st.ino ?? 0) };
}
