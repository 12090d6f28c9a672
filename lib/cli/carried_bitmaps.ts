// Whether a header rewrite (rebase, amend) can carry a qcow2 image's
// bitmaps extension as it is, and the extension to carry: read by the
// bitmap scan, checked against the header's count and the bitmaps' flags.
import type { OpenedImage } from "./image.ts";
import { decodeBitmapScanOrRefuse, scanBitmaps } from "./scan_bitmaps.ts";
import { bitmapsCarriable, type BitmapsExt } from "../formats/qcow2/rebase_plan.ts";
import { BME_FLAG_AUTO, BME_FLAG_IN_USE } from "../formats/qcow2/bitmap_plan.ts";

/**
 * The bitmaps extension of `img` for a header rewrite that carries it
 * (rebase, amend: lib/formats/qcow2/rebase_plan.ts), read by the bitmap
 * scan; undefined when the image has no bitmaps or they cannot be carried
 * (a stale extension, a bitmap in use, or with `disabledOnly` an enabled
 * one): the planner then refuses.
 */
export async function carriedBitmaps(
  img: OpenedImage,
  disabledOnly: boolean,
): Promise<BitmapsExt | undefined> {
  const q = img.qcow2;
  if (!q || !bitmapsCarriable(q)) return undefined;
  const s = decodeBitmapScanOrRefuse(await scanBitmaps(img), img);
  const bad = BME_FLAG_IN_USE | (disabledOnly ? BME_FLAG_AUTO : 0);
  if (s.bitmaps.length !== q.nbBitmaps || s.bitmaps.some((b) => (b.flags & bad) !== 0)) return undefined;
  return { nb: s.bitmaps.length, dirSize: s.dirSize, dirOffset: s.dirOffset };
}
