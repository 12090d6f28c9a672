// The map guest's extents over a chain of guest inputs (top first), checked
// to tile the disk: which layer allocates each run, and where. Shared by
// commit, convert -n -B (lib/convert/top_source.ts) and convert -n -O qcow2.
// A failure is a MapRunsError holding qemu-style words; the commands report
// it as their one-line error.
import { mapFlags, ops, records } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import type { GuestInput } from "../vmm/guest.ts";
import type { MapRun } from "../formats/qcow2/commit_plan.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";

export type { MapRun };

/** A failed map run: the message is the whole error line (`<what>: ...`);
 * `imageError` when the guest reported the failure (reading the image), not the sandbox. */
export class MapRunsError extends Error {
  constructor(message: string, readonly imageError = false) {
    super(message);
    this.name = "MapRunsError";
  }
}

/** The map guest's extents over `inputs` (a chain, top first), checked to tile the disk.
 * `flags`: the map op's flags (mapOpFlags; CRYPT_OFFSETS for an encrypted qcow2's host offsets). */
export async function mapRuns(inputs: GuestInput[], what: string, flags = 0): Promise<MapRun[]> {
  let result;
  try {
    result = await runGuest({ op: "map", opCode: ops.MAP, inputs, flags, args: [0n, (1n << 64n) - 1n] });
  } catch (e) {
    throw new MapRunsError(`${what}: sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
  }
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    throw new MapRunsError(
      `${what}: ${
        qcow2ErrorMessage({
          code: f.code as number,
          a0: f.a0 as bigint,
          a1: f.a1 as bigint,
          a2: f.a2 as bigint,
        })
      }`,
      true,
    );
  }
  // A failed run the guest gave no reason for.
  if (result.guestStatus !== 0n) throw new MapRunsError(`${what}: Input/output error`, true);
  const ALL = mapFlags.DATA | mapFlags.ZERO | mapFlags.PRESENT | mapFlags.OFFSET_VALID | mapFlags.COMPRESSED;
  const out: MapRun[] = [];
  let at = 0n;
  for (const r of result.records) {
    if (r.type !== records.MAP_EXTENT) continue;
    const x: MapRun = {
      start: r.fields.start as bigint,
      length: r.fields.length as bigint,
      offset: r.fields.offset as bigint,
      flags: r.fields.flags as number,
      depth: r.fields.depth as number,
    };
    if (x.start !== at || (x.flags & ~ALL) !== 0 || x.depth >= inputs.length || x.offset >= 1n << 63n) {
      throw new MapRunsError(`${what}: sandbox failure: inconsistent map extents`);
    }
    at += x.length;
    out.push(x);
  }
  return out;
}
