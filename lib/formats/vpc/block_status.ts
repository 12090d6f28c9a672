// Where qemu 7.2's vpc driver ends a block-status answer (convert's request
// model): in a dynamic (or differencing: its parent is not opened) disk an
// allocated block is one answer (a sector bitmap lies between blocks) and
// unallocated blocks run on as one zero answer; a fixed disk answers the
// whole request, recursed into the file (its holes and data cut it).
import type { DecodedImage, StatusLayer } from "../types.ts";

export function vpcStatusLayer(img: DecodedImage): StatusLayer | undefined {
  const bs = img.clusterSize; // the block size; undefined for a fixed disk
  if (bs === undefined) return { extents: [] };
  return bs > 0n ? { extents: [{ start: 0n, span: bs }], dataOnly: true } : undefined;
}
