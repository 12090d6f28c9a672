// amend -o refcount_bits=N of a qcow2 image: the guest's resize_scan
// (refcount table and runs), the pure planner (refcount_order_plan.ts), the
// header switched between the new structures and the freeing of the old
// ones, all through the command's host. Nothing is written unless every
// check passed.
import { formats, guestErrors, records } from "../../abi/spec.ts";
import type { DecodedImage, ResizeHost } from "../types.ts";
import { qcow2ErrorMessage } from "./errors.ts";
import { GuestResultError } from "./model.ts";
import { decodeScan } from "./resize.ts";
import { planRefcountOrder, type WalkSizes } from "./refcount_order_plan.ts";
import { type BitmapsExt, planHeaderRewrite } from "./rebase_plan.ts";
import type { Qcow2ResizeScan } from "./resize_plan.ts";

/** Changes the refcount width; returns (alloc walks, old table entries) for qemu's progress. */
export async function qcow2ChangeRefcountOrder(
  filename: string,
  image: DecodedImage & { fileSize: bigint },
  host: ResizeHost,
  order: number,
  /** The bitmaps extension the rewritten header carries (lib/formats/qcow2/rebase_plan.ts). */
  bitmaps?: BitmapsExt,
): Promise<{ allocWalks: number; oldTableEntries: bigint; walks: WalkSizes[]; writeEntries: bigint }> {
  const q = image.qcow2!;
  const result = await host.scan(formats.QCOW2, [q.virtualSize, 0n]);
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    const code = f.code as number;
    if (code === guestErrors.INTERNAL) {
      if (Number(f.a0) === 1) throw host.fail(["Image is corrupt (unaligned refblock offset)"]);
      throw host.refuse("metadata check failed (the image is corrupt)");
    }
    const msg = qcow2ErrorMessage({ code, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint });
    throw host.fail([`Could not open '${filename}': ${msg}`]);
  }
  if (result.guestStatus !== 0n) {
    throw host.refuse("sandbox failure: guest reported an error without a reason");
  }
  let scan: Qcow2ResizeScan;
  try {
    scan = decodeScan(result.records, result.fileSize);
  } catch (e) {
    if (e instanceof GuestResultError) throw host.refuse(`sandbox failure: ${e.message}`);
    throw e;
  }
  if (scan.fileSize !== image.fileSize) throw host.refuse("the file changed while it was being read");
  const cs = 1n << BigInt(scan.clusterBits);
  const protect = [{ start: scan.l1Offset, count: BigInt(scan.l1Size) * 8n }];
  for (const v of scan.l1.values()) protect.push({ start: v & 0x00fffffffffffe00n, count: cs });
  const plan = planRefcountOrder({ ...scan, protect }, order);
  if (plan.kind === "error") throw host.fail([plan.message]);
  if (plan.kind === "refuse") throw host.refuse(plan.why);
  const end = plan.before[0].fileSize;
  const header = planHeaderRewrite({
    ...q,
    refcountBits: 1 << order,
    layout: {
      ...q.layout,
      refcountTableOffset: plan.reftableOffset,
      refcountTableClusters: plan.reftableClusters,
    },
  }, {
    version: q.version,
    lazyRefcounts: q.lazyRefcounts,
    backingFile: q.backingFile,
    backingFormat: q.backingFormat,
    bitmaps,
  }, end);
  if (!header.ok) {
    if (header.error.kind === "unsupported") throw host.refuse(header.error.message);
    throw host.fail([`Failed to update the qcow2 header: ${header.error.message}`]);
  }
  await host.applySteps(
    [...plan.before, { ...header.value, fileSize: end }, ...plan.after],
    "Error while amending options",
    "write",
  );
  return {
    allocWalks: plan.allocWalks,
    oldTableEntries: plan.oldTableEntries,
    walks: plan.walks,
    writeEntries: plan.writeEntries,
  };
}
