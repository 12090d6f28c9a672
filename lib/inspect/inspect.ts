// `instar inspect`'s one pass: a file (or a stream's window, stream.ts) goes
// to the inspect guest once; its records become the verdict (verdict.ts).
import { formats, inspectOpFlags, ops } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import { hostPath } from "../host/context.ts";
import { decodeInspect, type InspectResult } from "./verdict.ts";
import { readStreamWindow } from "./stream.ts";

/** Why inspect could not answer at all (exit 2), in one line. */
export class InspectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InspectError";
  }
}

function errnoText(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "No such file or directory";
  if (e instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (e instanceof Error) return e.message.replace(/ \(os error \d+\).*$/, "").replace(/:.*$/, "");
  return String(e);
}

async function runInspect(
  filename: string,
  path: string,
  fileSize: bigint,
  stream?: { prefix: bigint; tailStart: bigint },
): Promise<InspectResult> {
  let result;
  try {
    result = await runGuest({
      op: "inspect",
      opCode: ops.INSPECT,
      inputs: [{ path, format: formats.AUTO, nofollow: false }],
      flags: stream ? inspectOpFlags.STREAM : 0,
      args: stream ? [stream.prefix, stream.tailStart] : [],
    });
  } catch (e) {
    throw new InspectError(
      `Could not inspect '${filename}': Sandbox failure: ${e instanceof Error ? e.message : e}`,
    );
  }
  if (result.guestStatus !== 0n) {
    throw new InspectError(`Could not inspect '${filename}': Sandbox failure: the guest failed`);
  }
  try {
    return decodeInspect(result.records, filename, result.inputs[0]?.size ?? fileSize);
  } catch (e) {
    throw new InspectError(
      `Could not inspect '${filename}': Sandbox failure: ${e instanceof Error ? e.message : e}`,
    );
  }
}

/** Inspects a regular file. */
export async function inspectFile(filename: string): Promise<InspectResult> {
  const path = hostPath(filename);
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
    if (st.isFile) (await Deno.open(path, { read: true })).close();
  } catch (e) {
    throw new InspectError(`Could not open '${filename}': ${errnoText(e)}`);
  }
  if (!st.isFile) throw new InspectError(`'${filename}' is not a regular file`);
  return await runInspect(filename, path, BigInt(st.size));
}

/** Inspects standard input (or `source`), read once without storing it whole. */
export async function inspectStream(
  source?: { read(p: Uint8Array): Promise<number | null> },
): Promise<InspectResult> {
  let w;
  try {
    w = await readStreamWindow(source);
  } catch (e) {
    throw new InspectError(`Could not read the standard input: ${errnoText(e)}`);
  }
  try {
    const r = await runInspect("-", w.path, w.size, { prefix: w.prefix, tailStart: w.tailStart });
    r.streamBytes = w.size;
    return r;
  } finally {
    await w.close();
  }
}
