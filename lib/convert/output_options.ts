// `-o` for convert's target: the same QemuOpts parsing and option lists as
// `create` (lib/formats/options.ts, lib/formats/<fmt>/options.ts), so both
// commands accept and refuse exactly what qemu-img does. Parse errors are
// reported as they are (qemu_opts_do_parse runs before bdrv_create); errors
// about an option's meaning get bdrv_create's "<file>: error while
// converting <fmt>: " prefix.
import { CliError } from "../cli/messages.ts";
import { optGet, optSetNumber, parseOptions } from "../formats/options.ts";
import { QCOW2_CREATE_OPTS, qcow2CreateOptions } from "../formats/qcow2/options.ts";
import { RAW_CREATE_OPTS } from "../formats/raw/options.ts";
import type { Qcow2OutputOptions } from "../formats/qcow2/output_plan.ts";

export interface OutputSpec {
  preallocation: "off" | "metadata" | "falloc" | "full";
  qcow2?: Qcow2OutputOptions;
}

/** Parses `-o` for a raw or qcow2 target of `size` bytes. Throws CliError with qemu's text. */
export function outputOptions(fmt: "raw" | "qcow2", text: string, outFile: string, size: bigint): OutputSpec {
  const parsed = parseOptions(text, fmt === "qcow2" ? QCOW2_CREATE_OPTS : RAW_CREATE_OPTS);
  if (!parsed.ok) throw new CliError([parsed.error.message]);
  const opts = parsed.value;
  // img_convert sets the size from the source after parsing -o.
  optSetNumber(opts, "size", size);
  const late = (msg: string) => new CliError([`${outFile}: error while converting ${fmt}: ${msg}`]);
  if (fmt === "raw") {
    const prealloc = optGet(opts, "preallocation")?.str ?? "off";
    if (!["off", "falloc", "full"].includes(prealloc)) throw late(`invalid parameter value: ${prealloc}`);
    return { preallocation: prealloc as OutputSpec["preallocation"] };
  }
  if (optGet(opts, "backing_file") !== undefined || optGet(opts, "backing_fmt") !== undefined) {
    throw new CliError(["A backing file for the target (-o backing_file) is not supported by instar convert"]);
  }
  const typed = qcow2CreateOptions(opts);
  if (!typed.ok) throw late(typed.error.message);
  const t = typed.value;
  return {
    preallocation: t.preallocation,
    qcow2: {
      clusterSize: t.clusterSize,
      // Out-of-range widths reach the planner, which words qemu's refusal.
      refcountBits: t.refcountBits,
      compat: t.version === 2 ? "0.10" : "1.1",
      extendedL2: t.extendedL2,
      lazyRefcounts: t.lazyRefcounts,
      compressionType: t.compressionType,
    },
  };
}
