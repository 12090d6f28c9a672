// vmdk extent files under the backing-file allowlist. A descriptor's extent
// names are strings an untrusted image chose, reported by the guest; each is
// checked here before anything is opened (qemu-img opens every one, even
// for `info`): no json: or protocol names, the resolved real path inside an
// allowed directory (symlinks resolved, then attached with O_NOFOLLOW), a
// regular file, and no file twice (device + inode, the descriptor
// included). The allowed files become the inputs right after their image's
// in every guest run (chainInputs).
import { formats, limits } from "../abi/spec.ts";
import { fileKey, fullBackingFilename, hasProtocol, insideDirs, makePolicy } from "../chain/policy.ts";
import { PolicyError } from "../chain/policy.ts";
import { hostPath } from "../host/context.ts";
import { errnoText, type OpenedImage, OpenError } from "./image.ts";

/** One attached extent file. */
export interface ExtentFile {
  /** The name qemu prints (descriptor directory + the descriptor's name). */
  filename: string;
  /** Real path handed to the sandbox (O_NOFOLLOW). */
  path: string;
  dev: bigint;
  ino: bigint;
  /** st_blocks * 512: qemu adds every extent file's to the image's disk size. */
  actualSize: bigint;
}

/** Checks every extent file `img` names (in descriptor order) against the allowlist. */
export async function resolveExtents(img: OpenedImage, backingDirs: string[]): Promise<ExtentFile[]> {
  let policy;
  try {
    policy = await makePolicy(img.openPath, backingDirs);
  } catch (e) {
    if (e instanceof PolicyError) throw new OpenError(img.filename, e.message, 0, true);
    throw e;
  }
  const seen = new Set([fileKey(img.dev, img.ino)]);
  const out: ExtentFile[] = [];
  // The guest refuses more already (VMDK_E_TOO_MANY); the host holds the same cap.
  const named = (img.vmdk?.extents ?? []).filter((x) => !x.hosted).length;
  if (named > limits.VMDK_MAX_FILES) {
    throw new OpenError(
      img.filename,
      `The VMDK descriptor names ${named} extents; instar opens at most ${limits.VMDK_MAX_FILES} extent files`,
    );
  }
  for (const x of img.vmdk?.extents ?? []) {
    if (x.hosted) continue;
    let name: string;
    try {
      name = new TextDecoder("utf-8", { fatal: true }).decode(x.name);
    } catch {
      throw new OpenError(img.filename, "Refusing a VMDK extent name that is not valid UTF-8");
    }
    const refuse = (why: string) => new OpenError(img.filename, `Refusing VMDK extent '${name}': ${why}`);
    if (name.startsWith("json:") || hasProtocol(name)) {
      throw refuse("json: and protocol names are never opened");
    }
    const filename = fullBackingFilename(img.filename, name);
    if (filename === null) throw refuse("relative names need a file name for the descriptor");
    let real: string;
    try {
      real = await Deno.realPath(hostPath(filename));
    } catch (e) {
      throw new OpenError(img.filename, `Could not open '${filename}': ${errnoText(e)}`);
    }
    if (!insideDirs(real, policy.allowDirs)) {
      throw refuse(`'${real}' is outside the allowed directories (see --backing-dir and instar config)`);
    }
    const st = await Deno.stat(real);
    if (!st.isFile) throw refuse("not a regular file");
    const key = fileKey(BigInt(st.dev), BigInt(st.ino ?? 0));
    if (seen.has(key)) throw refuse("the file is already part of this image");
    seen.add(key);
    out.push({
      filename,
      path: real,
      dev: BigInt(st.dev),
      ino: BigInt(st.ino ?? 0),
      actualSize: BigInt(st.blocks ?? 0) * 512n,
    });
  }
  return out;
}

/** The guest inputs for a chain: each image, then its extent files. */
export function chainInputs(
  chain: OpenedImage[],
): { path: string; format: number; nofollow: boolean; secret?: Uint8Array }[] {
  return chain.flatMap((img, i) => [
    { path: img.openPath, format: img.formatCode, nofollow: i !== 0, secret: img.secret },
    ...(img.extentFiles ?? []).map((x) => ({ path: x.path, format: formats.RAW, nofollow: true })),
  ]);
}

/** The name qemu prints for each input of chainInputs(chain). */
export function inputFilenames(chain: OpenedImage[]): string[] {
  return chain.flatMap((img) => [img.filename, ...(img.extentFiles ?? []).map((x) => x.filename)]);
}
