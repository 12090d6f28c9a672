// The files convert writes its target into, and putting them in place: each
// file the target consists of is checked (no directory, no device but a raw
// one, qemu's create lock, never one of the command's own inputs), then
// either written in place (a device, or -n: zeroed or punched first unless
// the image's zeroes may stay) or built under a temporary name beside it
// (lib/convert/temp_files.ts) and renamed over it once complete, extents
// first and the target name last. Refusals are ConvertErrors in qemu's words.
import { hostPath } from "../host/context.ts";
import { errnoText } from "../host/errno.ts";
import { fileRange } from "../vmm/guest.ts";
import { LockError, LOCKS, takeLock } from "../vmm/image_lock.ts";
import { ConvertError } from "./errors.ts";
import type { OutputSpec } from "./output_options.ts";
import { STREAMABLE } from "./stdio_target.ts";
import type { TempFiles } from "./temp_files.ts";

/** What the command line says of the target's files. */
export interface TargetRequest {
  /** The target's name as given (`-` for stdout). */
  target: string;
  /** --target-image-opts: the operand as given, for qemu's "Could not open '...'". */
  display?: string;
  /** An error in the --target-image-opts operand: qemu's when it opens the -n target. */
  targetError?: Error;
  /** -O */
  outFmt: string;
  /** -n */
  skipCreate: boolean;
  /** --target-is-zero */
  targetIsZero: boolean;
  toStdout: boolean;
  /** -n -B: only the top's ranges are written; the rest keeps the target's bytes. */
  keepRest: boolean;
  /** The disk's size. */
  size: bigint;
  /** The images the command reads (never overwritten). */
  reads: { dev: bigint; ino: bigint }[];
}

export interface TargetFiles {
  /** Every file the target consists of, as named: the extents, then the target name. */
  names: string[];
  /** ... each as written (a symlink's target). */
  targets: string[];
  /** Where each is written: the file itself in place, else its temporary. */
  outs: string[];
  /** A device, or -n: written in place, no temporary name. */
  inPlace: boolean;
  /** In place: whether the writer zeroes what reads as zeroes or it already does. */
  inPlaceMode?: "zero" | "keep";
}

/**
 * Whether an encrypted source's unlock can be left to the reading guests
 * (unlockForRead's `defer`): a new target file whose writer reports the
 * guests' failures (not a LUKS target), never -n or a device, which are
 * written in place (zeroed or punched) before a guest runs.
 */
export async function deferUnlock(skipCreate: boolean, outFmt: string, target: string): Promise<boolean> {
  if (skipCreate || !["raw", "qcow2", "vpc", "vhdx", "vmdk"].includes(outFmt)) return false;
  if (target === "-") return true;
  const st = await Deno.stat(hostPath(target)).catch(() => undefined);
  return !st?.isBlockDevice && !st?.isCharDevice;
}

/** bdrv_create's failure, as qemu words it for the target. */
function cannotCreateAt(r: TargetRequest, name: string, why: string): ConvertError {
  return new ConvertError(
    `${r.target}: error while converting ${r.outFmt}: Could not create '${name}': ${why}`,
  );
}

