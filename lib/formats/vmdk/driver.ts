// The vmdk row of the format table: create through the pure planner,
// instar's size estimate for measure -O vmdk.
import type { FormatDriver } from "../types.ts";
import { CreateError } from "../types.ts";
import { estimateMeasure } from "../estimate.ts";
import { VMDK_CREATE_OPTS, VMDK_OWN, vmdkCreateOptions, vmdkEntropy } from "./options.ts";
import { planVmdkCreate } from "./create_plan.ts";
import { vmdkMeasure } from "./measure.ts";

export const vmdkDriver: FormatDriver = {
  name: "vmdk",
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
  measureEstimate: true,
  measure: estimateMeasure((opts, alloc) => vmdkMeasure(vmdkCreateOptions(opts, "measure.vmdk"), alloc)),
};
