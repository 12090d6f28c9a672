// The map guest's runs (lib/chain/map_runs.ts) for the commands that report
// its failure as their own one-line error (commit, convert -n -O qcow2).
import type { GuestInput } from "../vmm/guest.ts";
import { type MapRun, mapRuns as chainMapRuns, MapRunsError } from "../chain/map_runs.ts";
import { CliError } from "./messages.ts";

/** lib/chain/map_runs.ts mapRuns, a failure as a CliError. */
export async function mapRuns(inputs: GuestInput[], what: string): Promise<MapRun[]> {
  try {
    return await chainMapRuns(inputs, what);
  } catch (e) {
    if (e instanceof MapRunsError) throw new CliError([e.message]);
    throw e;
  }
}
