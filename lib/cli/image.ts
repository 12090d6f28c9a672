// Opening an image the way qemu-img does, but through the sandbox: host-side
// checks that need no image bytes (exists, regular file, readable, size,
// st_blocks), then one guest "info" run that probes and decodes the header.
// Also walks backing chains under lib/chain/policy.ts.
import { formats, guestErrors, infoFlags, nameKinds, ops, records, signatures } from "../abi/spec.ts";
import { nameBytes, type Rec } from "../abi/records.ts";
import { GuestResultError } from "../formats/qcow2/model.ts";
import type { DecodedImage } from "../formats/types.ts";
import { driverFor, driverForCode, type FormatDriver, isQemuDriver } from "../formats/mod.ts";
import {
  type ChainPolicy,
  checkBacking,
  fileKey,
  fullBackingFilename,
  PolicyError,
} from "../chain/policy.ts";
import { runGuest } from "../vmm/guest.ts";
import { CliError } from "./messages.ts";
import { formatCheckMessage } from "../abi/check_messages.ts";
import { hostEnv, hostPath } from "../host/context.ts";
import { errnoText } from "../host/errno.ts";
import { ObjectError, type SecretStore } from "../secrets/objects.ts";
import { KDF_MAX_ITERS_DEFAULT } from "../formats/luks/errors.ts";
import { KDF_MAX_MEMORY_KIB_DEFAULT, luks2ErrorText } from "../formats/luks/luks2_errors.ts";
import { luks2GuestRam } from "../formats/luks/luks2_model.ts";
import { type ExtentFile, resolveExtents } from "./extents.ts";
import { encryptFormatError, isQcow2CryptOpenError, keySecretRequired } from "../formats/qcow2/crypt.ts";
import { unlockQcow2 } from "./qcow2_unlock.ts";
export { chainInputs, inputFilenames } from "./extents.ts";
export { errnoText };
import { LockError, type LockMode, LOCKS, PERM, takeLock } from "../vmm/image_lock.ts";

/** Why an image could not be opened, in the pieces qemu assembles its message from. */
export class OpenError extends Error {
  /** @param filename the image being opened
   *  @param inner the reason, as qemu words it after "Could not open 'f': "
   *  @param depth how many backing links below the top image it happened */
  constructor(
    readonly filename: string,
    readonly inner: string,
    readonly depth = 0,
    readonly bare = false,
    /** Lines qemu's driver printed (error_report) before its open failed. */
    readonly preface: string[] = [],
  ) {
    super(inner);
    this.name = "OpenError";
  }
}

/** An opened image: what its driver decoded (lib/formats/types.ts) plus the host's facts. */
export interface OpenedImage extends DecodedImage {
  /** Name qemu prints for this image. */
  filename: string;
  /** Path handed to the sandbox. */
  openPath: string;
  /** The format driver (lib/formats/mod.ts) and its name. */
  driver: FormatDriver;
  format: string;
  formatCode: number;
  fileSize: bigint;
  /** st_blocks * 512 (qemu's bdrv_get_allocated_file_size for files). */
  actualSize: bigint;
  dev: bigint;
  ino: bigint;
  /** vmdk: the extent files the allowlist let through, attached after the image (descriptor order). */
  extentFiles?: ExtentFile[];
  /** An encrypted image's passphrase, once unlockForRead checked it (never printed or logged). */
  secret?: Uint8Array;
  /** A LUKS2 image, once unlockForRead checked it: the guest RAM its reader needs (Argon2). */
  luks2Ram?: number;
  /** The passphrase was not tried yet (unlockForRead's `defer`): the first reading guest unlocks, and its
   * unlock failure is this image's open error (unlockFailure). */
  unlockPending?: boolean;
}

