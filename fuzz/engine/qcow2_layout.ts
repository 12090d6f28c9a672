// The synthetic qcow2 layout the in-place writer fuzz targets build
// (write_planner, empty_planner): header at 0, the refcount table in
// cluster 1 naming one refcount block in cluster 2, the L1 table at
// cluster 3. The scan the planners take of it, and its refcounts as runs;
// the model the bitmap planner targets (bitmap_planner,
// resize_bitmaps_planner) take of such an image.
import type { Qcow2ResizeScan, RefRun } from "../../lib/formats/qcow2/resize_plan.ts";
import type { Qcow2Model } from "../../lib/formats/qcow2/model.ts";

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

/** The image model of the layout, `nb` bitmaps (the bitmaps extension and autoclear bit when there are any). */
export function bitmapModel(
  version: 2 | 3,
  clusterBits: number,
  refcountOrder: number,
  size: bigint,
  nb: number,
): Qcow2Model {
  return {
    version,
    virtualSize: size,
    clusterBits,
    clusterSize: 1n << BigInt(clusterBits),
    refcountBits: 1 << refcountOrder,
    compressionType: "zlib",
    dirty: false,
    corrupt: false,
    incompatibleFeatures: 0n,
    extendedL2: false,
    lazyRefcounts: false,
    hasDataFileBit: false,
    dataFileRaw: false,
    nbSnapshots: 0,
    nbBitmaps: nb,
    hasBitmapsExt: nb > 0,
    layout: {
      l1TableOffset: 3n << BigInt(clusterBits),
      l1Size: 1,
      refcountTableOffset: 1n << BigInt(clusterBits),
      refcountTableClusters: 1,
      snapshotsOffset: 0n,
      compatibleFeatures: 0n,
      autoclearFeatures: nb > 0 ? 1n : 0n,
      cryptMethod: 0,
      unknownExtension: false,
    },
  };
}
