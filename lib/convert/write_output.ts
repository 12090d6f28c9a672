// convert's writers, chosen by the target: a one-pass stdin source
// (lib/convert/stdin_raw.ts, stdin_vmdk.ts), stdout (stdio_target.ts;
// encrypted targets encrypted_stdout.ts), or a
// new file of each writer the target driver names (raw, blocks, stream,
// luks, extents, encrypted or plain qcow2). The command's own cases (-n -B
// into raw, a preallocated qcow2) are its caller's. Returns the bytes of
// data written (for the final progress).
import type { SecretStore } from "../secrets/objects.ts";
import type { Qcow2Model } from "../formats/qcow2/model.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { hostStdio } from "../host/stdio.ts";
import { spoolDir, type StdoutSink } from "../host/stdio_stream.ts";
import { ConvertError } from "./errors.ts";
import type { OutputSpec } from "./output_options.ts";
import {
  type ConvertJob,
  convertToBlocks,
  convertToExtents,
  convertToQcow2,
  convertToRaw,
  convertToStream,
  type Qcow2Target,
  qcow2Target,
} from "./pipeline.ts";
import { convertToLuks } from "./luks_target.ts";
import { convertToEncryptedQcow2 } from "./qcow2_encrypt_target.ts";
import { encryptedTarget, encryptedToStdout } from "./encrypted_stdout.ts";
import { convertRawStdin, type OnePassTarget } from "./stdin_raw.ts";
import { convertVmdkStdin, type VmdkStream } from "./stdin_vmdk.ts";
import { windowSize as streamWindowBytes } from "./stream_output.ts";
import { streamStep, streamToStdout } from "./stdio_target.ts";
import type { TargetFiles } from "./target_files.ts";
import type { TempFiles } from "./temp_files.ts";

export interface WriteOptions {
  /** -c */
  compress: boolean;
  secrets: SecretStore;
  kdfMaxIters: bigint;
  /** The source is stdin, read in one pass (a streamOptimized vmdk: its opened stream). */
  onePass?: { vmdkStream?: VmdkStream };
  /** The target is stdout. */
  sink?: StdoutSink;
  /** -B: the new qcow2's backing file's size. */
  backingSize?: bigint;
  /** -B: its chain, for the guest to read target clusters written only in part (lib/convert/pipeline.ts). */
  backingInputs?: GuestInput[];
  /** The source's top layer when it is a qcow2 (where -B -c cuts its status runs). */
  topQcow2?: Qcow2Model;
  temps: TempFiles;
}

/** Writes the converted image into `files` (lib/convert/target_files.ts). */
export async function writeOutput(
  job: ConvertJob,
  spec: OutputSpec,
  files: TargetFiles,
  w: WriteOptions,
): Promise<bigint> {
  const { outs, inPlace } = files;
  const out = outs[outs.length - 1];
  if (w.onePass) {
    if (inPlace) throw new ConvertError("Writing a raw stream from stdin onto a device is not supported");
    const target: OnePassTarget = spec.writer === "raw"
      ? { kind: "raw" }
      : { kind: "qcow2", packed: qcow2Target(job, { options: spec.qcow2!, compress: w.compress }) };
    const windows = () => streamStep(() => w.temps.createOutput(`${spoolDir()}/stdin`));
    return w.onePass.vmdkStream
      ? await convertVmdkStdin(job, target, out, w.onePass.vmdkStream)
      : await convertRawStdin(job, target, out, hostStdio(), windows, streamWindowBytes());
  }
  // -B -c: the guest cuts the top's status runs where qemu's qcow2 does (one L2 table).
  const tq = w.topQcow2;
  const topL2Bits = tq ? 2n * BigInt(tq.clusterBits) - (tq.extendedL2 ? 4n : 3n) : 0n;
  const qcow2 = (): Qcow2Target => ({
    options: spec.qcow2!,
    compress: w.compress,
    backingSize: w.backingSize,
    topL2Bits,
    backingInputs: w.backingInputs,
  });
  if (w.sink) {
    // stdout: window by window through unnamed files in TMPDIR (lib/convert/stream_output.ts).
    const scratch = () => streamStep(() => w.temps.createOutput(`${spoolDir()}/stdout`));
    // An encrypted target: written whole into one such file first (lib/convert/encrypted_stdout.ts).
    if (encryptedTarget(spec)) {
      return await encryptedToStdout(job, spec, w.secrets, w.kdfMaxIters, w.sink, scratch, {
        size: w.backingSize,
        inputs: w.backingInputs,
      });
    }
    return await streamToStdout(job, spec, spec.writer === "qcow2" ? qcow2() : undefined, w.sink, scratch);
  }
  switch (spec.writer) {
    case "raw":
      return await convertToRaw(job, out);
    case "blocks":
      return await convertToBlocks(job, spec.blocks!, out);
    case "stream":
      return await convertToStream(job, spec.stream!, out);
    case "luks":
      return await convertToLuks(job, spec.luks!, out, w.secrets, w.kdfMaxIters);
    case "extents":
      return await convertToExtents(job, spec.extents!, (i) => Promise.resolve(outs[i]));
  }
  if (spec.qcow2Create?.encrypt) {
    const e = spec.qcow2Create.encrypt;
    return await convertToEncryptedQcow2(
      job,
      spec.qcow2!,
      e,
      out,
      w.secrets,
      w.kdfMaxIters,
      w.backingSize,
      w.backingInputs,
    );
  }
  return await convertToQcow2(job, qcow2(), out);
}