export interface OpenOptions {
  /** -f (or the backing format named by the overlay). */
  format?: string;
  /** The raw format was asked for explicitly (allows unpartitioned raw). */
  unsafeQuirks?: boolean;
  openPath?: string;
  nofollow?: boolean;
  /** Open as qemu-img check does (BDRV_O_CHECK): see infoFlags.CHECK_MODE. */
  checkMode?: boolean;
  /** --backing-dir: more directories vmdk extent files may live in. */
  backingDirs?: string[];
  /** QEMU's image lock to take before the image is read (lib/vmm/image_lock.ts). */
  lock?: LockMode;
  /** Leave out the snapshot and bitmap lists (infoFlags.NO_LISTS): 65,536 snapshots cost memory. */
  noLists?: boolean;
  /** The command reads the image's data (infoFlags.READS_DATA; see unlockForRead). */
  readsData?: boolean;
  /** Refuse an image that names other files to open (vmdk extents): an image read from stdin. */
  noExternalFiles?: boolean;
  /** --image-opts encrypt.format= (qcow2): checked against the header's method as qemu does. */
  encryptFormat?: string;
  /** A block device is opened too (qemu's host_device): convert -n into a LUKS volume on one. */
  blockDevice?: boolean;
}

/** Maps -f to a guest format code; throws OpenError as qemu words it. */
export function formatCode(filename: string, fmt: string | undefined): number {
  if (fmt === undefined) return formats.AUTO;
  const code = driverFor(fmt)?.code;
  if (code !== undefined) return code;
  if (isQemuDriver(fmt)) throw new OpenError(filename, `Format '${fmt}' is not supported by instar`);
  throw new OpenError(filename, `Unknown driver '${fmt}'`);
}

const SIGNATURE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(signatures).map(([k, v]) => [v, k.toLowerCase()]),
);

function guestError(recs: Rec[]): Rec | undefined {
  return recs.find((r) => r.type === records.ERROR);
}

/** Host-side checks, as qemu's file driver reports them. */
async function hostCheck(filename: string, path: string, blockDevice = false): Promise<Deno.FileInfo> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    throw new OpenError(filename, `Could not open '${filename}': ${errnoText(e)}`);
  }
  if (!st.isFile && !(blockDevice && st.isBlockDevice)) {
    throw new OpenError(filename, `'file' driver requires '${filename}' to be a regular file`);
  }
  try {
    (await Deno.open(path, { read: true })).close();
  } catch (e) {
    throw new OpenError(filename, `Could not open '${filename}': ${errnoText(e)}`);
  }
  return st;
}

/** Takes the command's lock on the file qemu's file node would lock, before anything is read. */
async function lockImage(
  filename: string,
  path: string,
  st: Deno.FileInfo,
  mode: LockMode,
  nofollow?: boolean,
) {
  let held;
  try {
    held = await takeLock(path, mode, filename, nofollow);
  } catch (e) {
    if (e instanceof LockError) throw new OpenError(filename, e.message);
    throw new OpenError(filename, `Could not open '${filename}': ${errnoText(e)}`);
  }
  if (held.dev !== BigInt(st.dev) || held.ino !== BigInt(st.ino ?? 0)) {
    throw new OpenError(filename, "File changed while it was being opened");
  }
}

/** Opens one image (no backing files); a vmdk descriptor's extent files
 * are checked by the allowlist and attached (lib/cli/extents.ts). */
export async function openImage(filename: string, opts: OpenOptions = {}): Promise<OpenedImage> {
  const requested = formatCode(filename, opts.format);
  const path = hostPath(opts.openPath ?? filename);
  const st = await hostCheck(filename, path, opts.blockDevice);
  if (opts.lock) await lockImage(filename, path, st, opts.lock, opts.nofollow);
  const img = await openImageOnce(filename, path, st, requested, opts, []);
  if (!img.vmdk || img.vmdk.filesNeeded === 0) return img;
  if (opts.noExternalFiles) {
    throw new OpenError(filename, "an image read from stdin may not name other files (vmdk extents)");
  }
  // The guest named the extent files: the allowlist decides, then a second
  // run reads each extent's header from the attached files.
  const files = await resolveExtents(img, opts.backingDirs ?? []);
  const full = await openImageOnce(filename, path, st, requested, opts, files);
  if (!full.vmdk || full.vmdk.filesNeeded !== 0 || full.vmdk.extents.length !== files.length) {
    throw new OpenError(filename, "Sandbox failure: the vmdk extents changed between runs");
  }
  full.extentFiles = files;
  full.actualSize += files.reduce((sum, f) => sum + f.actualSize, 0n);
  return full;
}

