// vhdx's create options: qemu's vhdx_create_opts list (then the file
// protocol's), the step from parsed `-o` values to the planner's typed
// options, and the random values the planner takes as input.
import { appendDescs, FILE_CREATE_OPTS, type OptDesc, optGet, type ParsedOpts } from "../options.ts";
import type { VhdxCreateOptions, VhdxEntropy } from "./create_plan.ts";

export const VHDX_OWN: OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size; max of 64TB." },
  { name: "log_size", type: "size", help: "Log size; min 1MB.", def: "1048576" },
  {
    name: "block_size",
    type: "size",
    help: "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.",
    def: "0",
  },
  {
    name: "subformat",
    type: "string",
    help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
  },
  {
    name: "block_state_zero",
    type: "bool",
    help:
      "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
  },
];

/** What `-o` is parsed against for `create -f vhdx FILE`. */
export const VHDX_CREATE_OPTS: OptDesc[] = appendDescs(VHDX_OWN, FILE_CREATE_OPTS);

export function vhdxCreateOptions(o: ParsedOpts): VhdxCreateOptions {
  return {
    size: optGet(o, "size")?.num ?? 0n,
    logSize: optGet(o, "log_size")?.num,
    blockSize: optGet(o, "block_size")?.num,
    subformat: optGet(o, "subformat")?.str,
    blockStateZero: optGet(o, "block_state_zero")?.bool,
  };
}

/** qemu's random values: a 32-bit sequence number and three GUIDs. */
export function vhdxEntropy(): VhdxEntropy {
  const r = crypto.getRandomValues(new Uint8Array(52));
  return {
    sequenceNumber: new DataView(r.buffer).getUint32(48, true),
    fileWriteGuid: r.slice(0, 16),
    dataWriteGuid: r.slice(16, 32),
    page83Guid: r.slice(32, 48),
  };
}
