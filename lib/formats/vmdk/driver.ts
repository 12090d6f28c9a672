// The vmdk row of the format table: decode of the guest's records
// (guest/vmdk, lib/formats/vmdk/model.ts), qemu's open-error texts, create
// through the pure planner, instar's size estimate for measure -O vmdk,
// convert -O vmdk through the output planner (output_plan.ts).
import { formats, guestErrors, nameKinds, records } from "../../abi/spec.ts";
import { nameBytes } from "../../abi/records.ts";
import type { DecodedImage, FormatDriver } from "../types.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { vmdkModel } from "./model.ts";
import { vmdkErrorText } from "./errors.ts";
import { CreateError } from "../types.ts";
import { estimateMeasure } from "../estimate.ts";
import { VMDK_CREATE_OPTS, VMDK_OWN, vmdkCreateOptions, vmdkEntropy } from "./options.ts";
import { planVmdkCreate } from "./create_plan.ts";
import { vmdkMeasure } from "./measure.ts";
import { vmdkOutput } from "./output_plan.ts";
import { vmdkResize } from "./resize.ts";
import { fail } from "../plan.ts";
import { optGet } from "../options.ts";
import { vmdkStatusLayer } from "./block_status.ts";

export const vmdkDriver: FormatDriver = {
  name: "vmdk",
  code: formats.VMDK,
  statusLayer: vmdkStatusLayer,
  decode(recs, input): DecodedImage {
    const m = vmdkModel(recs, input);
    const hint = recs.find((r) =>
      r.type === records.NAME && r.fields.input === input && r.fields.kind === nameKinds.BACKING_FILE
    );
    return {
      virtualSize: m.virtualSize,
      length: m.virtualSize,
      clusterSize: m.clusterSize > 0n ? m.clusterSize : undefined,
      dirty: false,
      // parentFileNameHint: info prints it (qemu's backing format is vmdk); it is never followed
      backingFile: hint ? nameBytes(hint) : undefined,
      backingFormat: hint ? "vmdk" : undefined,
      namesDataFile: false,
      vmdk: m.vmdk,
    };
  },
  check: true,
  openError(e, quoted, filename, inputNames) {
    if (e.code !== guestErrors.FORMAT) return qcow2ErrorMessage(e, []);
    return vmdkErrorText(e.a0, e.a1, e.a2, quoted[quoted.length - 1], filename, inputNames);
  },
  create: {
    options: VMDK_CREATE_OPTS,
    own: VMDK_OWN,
    async run(filename, opts, host) {
      // vmdk checks its options before it creates the file.
      const plan = planVmdkCreate(vmdkCreateOptions(opts, filename), vmdkEntropy());
      if (!plan.ok) throw new CreateError(plan.error.message);
      await host.createFile();
      await host.applyPlan(plan.value);
    },
  },
  resize: vmdkResize,
  measureEstimate: true,
  measure: estimateMeasure((opts, alloc) => vmdkMeasure(vmdkCreateOptions(opts, "measure.vmdk"), alloc)),
  convertTarget: {
    spec(opts, target) {
      const out = vmdkOutput(vmdkCreateOptions(opts, target), vmdkEntropy());
      if (!out.ok) return out;
      // The file layer's preallocation, checked after vmdk's own options
      // when qemu creates the first file; it changes no content.
      const prealloc = optGet(opts, "preallocation")?.str ?? "off";
      if (prealloc === "metadata") return fail("invalid_option", "Unsupported preallocation mode: metadata");
      if (!["off", "falloc", "full"].includes(prealloc)) {
        return fail("invalid_option", `invalid parameter value: ${prealloc}`);
      }
      return out;
    },
  },
};
