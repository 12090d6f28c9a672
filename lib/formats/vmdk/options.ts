// vmdk's create options: qemu's vmdk_create_opts list (then the file
// protocol's), the step from parsed `-o` values to the planner's typed
// options, and the random CID the planner takes as input.
import { appendDescs, FILE_CREATE_OPTS, type OptDesc, optGet, type ParsedOpts } from "../options.ts";
import type { VmdkCreateOptions, VmdkEntropy } from "./create_plan.ts";

export const VMDK_OWN: OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size" },
  {
    name: "adapter_type",
    type: "string",
    help: "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX",
  },
  { name: "backing_file", type: "string", help: "File name of a base image" },
  { name: "backing_fmt", type: "string", help: "Must be 'vmdk' if present" },
  { name: "compat6", type: "bool", help: "VMDK version 6 image", def: "off" },
  { name: "hwversion", type: "string", help: "VMDK hardware version", def: "undefined" },
  { name: "toolsversion", type: "string", help: "VMware guest tools version" },
  {
    name: "subformat",
    type: "string",
    help:
      "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ",
  },
  {
    name: "zeroed_grain",
    type: "bool",
    help: "Enable efficient zero writes using the zeroed-grain GTE feature",
  },
];

/** What `-o` is parsed against for `create -f vmdk FILE`. */
export const VMDK_CREATE_OPTS: OptDesc[] = appendDescs(VMDK_OWN, FILE_CREATE_OPTS);

export function vmdkCreateOptions(o: ParsedOpts, filename: string): VmdkCreateOptions {
  return {
    size: optGet(o, "size")?.num ?? 0n,
    filename,
    subformat: optGet(o, "subformat")?.str,
    adapterType: optGet(o, "adapter_type")?.str,
    hwversion: optGet(o, "hwversion")?.str,
    toolsversion: optGet(o, "toolsversion")?.str,
    compat6: optGet(o, "compat6")?.bool ?? false,
    zeroedGrain: optGet(o, "zeroed_grain")?.bool ?? false,
    backingFile: optGet(o, "backing_file")?.str,
    backingFmt: optGet(o, "backing_fmt")?.str,
  };
}

/** qemu's g_random_int() for the descriptor CID. */
export function vmdkEntropy(): VmdkEntropy {
  return { cid: crypto.getRandomValues(new Uint32Array(1))[0] };
}