async function openImageOnce(
  filename: string,
  path: string,
  st: Deno.FileInfo,
  requested: number,
  opts: OpenOptions,
  extents: ExtentFile[],
): Promise<OpenedImage> {
  let result;
  try {
    result = await runGuest({
      op: "info",
      opCode: ops.INFO,
      inputs: [
        { path, format: requested, nofollow: opts.nofollow },
        ...extents.map((x) => ({ path: x.path, format: formats.RAW, nofollow: true })),
      ],
      flags: (opts.checkMode ? infoFlags.CHECK_MODE : 0) | (opts.noLists ? infoFlags.NO_LISTS : 0) |
        (opts.readsData ? infoFlags.READS_DATA : 0) |
        // qemu's read-write open (the commands that take the write lock)
        (opts.lock && (opts.lock.perm & PERM.WRITE) !== 0 ? infoFlags.READ_WRITE : 0),
    });
  } catch (e) {
    throw new OpenError(filename, `Sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
  }
  const recs = result.records;
  const input = result.inputs[0];
  if (!input || input.dev !== BigInt(st.dev) || input.ino !== BigInt(st.ino ?? 0)) {
    throw new OpenError(filename, "File changed while it was being opened");
  }
  extents.forEach((x, i) => {
    const got = result.inputs[i + 1];
    if (!got || got.dev !== x.dev || got.ino !== x.ino) {
      throw new OpenError(filename, `File '${x.filename}' changed while it was being opened`);
    }
  });
  const probe = recs.find((r) => r.type === records.PROBE && r.fields.input === 0);
  const probed = probe ? probe.fields.format as number : requested;
  const driver = driverForCode(probed);
  const err = guestError(recs);
  if (err) {
    const features = recs
      .filter((r) =>
        r.type === records.NAME &&
        (r.fields.kind === nameKinds.INCOMPAT_FEATURE || r.fields.kind === nameKinds.ERROR_TEXT ||
          r.fields.kind === nameKinds.BITMAP_NAME)
      )
      .map((r) => new TextDecoder().decode(nameBytes(r)));
    const f = err.fields;
    const fields = { code: f.code as number, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint };
    const text = driver?.openError ?? driverForCode(formats.QCOW2)!.openError!;
    // Diagnostics the driver printed while opening (vhdx's region and BAT
    // checks), in order, before the error itself.
    const preface: string[] = [];
    let names: string[] = [];
    for (const r of recs) {
      if (
        r.type === records.NAME &&
        (r.fields.kind === nameKinds.SNAPSHOT_ID || r.fields.kind === nameKinds.SNAPSHOT_NAME)
      ) {
        names.push(new TextDecoder().decode(nameBytes(r)));
      } else if (r.type === records.CHECK_MSG && r.fields.input === 0) {
        try {
          const line = formatCheckMessage(r.fields.code as number, r.fields.a as bigint[], "", names);
          preface.push(line.replace(/^: /, "").replace(/\n$/, ""));
        } catch {
          throw new OpenError(filename, "Sandbox failure: unknown diagnostic from the guest");
        }
        names = [];
      }
    }
    const inputNames = [filename, ...extents.map((x) => x.filename)];
    throw new OpenError(filename, text(fields, features, filename, inputNames), 0, false, preface);
  }
  if (result.guestStatus !== 0n) {
    throw new OpenError(filename, "Sandbox failure: guest reported an error without a reason");
  }
  try {
    if (!driver?.decode) throw new GuestResultError(`probed format ${probed} out of range`);
    const d = driver.decode(recs, 0, input.size);
    if (driver.code === formats.QCOW2 && d.qcow2) {
      const why = encryptFormatError(d.qcow2.layout.cryptMethod, opts.encryptFormat);
      if (why) throw new OpenError(filename, why);
    }
    if (driver.code === formats.RAW) {
      const signature = probe ? probe.fields.signature as number : signatures.NONE;
      if (!opts.unsafeQuirks && requested !== formats.RAW) {
        if (signature !== signatures.NONE) {
          throw new OpenError(
            filename,
            `Refusing to read a file with a ${SIGNATURE_NAMES[signature] ?? "foreign"} signature as raw ` +
              "(use -f raw or --unsafe-quirks to read it anyway)",
          );
        }
        if (d.raw?.partition === "none") {
          throw new OpenError(
            filename,
            "Refusing to guess the raw format for a file without a partition table " +
              "(use -f raw or --unsafe-quirks to read it anyway)",
          );
        }
      }
    }
    return {
      filename,
      openPath: path,
      driver,
      format: driver.name,
      formatCode: probed,
      fileSize: input.size,
      actualSize: BigInt(st.blocks ?? 0) * 512n,
      ...d,
      dev: input.dev,
      ino: input.ino,
    };
  } catch (e) {
    if (e instanceof GuestResultError) throw new OpenError(filename, `Sandbox failure: ${e.message}`);
    throw e;
  }
}

export function backingName(img: OpenedImage): string | undefined {
  const b = img.backingFile;
  if (!b) return undefined;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(b);
  } catch {
    throw new PolicyError("Refusing a backing file name that is not valid UTF-8");
  }
}

/**
 * Opens the backing chain below `top` (top first). Each name is checked by the
 * policy before it is opened; errors carry their depth for qemu's nesting.
 */
export async function openChain(
  top: OpenedImage,
  policy: ChainPolicy,
  unsafeQuirks: boolean,
  /** The lock each backing file takes (qemu opens them read-only: LOCKS.read). */
  lock?: LockMode,
): Promise<OpenedImage[]> {
  const chain = [top];
  const seen = new Set([fileKey(top.dev, top.ino)]);
  for (;;) {
    const cur = chain[chain.length - 1];
    const depth = chain.length;
    let name: string | undefined;
    try {
      name = backingName(cur);
      if (name === undefined) return chain;
      if (cur.vmdk) {
        // parentFileNameHint: reported by info, never followed
        throw new PolicyError(`Refusing to follow VMDK parent '${name}': instar does not open VMDK parents`);
      }
      const link = await checkBacking(policy, cur.filename, name, chain.length - 1, seen);
      const fmt = cur.backingFormat;
      const img = await openImage(link.filename, {
        format: fmt,
        unsafeQuirks,
        openPath: link.realPath,
        nofollow: true,
        lock,
      });
      seen.add(fileKey(img.dev, img.ino));
      chain.push(img);
    } catch (e) {
      if (e instanceof OpenError) throw new OpenError(e.filename, e.inner, depth, e.bare, e.preface);
      if (e instanceof PolicyError) throw new OpenError(name ?? "", e.message, depth, true);
      // Errors of the host's own path handling (realpath of a name too long ...) in qemu's words.
      if (
        e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied ||
        (e instanceof Error && /\(os error \d+\)/.test(e.message))
      ) {
        const full = fullBackingFilename(cur.filename, name ?? "") ?? name ?? "";
        throw new OpenError(full, `Could not open '${full}': ${errnoText(e)}`, depth);
      }
      throw e;
    }
  }
}

/** The CliError for an OpenError met while opening `top` with its chain:
 * the driver's own diagnostics first, then qemu-img's message. */
export function openFailure(top: string, e: OpenError, code = 1, bareAlone = false): CliError {
  // resize prints a policy refusal on its own (bare); the others nest it like qemu's errors.
  return new CliError([...e.preface, bareAlone && e.bare ? e.inner : chainOpenMessage(top, e)], false, code);
}

/** qemu-img's message for an OpenError met while opening `top` with its chain. */
export function chainOpenMessage(top: string, e: OpenError): string {
  return `Could not open '${top}': ${"Could not open backing file: ".repeat(e.depth)}${e.inner}`;
}

/**
 * Opens an image the way qemu's in-place commands (rebase -u, amend) do:
 * read-write (qemu's write locks, so a running VM's image is refused),
 * without its backing chain and without the snapshot lists; qemu's open
 * errors as CliErrors.
 */
export async function openForWrite(
  filename: string,
  fmt: string | undefined,
  unsafeQuirks: boolean,
  /** amend: an encrypted image is unlocked with its key-secret (else refused as qemu refuses it). */
  unlock?: (img: OpenedImage) => Promise<void>,
  display = filename,
) {
  try {
    const img = await openImage(filename, { format: fmt, unsafeQuirks, lock: LOCKS.write, noLists: true });
    if (unlock) await unlock(img);
    else needsNoKey(img);
    return img;
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(display, e);
    throw e;
  }
}

/** Commands that open with I/O but take no --image-opts (resize, measure, snapshot, amend, rebase) have
 * no way to name a key-secret: an encrypted image fails as qemu's open does. */
export function needsNoKey(img: OpenedImage): void {
  if (img.formatCode === formats.LUKS) {
    throw new OpenError(img.filename, "Parameter 'key-secret' is required for cipher");
  }
  if (img.qcow2 && img.qcow2.layout.cryptMethod !== 0) {
    throw new OpenError(img.filename, keySecretRequired(false));
  }
}

/** needsNoKey over a chain (from depth `from`): a backing file's failure carries its depth, as qemu nests it. */
export function chainNeedsNoKey(chain: OpenedImage[], from = 0): void {
  chain.forEach((img, depth) => {
    if (depth < from) return;
    try {
      needsNoKey(img);
    } catch (e) {
      if (e instanceof OpenError) throw new OpenError(e.filename, e.inner, depth);
      throw e;
    }
  });
}

/** The PBKDF2 bound handed to guests that unlock (INSTAR_MAX_KDF_ITERS overrides the default). */
export function kdfMaxIters(): bigint {
  const v = hostEnv("INSTAR_MAX_KDF_ITERS");
  if (v !== undefined && /^[0-9]{1,10}$/.test(v)) return BigInt(v);
  return KDF_MAX_ITERS_DEFAULT;
}

/**
 * The Argon2 memory bound, KiB: --max-guest-memory (on the secrets), else
 * INSTAR_MAX_KDF_MEMORY, else cryptsetup's 1 GiB maximum.
 */
export function kdfMaxMemoryKib(secrets?: SecretStore): bigint {
  if (secrets?.kdfMemoryKib !== undefined) return secrets.kdfMemoryKib;
  const v = hostEnv("INSTAR_MAX_KDF_MEMORY");
  if (v !== undefined && /^[0-9]{1,10}$/.test(v)) return BigInt(v);
  return KDF_MAX_MEMORY_KIB_DEFAULT;
}

/**
 * What qemu's open does for an encrypted image when the command reads its
 * data (convert, compare; info opens with QCRYPTO_BLOCK_OPEN_NO_IO and skips
 * this): the key-secret option is required, its secret must exist and be
 * UTF-8, and it must unlock a key slot. The unlock runs in a guest
 * (convert_luks over an empty range): the master key stays there. On
 * success img.secret holds the passphrase for the guests that read.
 */
export async function unlockForRead(
  img: OpenedImage,
  keySecret: string | undefined,
  keySecretOption: string | undefined,
  secrets: SecretStore,
  /** The image's backing chain (top first): an encrypted backing file has no key-secret to name. */
  chain: OpenedImage[] = [img],
  /**
   * The command's own guests read the image right away and fail before
   * writing anything when the passphrase unlocks nothing (convert into a new
   * file, compare): leave the key-slot search to them, so the PBKDF2 runs
   * once per guest instead of once more at open (seconds with cryptsetup's
   * and qemu's default iteration counts). Everything else is checked here.
   */
  defer = false,
): Promise<void> {
  chain.forEach((b, depth) => {
    if (depth > 0 && b.formatCode === formats.LUKS) {
      throw new OpenError(b.filename, "Parameter 'key-secret' is required for cipher", depth);
    }
    if (depth > 0 && b.qcow2 && b.qcow2.layout.cryptMethod !== 0) {
      throw new OpenError(b.filename, keySecretRequired(false), depth);
    }
  });
  if (img.qcow2 && img.qcow2.layout.cryptMethod !== 0) {
    await unlockQcow2(img, keySecret, secrets, defer);
    return;
  }
  if (img.formatCode !== formats.LUKS) return;
  if (keySecret === undefined) {
    throw new OpenError(
      img.filename,
      `Parameter '${keySecretOption?.replace(/key-secret$/, "") ?? ""}key-secret' is required for cipher`,
    );
  }
  let pass: Uint8Array;
  try {
    pass = secrets.passphrase(keySecret);
  } catch (e) {
    if (e instanceof ObjectError) throw new OpenError(img.filename, e.lines.join(" "));
    throw e;
  }
  // LUKS2 (convert_luks2): the guest's RAM holds the largest Argon2 memory under the limit.
  let luks2Ram: number | undefined;
  if (img.luks?.luks2) {
    const ram = luks2GuestRam(img.luks, kdfMaxMemoryKib(secrets));
    if (typeof ram !== "number") {
      throw new OpenError(img.filename, luks2ErrorText(106n, BigInt(ram.slot), ram.kib, undefined)!);
    }
    luks2Ram = ram;
  }
  // Not LUKS2: its Argon2 limit is enforced by the unlock run's RAM, which the reading guests exceed.
  // Not an empty payload: no guest reads it, so nothing would try the passphrase (security_test's
  // hostile headers whose payload lies past the end of the file).
  if (defer && !luks2Ram && img.length > 0n) {
    img.secret = pass;
    img.luks2Ram = luks2Ram;
    img.unlockPending = true;
    return;
  }
  let result;
  try {
    result = await runGuest({
      op: luks2Ram ? "convert_luks2" : "convert_luks",
      ramBytes: luks2Ram,
      opCode: ops.CONVERT,
      inputs: [{ path: img.openPath, format: formats.LUKS, nofollow: false, secret: pass }],
      // raw mode over the empty range [length, length) (origin there too): nothing is written.
      args: [0n, 0n, 0n, 0n, img.length, img.length, img.length],
      kdfMaxIters: kdfMaxIters(),
      timeoutMs: 24 * 3600 * 1000,
    });
  } catch (e) {
    throw new OpenError(img.filename, `Sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
  }
  const input = result.inputs[0];
  if (!input || input.dev !== img.dev || input.ino !== img.ino) {
    throw new OpenError(img.filename, "File changed while it was being opened");
  }
  const err = guestError(result.records);
  if (err) {
    const quoted = result.records
      .filter((r) => r.type === records.NAME && r.fields.kind === nameKinds.ERROR_TEXT)
      .map((r) => new TextDecoder().decode(nameBytes(r)));
    const f = err.fields;
    const fields = { code: f.code as number, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint };
    throw new OpenError(img.filename, img.driver.openError!(fields, quoted, img.filename));
  }
  if (result.guestStatus !== 0n) {
    throw new OpenError(img.filename, "Sandbox failure: guest reported an error without a reason");
  }
  img.secret = pass;
  img.luks2Ram = luks2Ram;
}

/**
 * A reading guest's failure that is really the open error of an image whose
 * unlock was deferred (unlockForRead's `defer`): an unlock or header error
 * the guest reports as FORMAT about the run's input `input` (the image's
 * first), worded as at open.
 */
export function unlockFailure(image: OpenedImage, input: number, recs: Rec[]): OpenError | undefined {
  const err = guestError(recs);
  if (!image.unlockPending || !err) return undefined;
  const f = err.fields;
  const fields = { code: f.code as number, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint };
  const opening = fields.code === guestErrors.FORMAT ||
    (image.qcow2 !== undefined && isQcow2CryptOpenError(fields));
  if (!opening || (f.input as number) !== input) return undefined;
  const quoted = recs
    .filter((r) => r.type === records.NAME && r.fields.kind === nameKinds.ERROR_TEXT)
    .map((r) => new TextDecoder().decode(nameBytes(r)));
  return new OpenError(image.filename, image.driver.openError!(fields, quoted, image.filename));
}
