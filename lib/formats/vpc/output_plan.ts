// The VHD output planner for `instar convert -O vpc`. The guest writes the
// data; this planner writes every piece of metadata, from the create
// planner's encoders:
//
//   dynamic: footer copy at 0, dynamic header at 512, BAT at 1536 (whole
//            sectors), then the slots the guest packed in guest order (each
//            a 512-byte sector bitmap, all 0xFF, which the guest writes,
//            then the 2 MiB block), then the footer. The BAT points each
//            block that holds data at its slot; the others stay 0xFFFFFFFF.
//            This is the layout qemu's vpc produces when blocks are written
//            in guest order, as qemu-img convert writes them.
//   fixed:   the data at 0 (the guest writes it in place), the footer at the
//            virtual size (CHS-rounded unless force_size=on).
import { fail, type FilePlan, ok, type PlanResult } from "../plan.ts";
import type { BlockOutput, BlockRun } from "../types.ts";
import { checkBlockRuns } from "../block_output.ts";
import {
  encodeVpcDynHeader,
  encodeVpcFooter,
  planVpcCreate,
  VPC_BAT_OFFSET,
  VPC_BLOCK_SIZE,
  VPC_FOOTER_SIZE,
  vpcBatBytes,
  type VpcCreateOptions,
  type VpcEntropy,
} from "./create_plan.ts";
import { VPC_BLOCK_COST } from "./measure.ts";

const VPC_TOO_LARGE_CREATE = "The image size is too large for file format 'vpc'";

/** The block output for a VHD of `opts` (its size is the source's), or qemu's refusal. */
export function vpcOutput(opts: VpcCreateOptions, entropy: VpcEntropy): PlanResult<BlockOutput> {
  const plan = planVpcCreate(opts, entropy);
  if (!plan.ok) {
    // qemu-img create words vpc's -EFBIG itself; convert prints vpc_co_create's own text.
    if (plan.error.message === VPC_TOO_LARGE_CREATE) {
      return fail(plan.error.kind, "Disk size is too large, max size is 2040 GiB");
    }
    return plan;
  }
  const p = plan.value;
  const size = p.virtualSize;
  const dynamic = p.subformat === "dynamic";
  const footer = encodeVpcFooter({
    forceSize: opts.forceSize ?? false,
    dynamic,
    size,
    cylinders: p.cylinders,
    heads: p.heads,
    spc: p.sectorsPerCylinder,
    entropy,
  });
  if (!dynamic) {
    return ok({
      placement: "inplace",
      blockSize: VPC_BLOCK_SIZE,
      slotPrefix: 0n,
      dataStart: 0n,
      cap: size,
      finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan> {
        if (runs.length > 0 || dataEnd < 0n || dataEnd > size) {
          return fail("invalid_size", `Data end ${dataEnd} passes the disk size ${size}`);
        }
        return ok({
          patches: [{ kind: "write", offset: size, bytes: footer }],
          fileSize: size + BigInt(VPC_FOOTER_SIZE),
        });
      },
    });
  }
  const entries = p.batEntries;
  const batBytes = vpcBatBytes(entries);
  const dataStart = VPC_BAT_OFFSET + batBytes;
  const stride = VPC_BLOCK_COST;
  return ok({
    placement: "slots",
    blockSize: VPC_BLOCK_SIZE,
    slotPrefix: stride - VPC_BLOCK_SIZE,
    dataStart,
    cap: dataStart + entries * stride,
    finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan> {
      const checked = checkBlockRuns(runs, entries, dataStart, dataEnd, stride, 512n);
      if (!checked.ok) return checked;
      // BAT entries are 32-bit sector numbers: below 2040 GiB of disk the
      // slots stay under 2^32 sectors; checked anyway.
      if ((dataEnd - stride) / 512n > 0xfffffffen && dataEnd > dataStart) {
        return fail("invalid_size", "The image's blocks lie past what a VHD BAT can address");
      }
      const bat = new Uint8Array(Number(batBytes)).fill(0xff);
      const view = new DataView(bat.buffer);
      for (const r of checked.value) {
        for (let i = 0n; i < r.count; i++) {
          view.setUint32(Number(r.block + i) * 4, Number((r.slot + i * stride) / 512n));
        }
      }
      const patches: FilePlan["patches"] = [
        { kind: "write", offset: 0n, bytes: footer },
        { kind: "write", offset: 512n, bytes: encodeVpcDynHeader(entries) },
      ];
      if (bat.length > 0) patches.push({ kind: "write", offset: VPC_BAT_OFFSET, bytes: bat });
      patches.push({ kind: "write", offset: dataEnd, bytes: footer.slice() });
      return ok({ patches, fileSize: dataEnd + BigInt(VPC_FOOTER_SIZE) });
    },
  });
}
