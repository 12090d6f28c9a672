// vpc's resize (qemu-img 7.2 refuses it: "Image format driver does not
// support resize"; instar's own). The guest's scan (guest/vpc/resize_scan.c)
// sends the footer, the dynamic header and the BAT facts; the pure planner
// (resize_plan.ts) plans the writes; the steps are ordered so that a crash
// between them leaves an image qemu still opens (docs/resize.md).
import { formats, guestErrors, records, resizeBlobs, resizeMetaFlags } from "../../abi/spec.ts";
import type { FilePlan } from "../plan.ts";
import type { ResizeHost, ResizeJob, ResizeSupport } from "../types.ts";
import { planFromScan, type ResizeMeta } from "../resize_meta.ts";
import { vpcErrorText } from "./errors.ts";
import { planVpcResize, type VpcResizeSummary } from "./resize_plan.ts";

/** The scan's records as the planner's input (values bounded by the planner too). */
export function vpcResizeSummary(m: ResizeMeta, fileSize: bigint): VpcResizeSummary | string {
  const footer = m.blobs.get(resizeBlobs.VPC_FOOTER);
  if (!footer) return "sandbox failure: the scan sent no footer";
  const dynamic = (m.flags & resizeMetaFlags.VPC_DYNAMIC) !== 0;
  if (m.subformat === 4) return "instar does not resize differencing VHD images";
  if (dynamic ? m.subformat !== 3 : m.subformat !== 2) {
    return `the VHD footer's disk type ${m.subformat} does not match the image's layout`;
  }
  const dynHeader = m.blobs.get(resizeBlobs.VPC_DYNHEADER) ?? new Uint8Array(0);
  if (dynamic && dynHeader.length !== 1024) return "sandbox failure: the scan sent no dynamic header";
  if (m.batCapacity > 0xffffffffn || m.allocEnd > m.batCapacity) {
    return "sandbox failure: BAT facts out of range";
  }
  return {
    subformat: dynamic ? "dynamic" : "fixed",
    currentSize: m.virtualSize,
    fileSize,
    maxTableEntries: m.batCapacity,
    batOffset: m.batOffset,
    footer,
    dynHeader,
    blockSize: dynamic ? m.blockSize : undefined,
    allocatedBlocks: dynamic ? m.allocEnd : undefined,
  };
}

/** Crash order: data-area writes first, the footer qemu reads last. */
export function vpcSteps(plan: FilePlan, s: VpcResizeSummary): FilePlan[] {
  const oldEnd = s.fileSize;
  if (s.subformat === "fixed") {
    // Growing: the new footer at the new end first (qemu reads the last
    // sector), then the old one zeroed. Shrinking: one step (the new footer,
    // then the cut).
    const grow = plan.fileSize > oldEnd;
    if (!grow) return [plan];
    const past = plan.patches.filter((p) => p.offset >= oldEnd);
    const inside = plan.patches.filter((p) => p.offset < oldEnd);
    return [{ patches: past, fileSize: plan.fileSize }, { patches: inside, fileSize: plan.fileSize }];
  }
  // Dynamic: first what lies past the old end (a moved BAT and the new
  // trailing footer), synced before anything points at it; then the BAT
  // entries, the dynamic header and the trailing footer copy inside the old
  // file (a larger max_table_entries is harmless with the old size); the
  // footer at offset 0 (what qemu opens) last.
  const past = plan.patches.filter((p) => p.offset >= oldEnd);
  const rest = plan.patches.filter((p) => p.offset !== 0n && p.offset < oldEnd);
  const head = plan.patches.filter((p) => p.offset === 0n);
  return [past, rest, head].filter((ps) => ps.length > 0).map((patches) => ({
    patches,
    fileSize: plan.fileSize,
  }));
}

export const vpcResize: ResizeSupport = {
  async run(job: ResizeJob, host: ResizeHost) {
    if (job.preallocation !== "off") {
      throw host.refuse("instar does not preallocate when resizing vpc images");
    }
    const result = await host.scan(formats.VPC, [job.newSize, 0n]);
    const err = result.records.find((r) => r.type === records.ERROR);
    if (err) {
      const f = err.fields;
      const text = f.code === guestErrors.FORMAT
        ? vpcErrorText(f.a0 as bigint, f.a1 as bigint, f.a2 as bigint, job.filename)
        : undefined;
      if (text !== undefined) throw host.fail([`Could not open '${job.filename}': ${text}`]);
      throw host.refuse("metadata check failed");
    }
    const { summary: s, plan } = planFromScan(
      result,
      host,
      job,
      formats.VPC,
      vpcResizeSummary,
      planVpcResize,
    );
    await host.applySteps(vpcSteps(plan, s), "Could not resize image", "write");
  },
};
