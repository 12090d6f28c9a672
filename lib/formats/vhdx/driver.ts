// The vhdx row of the format table: create through the pure planner,
// instar's size estimate for measure -O vhdx.
import type { FormatDriver } from "../types.ts";
import { CreateError } from "../types.ts";
import { estimateMeasure } from "../estimate.ts";
import { VHDX_CREATE_OPTS, VHDX_OWN, vhdxCreateOptions, vhdxEntropy } from "./options.ts";
import { planVhdxCreate } from "./create_plan.ts";
import { vhdxMeasure } from "./measure.ts";

export const vhdxDriver: FormatDriver = {
  name: "vhdx",
  create: {
    options: VHDX_CREATE_OPTS,
    own: VHDX_OWN,
    async run(_filename, opts, host) {
      // vhdx creates (empties) the file before its own checks.
      await host.createFile();
      const plan = planVhdxCreate(vhdxCreateOptions(opts), vhdxEntropy());
      if (!plan.ok) throw new CreateError(plan.error.message);
      await host.applyPlan(plan.value);
    },
  },
  measure: estimateMeasure((opts, alloc) => vhdxMeasure(vhdxCreateOptions(opts), alloc)),
};
