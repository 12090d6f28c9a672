// The create and convert-target rows of formats whose file qemu creates
// (empties) before the format's own checks (vpc, vhdx): the file layer's
// preallocation is parsed first, the file made, then the format's plan.
import type { BlockOutput, ConvertTarget, CreateSupport } from "./types.ts";
import { CreateError } from "./types.ts";
import type { OptDesc, ParsedOpts } from "./options.ts";
import { fileLayerPreallocation } from "./options.ts";
import type { FilePlan, PlanResult } from "./plan.ts";

/** create: the file layer's checks, the (emptied) file, then `plan`'s checks and writes. */
export function createEmptiedFirst(
  options: OptDesc[],
  own: OptDesc[],
  plan: (opts: ParsedOpts) => PlanResult<FilePlan>,
): CreateSupport {
  return {
    options,
    own,
    async run(_filename, opts, host) {
      // The file layer parses its preallocation before it creates the file
      // and refuses metadata after (the empty file stays, as qemu leaves it).
      const prealloc = fileLayerPreallocation(opts);
      const unsupported = !prealloc.ok && prealloc.error.message.startsWith("Unsupported");
      if (!prealloc.ok && !unsupported) throw new CreateError(prealloc.error.message);
      await host.createFile();
      if (!prealloc.ok) throw new CreateError(prealloc.error.message);
      const p = plan(opts);
      if (!p.ok) throw new CreateError(p.error.message);
      await host.applyPlan(p.value);
    },
  };
}

/** convert -O: the block writer over `output`'s layout. */
export function blocksTarget(output: (opts: ParsedOpts) => PlanResult<BlockOutput>): ConvertTarget {
  return {
    spec(opts) {
      // qemu creates the file (protocol layer, size 0) before the format's
      // checks: its preallocation is checked first and then has no effect.
      const prealloc = fileLayerPreallocation(opts);
      if (!prealloc.ok) return prealloc;
      const blocks = output(opts);
      if (!blocks.ok) return blocks;
      return { ok: true, value: { writer: "blocks", preallocation: "off", blocks: blocks.value } };
    },
  };
}
