// The synthetic qcow2 layout the in-place writer fuzz targets build
// (write_planner, empty_planner): header at 0, the refcount table in
// cluster 1 naming one refcount block in cluster 2, the L1 table at
// cluster 3. The scan the planners take of it, and its refcounts as runs.
import type { Qcow2ResizeScan, RefRun } from "../../lib/formats/qcow2/resize_plan.ts";

/** Host clusters 0..clusters-1 as runs of equal refcounts. */
export function refRuns(clusters: bigint, refOf: (h: bigint) => bigint): RefRun[] {
  const runs: RefRun[] = [];
  for (let h = 0n; h < clusters; h++) {
    const r = refOf(h);
    const last = runs[runs.length - 1];
    if (last && last.refcount === r && last.start + last.count === h) last.count++;
    else runs.push({ start: h, count: 1n, refcount: r });
  }
  return runs;
}

/** The scan of the layout: `clusters` host clusters, the L1 table with `l1Size` entries. */
export function layoutScan(x: {
  clusterBits: number;
  refcountOrder: number;
  virtualSize: bigint;
  clusters: bigint;
  l1Size: number;
  l1: Qcow2ResizeScan["l1"];
  runs: RefRun[];
  hasBacking: boolean;
  compressed: Qcow2ResizeScan["compressed"];
}): Qcow2ResizeScan {
  const cs = 1n << BigInt(x.clusterBits);
  return {
    clusterBits: x.clusterBits,
    refcountOrder: x.refcountOrder,
    extendedL2: false,
    virtualSize: x.virtualSize,
    fileSize: x.clusters * cs,
    l1Offset: 3n * cs,
    l1Size: x.l1Size,
    l1: x.l1,
    reftableOffset: cs,
    reftableClusters: 1,
    reftable: new Map([[0, 2n * cs]]),
    runs: x.runs,
    frees: [],
    zeros: [],
    hasBacking: x.hasBacking,
    compressed: x.compressed,
  };
}
