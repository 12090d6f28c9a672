// The one-line error for a convert writer's failure, in qemu-img's words: a
// stream that closed or refused, a plan the target cannot take, an output
// write the host refused (a full disk), or a sandbox failure. A guest's
// failure to read the source (GuestFailure) is the caller's: it may be a
// deferred unlock, reported as the source's open error.
import { Cancelled } from "../host/context.ts";
import { errnoText } from "../host/errno.ts";
import { StreamClosed, StreamError } from "../host/stdio_stream.ts";
import { WriteError } from "../formats/apply_plan.ts";
import { ConvertError } from "./errors.ts";
import { PlanRefused } from "./pipeline.ts";

/** What to throw for `e`, thrown by a writer of `target` (-O `outFmt`): a ConvertError, or `e` itself. */
export function writeFailure(e: unknown, target: string, outFmt: string): unknown {
  if (e instanceof StreamClosed || e instanceof StreamError) return new ConvertError(e.message);
  if (e instanceof Cancelled || e instanceof ConvertError) return e;
  if (e instanceof PlanRefused) {
    return new ConvertError(`${target}: error while converting ${outFmt}: ${e.message}`);
  }
  // An output write the host refused (a full disk): qemu-img's words.
  const w = (e as { write?: { offset: bigint; text: string } }).write;
  if (w) return new ConvertError(`error while writing at byte ${w.offset}: ${w.text}`);
  if (e instanceof WriteError) {
    return new ConvertError(`error while writing at byte ${e.offset}: ${errnoText(e.reason)}`);
  }
  return new ConvertError(`Sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
}
