// Where qemu 7.2's qcow2 driver ends a block-status answer (convert's
// request model): at the end of an L2 table (qcow2_get_host_offset answers
// within one L2 slice, a whole table by default), which maps half as much
// with extended L2's 16-byte entries; runs of subclusters alike. Left out:
// an external data file (map does not attach it, so its holes would not
// answer) and an encrypted image (qemu reports no host offsets for it, so
// its runs are not the map guest's).
import type { DecodedImage, StatusLayer } from "../types.ts";

export function qcow2StatusLayer(img: DecodedImage): StatusLayer | undefined {
  const q = img.qcow2;
  if (!q || q.hasDataFileBit || q.layout.cryptMethod !== 0) return undefined;
  const entryBits = q.extendedL2 ? 4 : 3;
  return { extents: [{ start: 0n, span: 1n << BigInt(2 * q.clusterBits - entryBits) }] };
}
