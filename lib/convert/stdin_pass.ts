// `convert -f raw|vmdk - OUT`: whether stdin is converted in one pass, never
// stored whole (lib/convert/stdin_raw.ts, stdin_vmdk.ts), or spooled first.
// One pass takes a raw or unencrypted qcow2 target file that convert creates, without -l;
// a vmdk stream only when it is streamOptimized: its first window is read
// and decoded here, and any other vmdk stream is spooled, those bytes first.
import { hostStdio } from "../host/stdio.ts";
import { driverFor } from "../formats/mod.ts";
import { compressEncryptFirst } from "./qcow2_encrypt_target.ts";
import { spoolDir } from "../host/stdio_stream.ts";
import { openVmdkStdin, type VmdkStream } from "./stdin_vmdk.ts";
import { windowSize as streamWindowBytes } from "./stream_output.ts";
import { streamStep } from "./stdio_target.ts";
import type { TempFiles } from "./temp_files.ts";

export interface StdinRequest {
  fromStdin: boolean;
  toStdout: boolean;
  /** -n */
  skipCreate: boolean;
  /** -l */
  snapshot: boolean;
  /** -O */
  outFmt: string;
  /** -o as given. */
  options?: string;
  /** -f (undefined: probed, never one pass). */
  format?: string;
  /** -B or -o backing_file=: the new image is an overlay (spooled: the guest asks the source's top layer). */
  backing?: boolean;
}

export interface StdinPass {
  onePass: boolean;
  /** A streamOptimized vmdk read in one pass: its stream, first window decoded. */
  vmdkStream?: VmdkStream;
  /** A vmdk stream that is not: the bytes already read, spooled first. */
  spoolPrefix?: { path: string; len: bigint };
}

/** How stdin is read (nothing is read unless it is a vmdk stream into a one-pass target). */
export async function stdinPass(r: StdinRequest, temps: TempFiles): Promise<StdinPass> {
  // `-f raw -` into a raw or qcow2 file: one pass over stdin, nothing spooled
  // (lib/convert/stdin_raw.ts). Everything else from stdin is spooled first.
  // An encrypted qcow2 is written by one guest that makes its master key
  // (lib/convert/qcow2_encrypt_target.ts), never window by window: spooled.
  const qcow2 = driverFor("qcow2")!;
  const onePassTarget = r.fromStdin && !r.toStdout && !r.skipCreate && !r.snapshot && !r.backing &&
    (r.outFmt === "raw" || (r.outFmt === "qcow2" && !compressEncryptFirst(qcow2, r.options ?? "")));
  let vmdkStream: VmdkStream | undefined;
  let spoolPrefix: { path: string; len: bigint } | undefined;
  if (onePassTarget && r.format === "vmdk") {
    const windows = () => streamStep(() => temps.createOutput(`${spoolDir()}/stdin`));
    const opened = await streamStep(() => openVmdkStdin(hostStdio(), windows, streamWindowBytes()));
    if (opened.kind === "stream") vmdkStream = opened;
    else spoolPrefix = opened.prefix;
  }
  const onePass = onePassTarget && (r.format === "raw" || vmdkStream !== undefined);
  return { onePass, vmdkStream, spoolPrefix };
}
