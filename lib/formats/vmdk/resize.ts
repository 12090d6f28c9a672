// vmdk's resize (qemu-img 7.2 refuses it: "Image format driver does not
// support resize"; instar's own). Only a single-file hosted VMDK4 sparse
// image (monolithicSparse, streamOptimized as qemu writes it: the grain
// directory in the header, no footer) is resized; the guest's scan
// (guest/vmdk/resize_scan.c) sends the header sector, the embedded
// descriptor and the grain facts, checked here against the header bytes;
// the pure planner (resize_plan.ts) rewrites the header's capacity and the
// descriptor's extent size and cylinder count. No grain moves: a grow past
// the grain tables qemu allocated at create time builds new directories and
// tables at the end of the file; a shrink cuts only grains without data.
//
// Crash order (vmdkSteps, each step synced): new tables past the old end,
// the descriptor, the header's directory offsets, its capacity (the one
// field qemu reads the size from) last. An interruption leaves qemu the
// old size or the new one (the descriptor's extent size is what libvmdk
// reports; qemu ignores it for a sparse file).
import { formats, guestErrors, nameKinds, records, resizeBlobs, resizeMetaFlags } from "../../abi/spec.ts";
import { nameBytes } from "../../abi/records.ts";
import type { FilePlan } from "../plan.ts";
import type { ResizeHost, ResizeJob, ResizeSupport } from "../types.ts";
import { planFromScan, type ResizeMeta } from "../resize_meta.ts";
import { vmdkErrorText } from "./errors.ts";
import { planVmdkResize, type VmdkResizeSummary } from "./resize_plan.ts";

const KDMV = 0x4b444d56;
const GD_AT_END = (1n << 64n) - 1n;
const VMDK4 = 1;

/** The scan's records as the planner's input (values bounded by the planner too). */
export function vmdkResizeSummary(m: ResizeMeta, fileSize: bigint): VmdkResizeSummary | string {
  const single = "instar resizes only single-file sparse VMDK images (monolithicSparse, streamOptimized)";
  if ((m.flags & resizeMetaFlags.VMDK_DESCRIPTOR) !== 0) return single;
  if ((m.flags & resizeMetaFlags.VMDK_HOSTED) === 0 || m.batEntry !== 1 || m.subformat !== VMDK4) {
    return single;
  }
  if ((m.flags & resizeMetaFlags.VMDK_PARENT) !== 0) {
    return "instar does not resize VMDK images with a parent";
  }
  if ((m.flags & resizeMetaFlags.VMDK_GD_AT_END) !== 0) {
    return "instar does not resize a VMDK whose grain directory is in a footer";
  }
  const h = m.blobs.get(resizeBlobs.VMDK_HEADER);
  if (!h || h.length !== 512) return "sandbox failure: the scan sent no VMDK header";
  const dv = new DataView(h.buffer, h.byteOffset, 512);
  const compressed = (m.flags & resizeMetaFlags.VMDK_COMPRESSED) !== 0;
  const capacity = dv.getBigUint64(12, true),
    granularity = dv.getBigUint64(20, true),
    descriptorOffset = dv.getBigUint64(28, true),
    descriptorSectors = dv.getBigUint64(36, true),
    gtes = BigInt(dv.getUint32(44, true)),
    gd = dv.getBigUint64(56, true),
    rgd = (dv.getUint32(8, true) & 2) !== 0 ? dv.getBigUint64(48, true) : 0n;
  // The meta record must restate the header sent (the guest opened that header).
  if (
    dv.getUint32(0) !== KDMV || gd === GD_AT_END || capacity * 512n !== m.virtualSize ||
    granularity !== m.blockSize || gtes !== m.sequence || gd * 512n !== m.batOffset ||
    (dv.getUint16(77, true) === 1) !== compressed
  ) {
    return "sandbox failure: the VMDK facts do not match the header";
  }
  if (granularity === 0n || granularity > 0x200000n || gtes === 0n || gtes > 512n) {
    return "sandbox failure: VMDK grain geometry out of range";
  }
  // The directory entries qemu reads for this capacity (vmdk_open_vmdk4).
  const span = granularity * gtes;
  if (m.batCapacity !== (capacity + span - 1n) / span) {
    return "sandbox failure: VMDK grain directory size mismatch";
  }
  const grains = (capacity + granularity - 1n) / granularity;
  if (m.allocEnd > grains) return "sandbox failure: VMDK allocated grains out of range";
  const d = m.blobs.get(resizeBlobs.VMDK_DESCRIPTOR);
  if (!d || descriptorSectors < 1n || descriptorSectors > 20n || descriptorOffset < 1n) {
    return "the VMDK's embedded descriptor is missing or larger than 20 sectors";
  }
  const area = d.subarray(0, Number(descriptorSectors) * 512);
  const nul = area.indexOf(0);
  const text = area.subarray(0, nul < 0 ? area.length : nul);
  if (text.some((b) => b >= 0x80)) return "the VMDK descriptor is not ASCII text";
  return {
    subformat: compressed ? "streamOptimized" : "monolithicSparse",
    capacity,
    granularity,
    numGtesPerGt: gtes,
    gdEntries: m.batCapacity,
    descriptorOffset,
    descriptorSectors,
    descriptor: new TextDecoder().decode(text),
    fileSize,
    allocatedGrains: m.allocEnd,
    gdOffset: gd,
    rgdOffset: rgd,
    staleTail: (m.flags & resizeMetaFlags.VMDK_TAIL_DIRTY) !== 0,
  };
}

/**
 * Crash order, each step synced: what lies past the old end (new
 * directories and grain tables, which nothing names yet), the descriptor,
 * the header's directory offsets (the new directories begin with the old
 * entries: right for the old capacity too), the header's capacity last.
 */
export function vmdkSteps(plan: FilePlan, oldEnd: bigint): FilePlan[] {
  const past = plan.patches.filter((p) => p.offset >= oldEnd);
  const desc = plan.patches.filter((p) => p.offset >= 512n && p.offset < oldEnd);
  const dirs = plan.patches.filter((p) => p.offset === 48n || p.offset === 56n);
  const cap = plan.patches.filter((p) => p.offset === 12n);
  return [past, desc, dirs, cap].filter((ps) => ps.length > 0).map((patches) => ({
    patches,
    fileSize: plan.fileSize,
  }));
}

export const vmdkResize: ResizeSupport = {
  async run(job: ResizeJob, host: ResizeHost) {
    if (job.preallocation !== "off") {
      throw host.refuse("instar does not preallocate when resizing vmdk images");
    }
    const result = await host.scan(formats.VMDK, [job.newSize, 0n]);
    const at = result.records.findIndex((r) => r.type === records.ERROR);
    if (at >= 0) {
      const f = result.records[at].fields;
      const prev = result.records[at - 1];
      const quoted = prev?.type === records.NAME && prev.fields.kind === nameKinds.ERROR_TEXT
        ? new TextDecoder().decode(nameBytes(prev))
        : undefined;
      if (f.code === guestErrors.FORMAT) {
        const text = vmdkErrorText(f.a0 as bigint, f.a1 as bigint, f.a2 as bigint, quoted, job.filename);
        throw host.fail([`Could not open '${job.filename}': ${text}`]);
      }
      throw host.refuse("metadata check failed");
    }
    const { summary, plan } = planFromScan(
      result,
      host,
      job,
      formats.VMDK,
      vmdkResizeSummary,
      planVmdkResize,
    );
    await host.applySteps(vmdkSteps(plan, summary.fileSize), "Could not resize image", "write");
  },
};
