// convert's target, resolved before anything is written: the -o options
// parsed for the target driver (lib/convert/output_options.ts), the disk
// size a one-pass stdin source is planned for, and img_convert's refusals
// of -c, preallocation, encryption and backing files, in qemu-img's order.
// A refusal is a ConvertError (its message the whole line).
import { driverFor } from "../formats/mod.ts";
import { ConvertError } from "./errors.ts";
import { OutputOptionError, outputOptions, type OutputSpec } from "./output_options.ts";
import { HOST_DEVICE } from "./host_device.ts";
import { checkHostDevice } from "./host_device_check.ts";
import { onePassBound, RAW_ONE_PASS_BOUND } from "./stdin_raw.ts";
import { COMPRESS_ENCRYPT, compressEncryptFirst } from "./qcow2_encrypt_target.ts";
import { type CryptChainImage, cryptCompressRefusal } from "./crypt_compress.ts";

/** What the command line asks of the target. */
export interface OutputRequest {
  /** -O */
  outFmt: string;
  /** -o as given. */
  options?: string;
  /** The target's name (`-` for stdout). */
  target: string;
  /** -n */
  skipCreate: boolean;
  /** -B and -F */
  outBase?: string;
  backingFmt?: string;
  /** -c */
  compress: boolean;
  toStdout: boolean;
  /** The source is stdin read in one pass (lib/convert/stdin_raw.ts, stdin_vmdk.ts). */
  onePass: boolean;
  /** ... as a streamOptimized vmdk, whose header gave the disk's size. */
  vmdkStream: boolean;
}

/**
 * The target's spec for a source of `size` bytes and the size the writers
 * plan for (a one-pass stdin source: a bound), up to the -B check that
 * needs the backing file opened (the caller's, then checkAfterBacking).
 */
export async function resolveOutput(
  r: OutputRequest,
  size: bigint,
  chain: CryptChainImage[],
): Promise<{ spec: OutputSpec; size: bigint }> {
  // -O host_device: an existing block device, written as -O raw writes one (lib/convert/host_device.ts).
  if (r.outFmt === HOST_DEVICE) await checkHostDevice(r, r.target);
  const hostDevice = r.outFmt === HOST_DEVICE;
  const outDriver = driverFor(hostDevice ? "raw" : r.outFmt);
  if (!outDriver) throw new ConvertError(`Unknown file format '${r.outFmt}'`);
  let spec: OutputSpec;
  try {
    // -B and -F: qemu-img's add_old_style_options.
    // With -n nothing is created: qemu never looks at them for the target.
    const old = r.skipCreate ? {} : { backingFile: r.outBase, backingFmt: r.backingFmt };
    spec = outputOptions(outDriver, hostDevice ? "" : r.options ?? "", r.target, size, old);
    if (r.vmdkStream) {
      // The stream's header gave the disk's size: planned as for a file.
    } else if (r.onePass && spec.writer === "qcow2") {
      size = onePassBound(spec.qcow2!.clusterSize, spec.qcow2!.extendedL2);
      spec = outputOptions(outDriver, r.options ?? "", r.target, size, old);
    } else if (r.onePass) {
      size = RAW_ONE_PASS_BOUND;
    }
  } catch (e) {
    // -c with encryption: img_convert refuses it before bdrv_create checks the options.
    if (e instanceof OutputOptionError && r.compress && compressEncryptFirst(outDriver, r.options ?? "")) {
      if (e.message.startsWith(`${r.target}: error while converting `)) {
        throw new ConvertError(COMPRESS_ENCRYPT);
      }
    }
    if (e instanceof OutputOptionError) throw new ConvertError(e.message);
    throw e;
  }
  if (r.compress) {
    if (spec.writer !== "qcow2" && !spec.compress?.accepted) {
      const c = spec.compress;
      throw new ConvertError(c && !c.accepted ? c.message : "Compression not supported for this file format");
    }
    if (spec.qcow2Create?.encrypt) throw new ConvertError(COMPRESS_ENCRYPT);
    if (spec.preallocation !== "off") {
      throw new ConvertError("Compression and preallocation not supported at the same time");
    }
    const crypt = cryptCompressRefusal(chain, spec.qcow2?.compressionType === "zstd");
    if (crypt) throw new ConvertError(crypt);
  }
  // Raw targets take falloc/full as qemu's raw create does (the file
  // allocated as zeroes before the data lands); qcow2 targets are created
  // preallocated as `create` makes them, then written in place.
  if (
    spec.preallocation !== "off" &&
    ((spec.writer !== "raw" && spec.writer !== "qcow2") || r.skipCreate || r.toStdout)
  ) {
    throw new ConvertError(`Preallocation (${spec.preallocation}) is not supported by instar convert yet`);
  }
  // The in-place writer does not write subclusters (nor over a backing
  // file, which qemu allows with preallocation only with extended_l2).
  if (spec.writer === "qcow2" && spec.preallocation !== "off" && spec.qcow2!.extendedL2) {
    throw new ConvertError(
      `Preallocation (${spec.preallocation}) with extended L2 entries is not supported by instar convert yet`,
    );
  }
  // -B (or -o backing_file): qemu opens the new target with its backing
  // chain (the caller does, read-only, to learn the backing file's size).
  // To stdout one guest writes the data as for a file (stream_output.ts);
  // a one-pass stdin source has no top layer of its own to ask.
  if (spec.qcow2?.backingFile !== undefined && r.onePass) {
    throw new ConvertError(
      "Writing an image with a backing file from a stream on stdin is not supported by instar",
    );
  }
  return { spec, size };
}

/** The refusals img_convert reaches after the target's backing file is open. */
export function checkAfterBacking(spec: OutputSpec, r: OutputRequest): void {
  if (r.onePass && spec.preallocation !== "off") {
    throw new ConvertError(
      `Preallocation (${spec.preallocation}) needs the disk's size up front; a raw stream on stdin has none`,
    );
  }
}
