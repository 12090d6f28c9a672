// Where qemu 7.2's vmdk driver ends a block-status answer (convert's request
// model): one grain per answer (vmdk_co_block_status answers the rest of the
// grain; a flat extent is one grain, and io.c recurses into its file, whose
// holes and data cut it), never past its extent. A parent
// (parentFileNameHint) is qemu's backing file; instar refuses to read such
// a vmdk, so the model stops there.
import type { DecodedImage, StatusLayer } from "../types.ts";

export function vmdkStatusLayer(img: DecodedImage): StatusLayer | undefined {
  const v = img.vmdk;
  if (!v || img.backingFile !== undefined || v.extents.length === 0) return undefined;
  const extents: { start: bigint; span: bigint }[] = [];
  let at = 0n;
  for (const e of v.extents) {
    if (!e.opened || e.virtualSize <= 0n) return undefined;
    const span = e.flat ? 0n : e.clusterSize;
    if (span === undefined || (!e.flat && span <= 0n)) return undefined;
    extents.push({ start: at, span });
    at += e.virtualSize;
  }
  return at === img.virtualSize ? { extents } : undefined;
}
