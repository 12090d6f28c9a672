// raw's create options: only the size, then the file protocol's options
// (preallocation, nocow, extent_size_hint), as qemu's raw driver lists them.
import { appendDescs, FILE_CREATE_OPTS, type OptDesc } from "../options.ts";

export const RAW_CREATE_OPTS: OptDesc[] = appendDescs(
  [{ name: "size", type: "size", help: "Virtual disk size" }],
  FILE_CREATE_OPTS,
);
