// Pieces every subcommand shares: output streams, instar's own options,
// --output parsing and the output profile.
import { CliError, usageError } from "./messages.ts";
import { getopt, type LongOption, type Parsed } from "./getopt.ts";
import { detectProfile, parseProfile, type Profile } from "./version.ts";
import { accumulateOptions } from "../formats/options.ts";
import type { HostContext } from "../host/context.ts";
import { forceShare, type LockMode, LOCKS } from "../vmm/image_lock.ts";
import { ObjectError, SecretStore } from "../secrets/objects.ts";
import { hostPath } from "../host/context.ts";
import { limits } from "../abi/spec.ts";
import { strtosz } from "../formats/size.ts";

export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** The request's working directory, environment, limits and cancel
   * (`instar serve`); absent in the direct CLI: the process's own. */
  context?: HostContext;
}

/** Options instar adds to qemu-img's syntax (accepted by every subcommand). */
export interface InstarOptions {
  qemuVersion?: string;
  unsafeQuirks: boolean;
  backingDirs: string[];
  /** --object secret,...: the secrets the command line defined (every command shares them). */
  secrets: SecretStore;
  /** --image-opts: image operands are QemuOpts strings (lib/cli/image_ref.ts). */
  imageOpts: boolean;
}

export const INSTAR_LONGS: LongOption[] = [
  { name: "qemu-version", hasArg: true, id: "qemu-version", instar: true },
  { name: "unsafe-quirks", hasArg: false, id: "unsafe-quirks", instar: true },
  { name: "backing-dir", hasArg: true, id: "backing-dir", instar: true },
  { name: "max-guest-memory", hasArg: true, id: "max-guest-memory", instar: true },
];

export function newInstarOptions(base?: InstarOptions): InstarOptions {
  return {
    qemuVersion: base?.qemuVersion,
    unsafeQuirks: base?.unsafeQuirks ?? false,
    backingDirs: [...(base?.backingDirs ?? [])],
    secrets: base?.secrets ?? new SecretStore(),
    imageOpts: base?.imageOpts ?? false,
  };
}

/** --object: qemu-img creates the object when getopt meets it (errors exit with `code`). */
export function objectOption(o: InstarOptions, value: string, code = 1): void {
  try {
    o.secrets.add(value, (path) => Deno.readFileSync(hostPath(path)));
  } catch (e) {
    if (e instanceof ObjectError) throw new CliError(e.lines, false, code);
    throw e;
  }
}

/** Handles one of instar's own options and the ones every command shares
 * (--object, --image-opts); false if `id` is not one. */
export function instarOption(o: InstarOptions, id: string, value?: string): boolean {
  switch (id) {
    case "object":
      objectOption(o, value!);
      return true;
    case "image-opts":
      o.imageOpts = true;
      return true;
    case "qemu-version":
      if (!parseProfile(value!)) throw usageError(`Invalid --qemu-version '${value}' (expected X.Y)`);
      o.qemuVersion = value;
      return true;
    case "unsafe-quirks":
      o.unsafeQuirks = true;
      return true;
    case "backing-dir":
      o.backingDirs.push(value!);
      return true;
    case "max-guest-memory":
      o.secrets.kdfMemoryKib = maxGuestMemoryKdfKib(value!);
      return true;
  }
  return false;
}

/**
 * --max-guest-memory SIZE: the most RAM a guest that unlocks a LUKS2 key
 * slot may get, which bounds the Argon2 memory it can derive with (SIZE less
 * the guest's own 32 MiB). 64 MiB up to the VMM's largest guest.
 */
function maxGuestMemoryKdfKib(value: string): bigint {
  const max = BigInt(limits.RAM_MAX);
  let v: bigint | undefined;
  try {
    v = strtosz(value);
  } catch { /* reported below */ }
  if (v === undefined || v < 64n << 20n || v > max) {
    throw usageError(`Invalid --max-guest-memory '${value}' (expected a size from 64M to ${max >> 20n}M)`);
  }
  return (v - (32n << 20n)) / 1024n;
}

