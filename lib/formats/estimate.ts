// measure -O vpc|vhdx|vmdk: qemu-img 7.2 has no measure for these; instar's
// calculators give the numbers its own create planners imply. This adapts
// their (typed options, allocation summary) shape to the driver table's.
import { optSetNumber, type ParsedOpts } from "./options.ts";
import type { PlanResult } from "./plan.ts";
import type { AllocationSummary, MeasureInput, MeasureResult, SizeEstimate } from "./types.ts";

export function estimateMeasure(
  calc: (opts: ParsedOpts, alloc?: AllocationSummary) => PlanResult<SizeEstimate>,
): (opts: ParsedOpts, input?: MeasureInput) => PlanResult<MeasureResult> {
  return (opts, input) => {
    if (input) optSetNumber(opts, "size", input.virtualSize);
    const alloc = input && {
      virtualSize: input.virtualSize,
      allocatedBytes: input.extents.filter((e) => e.data && !e.zero).reduce((n, e) => n + e.length, 0n),
    };
    return calc(opts, alloc);
  };
}
