// The bitmap_scan guest's records (guest/qcow2/bitmap_scan.c) as the bitmap
// planner's input, every count and bound re-checked: the directory entries
// with their data clusters, and the refcounts as the resize scan reports
// them (decodeScan).
import { limits, records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { GuestResultError, qcow2Model } from "./model.ts";
import { decodeScan } from "./resize.ts";
import { type BitmapScanDir, MAX_BITMAP_CLUSTERS, type Qcow2BitmapScan } from "./bitmap_plan.ts";

export function decodeBitmapScan(recs: Rec[], fileSize: bigint): Qcow2BitmapScan {
  const model = qcow2Model(recs, 0);
  const refs = decodeScan(recs, fileSize);
  const bitmaps: BitmapScanDir[] = [];
  let dirOffset = 0n, dirSize = 0n, entries = 0n;
  for (const r of recs) {
    const f = r.fields;
    if (r.type === records.BITMAP_DIR) {
      const n = f.name_len as number;
      if (n > limits.NAME_MAX - 1) throw new GuestResultError("bitmap name too long");
      if ((f.index as number) !== bitmaps.length) throw new GuestResultError("bitmap directory out of order");
      if (bitmaps.length > 0 && (f.dir_offset !== dirOffset || f.dir_size !== dirSize)) {
        throw new GuestResultError("bitmap directory position differs between entries");
      }
      dirOffset = f.dir_offset as bigint;
      dirSize = f.dir_size as bigint;
      bitmaps.push({
        name: (f.name as Uint8Array).slice(0, n),
        flags: f.flags as number,
        granularityBits: f.granularity_bits as number,
        tableOffset: f.table_offset as bigint,
        tableSize: BigInt(f.table_size as number),
        state: f.state as number,
        entries: [],
      });
    } else if (r.type === records.BITMAP_ENTRY) {
      const b = bitmaps[bitmaps.length - 1];
      if (!b || (f.bitmap as number) !== bitmaps.length - 1) {
        throw new GuestResultError("bitmap entry out of place");
      }
      if (++entries > MAX_BITMAP_CLUSTERS) throw new GuestResultError("too many bitmap entries");
      b.entries.push({
        index: f.index as bigint,
        value: f.value as bigint,
        nonzero: (f.nonzero as number) !== 0,
      });
    } else if (r.type === records.BITMAP_CUT) {
      // Only right after the entry it is about, and only one per entry; never
      // an all-ones entry (value 1: no data cluster to cut; bitmap_tail.ts
      // gives those their own cut and keeps any other as it came).
      const b = bitmaps[bitmaps.length - 1];
      const e = b?.entries[b.entries.length - 1];
      const keep = f.keep as bigint, partial = f.partial as number;
      if (
        !e || e.cut || (f.bitmap as number) !== bitmaps.length - 1 || f.index !== e.index || !e.nonzero ||
        e.value === 1n ||
        partial > 1 || keep >= model.clusterSize || (partial === 0 && keep === 0n)
      ) {
        throw new GuestResultError("bitmap cut out of place");
      }
      e.cut = { keep, byte: partial ? (f.byte as number) : undefined };
    }
  }
  if (bitmaps.length !== model.nbBitmaps) {
    throw new GuestResultError("bitmap count differs from the header's");
  }
  return {
    model,
    fileSize,
    reftableOffset: refs.reftableOffset,
    reftableClusters: BigInt(refs.reftableClusters),
    reftable: refs.reftable,
    runs: refs.runs,
    dirOffset,
    dirSize,
    bitmaps,
  };
}