export async function profileOf(o: InstarOptions): Promise<Profile> {
  if (o.qemuVersion) return parseProfile(o.qemuVersion)!;
  return await detectProfile();
}

/** The -t/-T cache modes qemu-img accepts (bdrv_parse_cache_mode); instar's I/O ignores them. */
export const CACHE_MODES = ["none", "off", "writeback", "unsafe", "directsync", "writethrough"];

export type OutputFormat = "human" | "json";

/** qemu-img's --output check (after the file name check, before opening). */
export function outputFormat(output: string | undefined): OutputFormat {
  if (output === undefined || output === "human") return "human";
  if (output === "json") return "json";
  throw new CliError(["--output must be used with human or json as argument."]);
}

export function expectOneFile(operands: string[]): string {
  if (operands.length !== 1) throw usageError("Expecting one image file name");
  return operands[0];
}

/** -h/--help anywhere on a subcommand's line: run.ts prints the help text. */
export class HelpRequested extends Error {}

/**
 * getopt over a command's own options and instar's (INSTAR_LONGS, handled
 * by instarOption into `o`); -h / --help (id "h") throws HelpRequested;
 * every other option goes to `on`. Returns the operands.
 */
export function getoptCommand(
  o: InstarOptions,
  argv: string[],
  shortSpec: string,
  longs: LongOption[],
  on: (p: Parsed) => void,
): string[] {
  return getopt(argv, shortSpec, [...longs, ...INSTAR_LONGS], (p) => {
    if (instarOption(o, p.id, p.value)) return;
    if (p.id === "h") throw new HelpRequested();
    on(p);
  });
}

/** What every image subcommand (info, check, map) parses the same way. */
export interface ImageCommandOptions {
  fmt?: string;
  output?: string;
  /** -U / --force-share: share every permission (qemu's BDRV_O_FORCE_SHARE). */
  forceShare?: boolean;
}

/** The lock a read-only command takes on each image of its chain (-U shares everything). */
export function readLock(forceShareAll: boolean | undefined, mode: LockMode = LOCKS.read): LockMode {
  return forceShareAll ? forceShare(mode) : mode;
}

/** Long options every image subcommand shares, before its own ones (qemu-img's table order,
 * which glibc's getopt uses when it lists an ambiguous prefix's possibilities). */
export const IMAGE_LONGS_HEAD: LongOption[] = [
  { name: "help", hasArg: false, id: "h" },
  { name: "format", hasArg: true, id: "f" },
];
/** ... and after them. */
export const IMAGE_LONGS_TAIL: LongOption[] = [
  { name: "output", hasArg: true, id: "output" },
  { name: "object", hasArg: true, id: "object" },
  { name: "image-opts", hasArg: false, id: "image-opts" },
  { name: "force-share", hasArg: false, id: "U" },
];

/** The first long options of convert, compare and resize, in qemu-img's order
 * (create and measure order theirs differently, so they list their own). */
export const DATA_LONGS_HEAD: LongOption[] = [
  { name: "help", hasArg: false, id: "h" },
  { name: "object", hasArg: true, id: "object" },
  { name: "image-opts", hasArg: false, id: "image-opts" },
];

/** Handles -h, -f, --output and -U (QEMU's locks are
 * then taken sharing everything); false for the subcommand's own options. */
export function imageCommandOption(s: ImageCommandOptions, id: string, value?: string): boolean {
  switch (id) {
    case "h":
      throw new HelpRequested();
    case "f":
      s.fmt = value;
      return true;
    case "output":
      s.output = value;
      return true;
    case "U":
      s.forceShare = true;
      return true;
  }
  return false;
}

/** qemu-img's accumulate_options: repeated -o join with a comma; an invalid list is refused in its words. */
export function addOptionList(prev: string | undefined, arg: string): string {
  const next = accumulateOptions(prev, arg);
  if (next === undefined) throw new CliError([`Invalid option list: ${arg}`]);
  return next;
}