/** Checks the target's files and makes the outputs the writers write. */
export async function prepareTargets(
  spec: OutputSpec,
  r: TargetRequest,
  temps: TempFiles,
): Promise<TargetFiles> {
  if (r.toStdout && spec.writer === "extents") {
    throw new ConvertError(`${r.target}: error while converting ${r.outFmt}: ${STREAMABLE}`);
  }
  // Every file the target consists of: the extents of a multi-file VMDK,
  // then the target name itself (its descriptor, or the whole image).
  // None for stdout: the output is built in unnamed files, then copied out.
  const names = r.toStdout ? [] : [...(spec.extents?.extents.map((e) => e.path) ?? []), r.target];
  const targets: string[] = [];
  let device = false;
  for (const name of names) {
    const existing = await Deno.stat(hostPath(name)).catch(() => undefined);
    if (existing?.isDirectory) throw cannotCreateAt(r, name, "Is a directory");
    // qemu writes into an existing block device (host_device: cinder and
    // os-brick copy volumes so); a temporary-name output would replace the
    // device node with a regular file instead. Raw output only, for now.
    if (
      existing?.isCharDevice || (existing?.isBlockDevice && (spec.writer !== "raw" || names.length !== 1))
    ) {
      throw new ConvertError(`Converting onto a device is not supported by instar yet: '${name}'`);
    }
    if (existing?.isBlockDevice) device = true;
    // -n: qemu opens the target it did not create (after the sources).
    if (r.targetError) throw r.targetError;
    if (r.skipCreate && !existing) {
      const why = await Deno.stat(hostPath(name)).then(() => "", (e) => errnoText(e));
      throw new ConvertError(`Could not open '${r.display ?? name}': Could not open '${name}': ${why}`);
    }
    // qemu writes through a symlink to the file it names; so does the
    // rename, by replacing the link's target rather than the link.
    const target = (await Deno.lstat(hostPath(name)).catch(() => undefined))?.isSymlink
      ? await Deno.realPath(hostPath(name))
      : name;
    // raw_co_create's lock on the file qemu would truncate: a running VM's
    // image, or one of this command's own inputs (their locks conflict).
    if (existing) {
      let held;
      try {
        held = await takeLock(target, LOCKS.create, name);
      } catch (e) {
        if (e instanceof LockError) {
          throw new ConvertError(`${r.target}: error while converting ${r.outFmt}: ${e.message}`);
        }
        throw cannotCreateAt(r, name, errnoText(e));
      }
      // With -U the inputs share everything and qemu would go ahead: refuse anyway.
      if (r.reads.some((img) => img.dev === held.dev && img.ino === held.ino)) {
        throw new ConvertError(
          `${r.target}: error while converting ${r.outFmt}: Refusing to overwrite an image this command reads`,
        );
      }
    }
    targets.push(target);
  }
  const outs: string[] = [];
  // A device, or -n: written in place, no temporary name.
  const inPlace = device || r.skipCreate;
  if (inPlace && spec.writer === "luks") {
    throw new ConvertError("Writing a new LUKS image onto a device is not supported by instar yet");
  }
  let inPlaceMode: "zero" | "keep" | undefined;
  if (inPlace) {
    const t = targets[0];
    let st: Deno.FileInfo, outSize: bigint;
    try {
      using f = await Deno.open(hostPath(t), { read: true });
      st = await f.stat();
      outSize = BigInt(await f.seek(0, Deno.SeekMode.End));
    } catch (e) {
      throw cannotCreateAt(r, names[0], errnoText(e));
    }
    if (outSize < r.size) {
      throw new ConvertError(
        r.skipCreate
          ? "output file is smaller than input file"
          : `${r.target}: error while converting ${r.outFmt}: Cannot grow device files`,
      );
    }
    // What the image reads as zeroes must read as zeroes in the target:
    // a file gets holes (qemu's write-zeroes with unmap punches them), a
    // device zeroes written; --target-is-zero says it already does.
    inPlaceMode = "keep";
    if (r.keepRest) {
      // -n -B: what the top leaves alone keeps the target's bytes.
    } else if (!r.targetIsZero && !device && r.size > 0n) {
      const why = await fileRange("punch", t, 0n, r.size, BigInt(st.dev), BigInt(st.ino ?? 0));
      if (why !== undefined) inPlaceMode = "zero";
    } else if (!r.targetIsZero) {
      inPlaceMode = "zero";
    }
    outs.push(t);
  }
  for (const [i, t] of (inPlace ? [] : targets).entries()) {
    try {
      // A preallocated qcow2 is written in place by guests that open it
      // by name (O_NOFOLLOW): a named temporary, not an unnamed file's /proc link.
      const named = spec.writer === "qcow2" && spec.preallocation !== "off";
      outs.push(named ? await temps.create(t, "out") : await temps.createOutput(t));
    } catch (e) {
      throw cannotCreateAt(r, names[i], errnoText(e));
    }
  }
  if (spec.writer === "raw" && spec.preallocation !== "off" && !inPlace && r.size > 0n) {
    // raw_co_create with falloc or full: the whole (512-rounded) file
    // allocated as zeroes; the data written after only fills it in.
    const out = outs[outs.length - 1];
    const st = await Deno.stat(hostPath(out));
    const why = await fileRange(
      "allocate",
      out,
      0n,
      (r.size + 511n) & ~511n,
      BigInt(st.dev),
      BigInt(st.ino ?? 0),
    );
    if (why !== undefined) {
      throw new ConvertError(
        `${r.target}: error while converting ${r.outFmt}: Could not preallocate data for the new file: ${why}`,
      );
    }
  }
  return { names, targets, outs, inPlace, inPlaceMode };
}

/**
 * Puts the written outputs in place of their targets (keeping an existing
 * target's permissions, as qemu's O_TRUNC open would): extents first, the
 * target name last, so the name appears only once every file it needs is
 * complete. A failed commit takes back the ones done.
 */
export async function commitTargets(files: TargetFiles, r: TargetRequest, temps: TempFiles): Promise<void> {
  const { names, targets, outs, inPlace } = files;
  for (const [i, t] of (inPlace ? [] : targets).entries()) {
    try {
      const st = await Deno.stat(hostPath(t));
      if (st.mode !== null && st.isFile) await Deno.chmod(hostPath(outs[i]), st.mode & 0o7777);
    } catch { /* no target yet */ }
  }
  temps.checkCancelled();
  const committed: string[] = [];
  for (const [i, t] of (inPlace ? [] : targets).entries()) {
    try {
      await temps.commit(outs[i], t);
    } catch (e) {
      for (const c of committed) await Deno.remove(hostPath(c)).catch(() => {});
      throw cannotCreateAt(r, names[i], errnoText(e));
    }
    committed.push(t);
  }
}
