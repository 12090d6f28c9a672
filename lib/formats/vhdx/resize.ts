// vhdx's resize (qemu-img 7.2 refuses it: "Image format driver does not
// support resize"; instar's own). The guest's scan (guest/vhdx/resize_scan.c)
// sends the active header, its sequence number and the BAT and metadata
// facts; the pure planner (resize_plan.ts) refuses what it cannot do in
// place (a sequence number it cannot increment twice, a shrink over
// allocated blocks) and plans the writes, each applied and synced in the
// spec's order: new BAT entries (or a moved BAT region and the region
// table pointing at it), the inactive header, the active one, then the
// virtual disk size item.
import { formats, guestErrors, records, resizeBlobs, resizeMetaFlags } from "../../abi/spec.ts";
import type { ResizeHost, ResizeJob, ResizeSupport } from "../types.ts";
import { planFromScan, type ResizeMeta } from "../resize_meta.ts";
import { vhdxErrorText } from "./errors.ts";
import { planVhdxResize, type VhdxResizeSummary } from "./resize_plan.ts";
import { vhdxErrors } from "./errors.ts";

/** The scan's records as the planner's input (values bounded by the planner too). */
export function vhdxResizeSummary(m: ResizeMeta, fileSize: bigint): VhdxResizeSummary | string {
  const header = m.blobs.get(resizeBlobs.VHDX_HEADER);
  const regionTable = m.blobs.get(resizeBlobs.VHDX_REGION_TABLE);
  if (!header || !regionTable || m.blobs.size !== 2) return "sandbox failure: the scan sent no header";
  // The header the guest chose must carry the sequence number it reported.
  if (new DataView(header.buffer, header.byteOffset).getBigUint64(8, true) !== m.sequence) {
    return "sandbox failure: header sequence number mismatch";
  }
  const bs = m.blockSize;
  if (bs === 0n || m.allocEnd > (m.virtualSize + bs - 1n) / bs) {
    return "sandbox failure: BAT facts out of range";
  }
  return {
    sequenceNumber: m.sequence,
    activeHeader: (m.flags & resizeMetaFlags.VHDX_HEADER2) !== 0 ? 2 : 1,
    header,
    blockSize: bs,
    virtualSize: m.virtualSize,
    batOffset: m.batOffset,
    batLength: m.batCapacity,
    virtualSizeItemOffset: m.itemOffset,
    logGuidZero: (m.flags & resizeMetaFlags.VHDX_LOG_GUID_ZERO) !== 0,
    fileSize,
    allocatedBlocks: m.allocEnd,
    regionTable,
    batEntry: m.batEntry,
  };
}

export const vhdxResize: ResizeSupport = {
  async run(job: ResizeJob, host: ResizeHost) {
    if (job.preallocation !== "off") {
      throw host.refuse("instar does not preallocate when resizing vhdx images");
    }
    const result = await host.scan(formats.VHDX, [job.newSize, 0n]);
    const err = result.records.find((r) => r.type === records.ERROR);
    if (err) {
      const f = err.fields;
      if (f.code === guestErrors.FORMAT && BigInt(f.a0 as bigint) === BigInt(vhdxErrors.LOG_REPLAY)) {
        throw host.refuse("the image has a log that needs to be replayed; instar does not resize it");
      }
      if (f.code === guestErrors.FORMAT) {
        const text = vhdxErrorText(f.a0 as bigint, f.a1 as bigint, f.a2 as bigint, job.filename);
        throw host.fail([`Could not open '${job.filename}': ${text}`]);
      }
      throw host.refuse("metadata check failed");
    }
    const { plan } = planFromScan(result, host, job, formats.VHDX, vhdxResizeSummary, planVhdxResize);
    // One step per patch: each is synced before the next starts.
    const steps = plan.patches.map((p) => ({ patches: [p], fileSize: plan.fileSize }));
    await host.applySteps(steps, "Could not resize image", "write");
  },
};
