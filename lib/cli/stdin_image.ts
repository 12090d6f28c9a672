// A source named `-`: stdin spooled into an unnamed file (lib/host/stdio_stream.ts),
// then opened like any file (probed unless -f, decoded in the guest). It may
// name no other file: a backing file or vmdk extents would resolve against
// the caller's working directory, which the stream's sender does not own.
// A stream that ended early must not pass for a smaller image: vpc's open
// already refuses a truncated file; for qcow2, vhdx and vmdk the check guest
// runs over the spooled file, and anything it reports (clusters, blocks or
// grains past the end of the file) refuses the input. A truncated raw stream
// cannot be told from a smaller disk (docs/pipelines.md).
import { ops, records } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import { backingName, chainInputs, type OpenedImage, OpenError, openImage } from "./image.ts";
import { cvtnum } from "./options.ts";
import type { LongOption } from "./getopt.ts";
import { hostContext } from "../host/context.ts";
import { spoolStdin, StreamError } from "../host/stdio_stream.ts";

/** The formats whose check finds data referenced past the end of the file. */
const CHECKED = new Set(["qcow2", "vhdx", "vmdk"]);

/** `--max-spool SIZE`, accepted by every command that reads `-`. */
export const MAX_SPOOL_LONG: LongOption = { name: "max-spool", hasArg: true, id: "max-spool", instar: true };

export function parseMaxSpool(value: string): bigint {
  return cvtnum("spool size", value);
}

export interface StdinOpenOptions {
  format?: string;
  unsafeQuirks: boolean;
  noLists?: boolean;
  checkMode?: boolean;
  /** info and check report a backing file's name without opening it. */
  allowBackingName?: boolean;
  /** check reports the errors itself. */
  skipCompleteness?: boolean;
}

/** Opens the spooled stdin at `path` as the image `name` (see the module comment). */
export async function openStdinImage(name: string, path: string, o: StdinOpenOptions): Promise<OpenedImage> {
  const top = await openImage(name, {
    format: o.format,
    unsafeQuirks: o.unsafeQuirks,
    openPath: path,
    noLists: o.noLists,
    checkMode: o.checkMode,
    noExternalFiles: true,
  });
  if (!o.allowBackingName) {
    let backing: string | undefined = "?";
    try {
      backing = backingName(top);
    } catch { /* a name that is not UTF-8: refused as well */ }
    if (backing !== undefined) {
      throw new OpenError(name, "an image read from stdin may not name a backing file");
    }
  }
  if (CHECKED.has(top.format) && !o.skipCompleteness) await refuseIncomplete(name, top);
  return top;
}

/**
 * For the read commands (info, check, map, compare, measure): spools stdin
 * (bounded by `maxSpool`) and opens it; the spool is dropped when the
 * command ends (run() releases what the context holds). Open failures are
 * OpenErrors, as openImage's.
 */
export async function openStdin(name: string, maxSpool: bigint, o: StdinOpenOptions): Promise<OpenedImage> {
  let u;
  try {
    u = await spoolStdin(maxSpool);
  } catch (e) {
    if (e instanceof StreamError) throw new OpenError(name, e.message);
    throw e;
  }
  const ctx = hostContext();
  (ctx.locks ??= []).push({ release: () => u.close() });
  return await openStdinImage(name, u.path, o);
}

async function refuseIncomplete(name: string, top: OpenedImage): Promise<void> {
  const incomplete = (why: string) =>
    new OpenError(
      name,
      `the image read from stdin is incomplete or damaged (${why}); did the stream end early?`,
    );
  let recs;
  try {
    recs = (await runGuest({ op: "check", opCode: ops.CHECK, inputs: chainInputs([top]) })).records;
  } catch (e) {
    throw new OpenError(name, `Sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (recs.some((r) => r.type === records.ERROR)) throw incomplete("it cannot be checked");
  const checks = recs.filter((r) => r.type === records.CHECK);
  if (checks.length !== 1) throw new OpenError(name, "Sandbox failure: no check result");
  const c = checks[0].fields;
  if ((c.flags as number) !== 0) throw incomplete("its check failed");
  const errors = (c.check_errors as bigint) + (c.corruptions as bigint);
  if (errors > 0n) throw incomplete(`qemu-img check finds ${errors} error${errors === 1n ? "" : "s"}`);
}
