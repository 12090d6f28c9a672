// vpc's create options: qemu's vpc_create_opts list (then the file
// protocol's), the step from parsed `-o` values to the planner's typed
// options, and the clock/RNG values the planner takes as input.
import { appendDescs, FILE_CREATE_OPTS, type OptDesc, optGet, type ParsedOpts } from "../options.ts";
import type { VpcCreateOptions, VpcEntropy } from "./create_plan.ts";

export const VPC_OWN: OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size" },
  {
    name: "subformat",
    type: "string",
    help: "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
  },
  {
    name: "force_size",
    type: "bool",
    help:
      "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
  },
];

/** What `-o` is parsed against for `create -f vpc FILE`. */
export const VPC_CREATE_OPTS: OptDesc[] = appendDescs(VPC_OWN, FILE_CREATE_OPTS);

/** The planner's options from parsed `-o` values (value checks happen in the planner). */
export function vpcCreateOptions(o: ParsedOpts): VpcCreateOptions {
  return {
    size: optGet(o, "size")?.num ?? 0n,
    subformat: optGet(o, "subformat")?.str,
    forceSize: optGet(o, "force_size")?.bool ?? false,
  };
}

/** The values qemu takes from the clock and RNG: now, and a random (v4) UUID. */
export function vpcEntropy(): VpcEntropy {
  const uuid = crypto.getRandomValues(new Uint8Array(16));
  uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
  uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
  return { unixSeconds: BigInt(Math.floor(Date.now() / 1000)), uuid };
}
