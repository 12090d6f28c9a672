// The vpc (VHD) row of the format table: create through the pure planner,
// instar's size estimate for measure -O vpc.
import type { FormatDriver } from "../types.ts";
import { CreateError } from "../types.ts";
import { estimateMeasure } from "../estimate.ts";
import { VPC_CREATE_OPTS, VPC_OWN, vpcCreateOptions, vpcEntropy } from "./options.ts";
import { planVpcCreate } from "./create_plan.ts";
import { vpcMeasure } from "./measure.ts";

export const vpcDriver: FormatDriver = {
  name: "vpc",
  create: {
    options: VPC_CREATE_OPTS,
    own: VPC_OWN,
    async run(_filename, opts, host) {
      // vpc creates (empties) the file before its own checks.
      await host.createFile();
      const plan = planVpcCreate(vpcCreateOptions(opts), vpcEntropy());
      if (!plan.ok) throw new CreateError(plan.error.message);
      await host.applyPlan(plan.value);
    },
  },
  measure: estimateMeasure((opts, alloc) => vpcMeasure(vpcCreateOptions(opts), alloc)),
};
