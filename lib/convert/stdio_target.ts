// `-` as convert's source or target (docs/pipelines.md): a stream step's
// refusals as one-line errors, and the writer that streams each target
// format to stdout in file order (lib/convert/stream_output.ts).
import { StdoutSink, StreamError } from "../host/stdio_stream.ts";
import type { OutputSpec } from "./output_options.ts";
import { type ConvertJob, type Qcow2Target, qcow2Target, streamTarget } from "./pipeline.ts";
import { convertBlocksToStream, convertPackedToStream, convertRawToStream } from "./stream_output.ts";
import { ConvertError } from "./errors.ts";

/** The targets `-` (stdout) can take: one file written in order. */
export const STREAMABLE = "writing to stdout ('-') is supported for raw, qcow2, luks, vpc, vhdx and vmdk " +
  "(monolithicSparse, streamOptimized) targets only; multi-file vmdk subformats need a file name";

/** Runs a `-` stream step, its refusals as one-line errors (`Could not open '-': ...` for a source). */
export async function streamStep<T>(fn: () => T | Promise<T>, source?: string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof StreamError) {
      throw new ConvertError(source ? `Could not open '${source}': ${e.message}` : e.message);
    }
    throw e;
  }
}

/** Streams the target to stdout, in file order (lib/convert/stream_output.ts). */
export function streamToStdout(
  job: ConvertJob,
  spec: OutputSpec,
  /** A qcow2 target's options, -c and -B (undefined for the other writers). */
  qcow2: Qcow2Target | undefined,
  sink: StdoutSink,
  scratch: () => Promise<string>,
): Promise<bigint> {
  switch (spec.writer) {
    case "raw":
      return convertRawToStream(job, sink, scratch);
    case "blocks":
      return convertBlocksToStream(job, spec.blocks!, sink, scratch);
    case "stream":
      return convertPackedToStream(job, streamTarget(spec.stream!), sink, scratch);
    case "qcow2":
      return convertPackedToStream(job, qcow2Target(job, qcow2!), sink, scratch);
    default:
      throw new ConvertError(STREAMABLE);
  }
}
