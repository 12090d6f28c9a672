// Where each layer of a convert source answers qemu's block status, and the
// source's src_alignment, for the request model (convert_requests.ts): from
// what the open already decoded (the guest's records, re-checked by each
// format's model), never from image bytes. qemu 7.2's drivers:
//   raw: file-posix's runs (the file's data and holes), no limit of its own;
//   qcow2: up to the end of an L2 table (qcow2_get_host_offset: of its L2
//     slice, a whole table by default; 16-byte entries with extended L2),
//     runs of subclusters alike (the map guest's runs, which end where host
//     offsets stop being contiguous; an encrypted image reports none, so
//     its runs are not these: left out, as instar reads no encrypted
//     source into a qcow2 target);
//   vmdk: one grain per answer (vmdk_co_block_status: the rest of the grain,
//     a flat extent is one grain; io.c recurses into a flat extent's file),
//     never past its extent;
//   vpc dynamic: an allocated block is one answer (a bitmap lies between
//     blocks), unallocated blocks run on as one zero answer;
//   vpc fixed: the whole request, recursed into the file (its holes);
//   vhdx: no block_status, io.c answers the whole request as data.
// src_alignment (img_convert): the top's request alignment (512 for these)
// or bdrv_get_info's cluster_size when larger: qcow2's cluster, a dynamic
// VHD's and a VHDX's block, a sparse vmdk's grain (of extent 0; none when
// the extents differ in kind or grain: -ENOTSUP).
import type { DecodedImage } from "../formats/types.ts";
import type { StatusLayer } from "./convert_requests.ts";

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
    const l = statusLayer(x);
    if (!l) return undefined;
    layers.push(l);
  }
  const cs = chain[0].clusterSize;
  return { layers, srcAlign: cs !== undefined && cs > 512n ? cs : 512n };
}

function statusLayer(x: SourceLayer): StatusLayer | undefined {
  switch (x.format) {
    case "raw":
      return { extents: [] };
    case "qcow2": {
      const q = x.qcow2;
      // An external data file: map does not attach it (its holes would answer).
      if (!q || q.hasDataFileBit || q.layout.cryptMethod !== 0) return undefined;
      const entryBits = q.extendedL2 ? 4 : 3;
      return { extents: [{ start: 0n, span: 1n << BigInt(2 * q.clusterBits - entryBits) }] };
    }
    case "vhdx":
      // A differencing VHDX is not opened by qemu 7.2.
      return x.backingFile === undefined ? { extents: [] } : undefined;
    case "vpc": {
      // A dynamic (or differencing: its parent is not opened) disk's block size; none for a fixed one.
      const bs = x.clusterSize;
      if (bs === undefined) return { extents: [] };
      return bs > 0n ? { extents: [{ start: 0n, span: bs }], dataOnly: true } : undefined;
    }
    case "vmdk": {
      const v = x.vmdk;
      // A parent (parentFileNameHint) is qemu's backing file; instar refuses to read such a vmdk.
      if (!v || x.backingFile !== undefined || v.extents.length === 0) return undefined;
      const extents: { start: bigint; span: bigint }[] = [];
      let at = 0n;
      for (const e of v.extents) {
        if (!e.opened || e.virtualSize <= 0n) return undefined;
        const span = e.flat ? 0n : e.clusterSize;
        if (span === undefined || (!e.flat && span <= 0n)) return undefined;
        extents.push({ start: at, span });
        at += e.virtualSize;
      }
      return at === x.virtualSize ? { extents } : undefined;
    }
  }
  return undefined;
}
