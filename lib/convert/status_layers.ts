// Where each layer of a convert source answers qemu's block status, and the
// source's src_alignment, for the request model (convert_requests.ts): each
// format's driver says where its answers end (FormatDriver.statusLayer, in
// lib/formats/<fmt>/), from what the open already decoded (the guest's
// records, re-checked by each format's model), never from image bytes.
// src_alignment (img_convert): the top's request alignment (512 for these)
// or bdrv_get_info's cluster_size when larger: qcow2's cluster, a dynamic
// VHD's and a VHDX's block, a sparse vmdk's grain (of extent 0; none when
// the extents differ in kind or grain: -ENOTSUP).
import { driverFor } from "../formats/mod.ts";
import type { DecodedImage, StatusLayer } from "../formats/types.ts";

/** One opened layer: its format name and what its open decoded. */
export type SourceLayer = DecodedImage & { format: string };

export interface SourceStatus {
  layers: StatusLayer[];
  /** src_alignment in bytes. */
  srcAlign: bigint;
}

/** The chain's status layers (top first) and src_alignment; undefined where the model does not reach. */
export function statusLayers(chain: SourceLayer[]): SourceStatus | undefined {
  if (chain.length === 0) return undefined;
  const layers: StatusLayer[] = [];
  for (const x of chain) {
    const l = driverFor(x.format)?.statusLayer?.(x);
    if (!l) return undefined;
    layers.push(l);
  }
  const cs = chain[0].clusterSize;
  return { layers, srcAlign: cs !== undefined && cs > 512n ? cs : 512n };
}
