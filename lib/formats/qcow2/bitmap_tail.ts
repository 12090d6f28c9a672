// Bits set past a persistent bitmap's end, as qemu 7.2 loads and stores
// them (a bitmap another writer left so; qemu itself never sets them). Its
// load_bitmap_data deserializes whole 64-bit words (hbitmap_deserialize_part),
// so the bits past the end inside the word holding the end come into memory
// with the rest; store_bitmap_data serializes whole words again
// (hbitmap_serialization_size) and zeroes the rest of the cluster. So the
// cluster holding the end keeps its first bytes up to the end of that word,
// and is zero after; a cluster whose only set bits lie past the end is not
// stored (hbitmap_next_dirty stops at the end). This turns the scan's cut
// records (BITMAP_CUT: the bytes up to the end, and the boundary byte) into
// that word cut, for `bitmap` (its --merge ORs whole words with the same
// granularity; the guest's merge mode does, docs/bitmap.md).
// All-ones table entries (value 1) load as every bit of the entry's range
// set, whole words (hbitmap_deserialize_ones), so the word holding the end
// has its bits past the end set too; the planner stores them as a data
// cluster (ALL_ONES in bitmap_plan.ts).
import { bitmapState } from "../../abi/spec.ts";
import { ALL_ONES, type BitmapScanEntry, type Qcow2BitmapScan } from "./bitmap_plan.ts";

const KNOWN = bitmapState.TAIL_BITS | bitmapState.ALL_ONES;

/** The scan with every bitmap whose state is only TAIL_BITS and ALL_ONES as qemu holds it in memory. */
export function tailBitsAsLoaded(s: Qcow2BitmapScan): Qcow2BitmapScan {
  const cs = s.model.clusterSize, len = s.model.virtualSize & ~511n;
  return {
    ...s,
    bitmaps: s.bitmaps.map((b) => {
      if (b.state === 0 || (b.state & ~KNOWN) !== 0) return b;
      // An all-ones entry holding the end sets the bits past it in its word.
      const bits = len > 0n ? ((len - 1n) >> BigInt(b.granularityBits)) + 1n : 0n;
      const onesTail = bits % 64n !== 0n &&
        b.entries.some((e) => e.value === ALL_ONES && e.index === (bits - 1n) / (cs * 8n));
      return {
        ...b,
        state: 0,
        tail: (b.state & bitmapState.TAIL_BITS) !== 0 || onesTail,
        entries: b.entries.map((e) => {
          // The all-ones entry holding the end: ones up to the end of its word (for a
          // resize growing the image, which keeps them; the same as the store's own fill).
          if (e.value === ALL_ONES) {
            const here = bits - e.index * cs * 8n;
            const keep = ((here + 63n) / 64n) * 8n;
            return here > 0n && keep < cs ? { ...e, cut: { keep } } : e;
          }
          if (!e.cut) return e;
          // The bytes up to the end, rounded up to whole 64-bit words.
          const bytes = e.cut.keep + (e.cut.byte !== undefined ? 1n : 0n);
          const words = ((bytes + 7n) / 8n) * 8n;
          const keep = words < cs ? words : cs;
          const { cut: _, ...rest } = e;
          return keep === cs ? rest : { ...rest, cut: { keep } };
        }),
      };
    }),
  };
}

/**
 * A shrink's scan (bits judged against the new end `len`; BITMAP_CUT cuts
 * the data cluster holding it exactly) with every bitmap whose state is only
 * TAIL_BITS and ALL_ONES as qemu holds it after hbitmap_truncate: the bits
 * from the new end on cleared (those past the old end too, as long as the
 * old end's word is not the new end's: the caller refuses that), so an
 * all-ones entry past the new end is dropped and the one holding it keeps
 * its ones up to it exactly.
 */
export function shrunkAsLoaded(s: Qcow2BitmapScan, len: bigint): Qcow2BitmapScan {
  const cs = s.model.clusterSize, per = cs * 8n;
  return {
    ...s,
    bitmaps: s.bitmaps.map((b) => {
      if (b.state === 0 || (b.state & ~KNOWN) !== 0) return b;
      const bits = len > 0n ? ((len - 1n) >> BigInt(b.granularityBits)) + 1n : 0n;
      const entries: BitmapScanEntry[] = [];
      for (const e of b.entries) {
        if (e.value !== ALL_ONES) {
          entries.push(e);
          continue;
        }
        const here = bits - e.index * per;
        if (here <= 0n) continue; // cleared by the truncation, never stored
        if (here >= per) entries.push(e);
        else {entries.push({
            ...e,
            cut: { keep: here / 8n, byte: here % 8n ? (1 << Number(here % 8n)) - 1 : undefined },
          });}
      }
      return { ...b, state: 0, entries };
    }),
  };
}

/** The 64-bit word of bitmap bits holding the end of `len` bytes (-1 for none). */
export function lastWord(len: bigint, gbits: number): bigint {
  return len > 0n ? ((len - 1n) >> BigInt(gbits)) >> 6n : -1n;
}
