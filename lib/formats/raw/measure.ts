// qemu-img measure -O raw (block/raw-format.c raw_measure): a raw copy
// takes the input's whole length, or --size rounded up to 512.
import { optGet, type ParsedOpts } from "../options.ts";
import { alignUp, ok, type PlanResult } from "../plan.ts";
import type { MeasureResult } from "../qcow2/measure.ts";

export function rawMeasure(o: ParsedOpts, inputLength?: bigint): PlanResult<MeasureResult> {
  const required = inputLength ?? alignUp(optGet(o, "size")?.num ?? 0n, 512n);
  return ok({ required, fullyAllocated: required });
}
