// `convert -n -B BACKING`: what instar writes into the existing target, as
// qemu-img's target_has_backing decides it: only the byte ranges the
// source's top layer decides (lib/convert/top_ranges.ts, from the map
// guest's runs of the source chain), or the whole disk for a source without
// a backing file. Refuses what instar does not write that way.
import type { DecodedImage } from "../formats/types.ts";
import type { GuestInput } from "../vmm/guest.ts";
import { mapRuns, MapRunsError } from "../chain/map_runs.ts";
import { topRanges } from "./top_ranges.ts";
import { ConvertError } from "./errors.ts";

/** The line qemu-img reports for -n -B --target-is-zero, before it ends with status 0 having written nothing. */
export const TARGET_IS_ZERO_WITH_BACKING =
  "Cannot use --target-is-zero when the destination image has a backing file";

/**
 * The ranges [from, to) of the source that -n -B writes (undefined: the
 * whole disk). `chain` is the source chain (top first), `inputs` its guest
 * inputs (with -l, the top's input names the snapshot: qemu-img's
 * bdrv_snapshot_load_tmp makes the snapshot's L1 table the top's, so its
 * block status, and so the ranges, are the snapshot's), `size` its disk size.
 */
export async function topOfSource(
  outFmt: string,
  chain: Pick<DecodedImage, "length" | "qcow2">[],
  inputs: GuestInput[],
  size: bigint,
): Promise<[bigint, bigint][] | undefined> {
  if (outFmt !== "raw" && outFmt !== "qcow2") {
    throw new ConvertError(
      "Writing into an existing image with a backing file (-n -B) is not supported by instar convert",
    );
  }
  // A source without a backing file: bdrv_block_status_above(src, NULL), the whole disk.
  if (chain.length <= 1) return undefined;
  // Only a qcow2 top opens a backing chain today (VMDK parents are refused
  // at open; vpc and vhdx have none); another one would need its own span.
  const q = chain[0].qcow2;
  if (!q) {
    throw new ConvertError(
      "Writing into an existing image with a backing file (-n -B) is not supported by instar convert for this source",
    );
  }
  const span = topSpan(chain[0]);
  let runs;
  try {
    runs = await mapRuns(inputs, "error while reading");
  } catch (e) {
    if (e instanceof MapRunsError) throw new ConvertError(e.message);
    throw e;
  }
  return topRanges(runs, size, chain[1].length, span);
}

/** Where a qcow2 top's block status answers: one L2 table's reach (0 for another format). */
export function topSpan(top: Pick<DecodedImage, "qcow2">): bigint {
  const q = top.qcow2;
  return q ? q.clusterSize * (q.clusterSize / (q.extendedL2 ? 16n : 8n)) : 0n;
}
