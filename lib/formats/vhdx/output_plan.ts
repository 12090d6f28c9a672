// The VHDX output planner for `instar convert -O vhdx`. The guest writes
// the data; this planner writes every piece of metadata through the create
// planner (file identifier, both headers, both region tables, metadata
// region; the log stays empty, so nothing needs replay):
//
//   dynamic: payload blocks the guest packed from the create layout's
//            dataStart on, in guest order, each block_size bytes (MiB
//            aligned). The BAT marks them FULLY_PRESENT at their offsets;
//            the other blocks are ZERO (block_state_zero=on, qemu's default)
//            or NOT_PRESENT (off); both read as zeroes.
//   fixed:   the create plan with every block FULLY_PRESENT in order from
//            dataStart (as block_state_zero=off lays it out), the guest's
//            data in place there.
import { fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import type { BlockOutput, BlockRun } from "../types.ts";
import { checkBlockRuns } from "../block_output.ts";
import {
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_ZERO,
  planVhdxCreate,
  type VhdxCreateOptions,
  type VhdxEntropy,
} from "./create_plan.ts";

/** The block output for a VHDX of `opts` (its size is the source's), or qemu's refusal. */
export function vhdxOutput(opts: VhdxCreateOptions, entropy: VhdxEntropy): PlanResult<BlockOutput> {
  const plan = planVhdxCreate(opts, entropy);
  if (!plan.ok) return plan;
  const l = plan.value.layout;
  if (l.subformat === "fixed") {
    // qemu's fixed create marks every block ZERO when block_state_zero is
    // on (its default), and its convert then appends each written block
    // after the reserved area. Here the reserved area holds the data: every
    // block FULLY_PRESENT at its place (the create layout without zero blocks).
    const full = planVhdxCreate({ ...opts, blockStateZero: false }, entropy);
    if (!full.ok) return full;
    return ok({
      placement: "inplace",
      blockSize: l.blockSize,
      slotPrefix: 0n,
      dataStart: l.dataStart,
      cap: l.fileSize,
      finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan> {
        if (runs.length > 0 || dataEnd < l.dataStart || dataEnd > l.fileSize) {
          return fail("invalid_size", `Data end ${dataEnd} lies outside [${l.dataStart}, ${l.fileSize}]`);
        }
        return ok({ patches: full.value.patches, fileSize: l.fileSize });
      },
    });
  }
  return ok({
    placement: "slots",
    blockSize: l.blockSize,
    slotPrefix: 0n,
    dataStart: l.dataStart,
    cap: l.dataStart + l.dataBlocks * l.blockSize,
    finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan> {
      // Payload blocks must start on MiB boundaries.
      const checked = checkBlockRuns(runs, l.dataBlocks, l.dataStart, dataEnd, l.blockSize, 1n << 20n);
      if (!checked.ok) return checked;
      const slots = new Map<number, bigint>();
      for (const r of checked.value) {
        for (let i = 0n; i < r.count; i++) slots.set(Number(r.block + i), r.slot + i * l.blockSize);
      }
      // Every data block's entry, sector-bitmap entries (one after each
      // chunk_ratio data blocks) left zero: no parent, so no bitmaps.
      const blocks = Number(l.dataBlocks);
      const ratio = Number(l.chunkRatio);
      const zero = l.useZeroBlocks ? Number(PAYLOAD_BLOCK_ZERO) : 0;
      const batLen = blocks === 0 ? 0 : (blocks - 1 + Math.floor((blocks - 1) / ratio) + 1) * 8;
      const bat = new Uint8Array(batLen);
      const view = new DataView(bat.buffer);
      for (let b = 0; b < blocks; b++) {
        const at = (b + Math.floor(b / ratio)) * 8;
        const slot = slots.get(b);
        if (slot === undefined) {
          bat[at] = zero;
        } else {
          view.setBigUint64(at, slot | PAYLOAD_BLOCK_FULLY_PRESENT, true);
        }
      }
      const batEnd = l.batOffset + l.batLength;
      const patches: Patch[] = plan.value.patches.filter((p) => p.offset < l.batOffset || p.offset >= batEnd);
      if (bat.length > 0) patches.push({ kind: "write", offset: l.batOffset, bytes: bat });
      return ok({ patches, fileSize: dataEnd });
    },
  });
}
