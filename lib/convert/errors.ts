// convert's one-line errors from its domain code (lib/convert/*): a
// ConvertError's message is the whole line, in qemu-img's words, and
// lib/cli/convert.ts reports it as it is (exit 1); and the words for a
// reading guest's failure.
import { guestErrors } from "../abi/spec.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import type { GuestFailure } from "./pipeline.ts";

/** A refusal or failure of convert, reported as one line (lib/cli/convert.ts). */
export class ConvertError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConvertError";
  }
}

/** qemu-img's line for a source the reading guest failed on. */
export function guestFailureMessage(e: GuestFailure): string {
  const f = e.record.fields;
  // a failed read or block status (e.g. a vmdk grain lookup qemu fails with EIO)
  const msg = f.code === guestErrors.IO ? "Input/output error" : qcow2ErrorMessage({
    code: f.code as number,
    a0: f.a0 as bigint,
    a1: f.a1 as bigint,
    a2: f.a2 as bigint,
  });
  return `error while reading the source image: ${msg}`;
}
