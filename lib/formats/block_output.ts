// Checks what a convert guest reports about block output (BlockOutput,
// lib/formats/types.ts) before a vpc or vhdx planner turns it into a BAT.
// Guest results are untrusted: every run must name blocks of the image,
// lie in whole slots inside the written data, and no block or slot may be
// claimed twice. Returns a refusal instead of throwing.
import { fail, ok, type PlanResult } from "./plan.ts";
import type { BlockRun } from "./types.ts";

const cmp = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Validates `runs` for `blocks` blocks in slots of `stride` bytes written
 * between dataStart and dataEnd. Slots start on `align` boundaries; one
 * guest packs them back to back, two guests leave up to one `align` of
 * padding (to a 4 KiB filesystem block) between their halves (convert's
 * two-guest split), so dataEnd may pass the packed worst case by that much.
 */
export function checkBlockRuns(
  runs: readonly BlockRun[],
  blocks: bigint,
  dataStart: bigint,
  dataEnd: bigint,
  stride: bigint,
  align: bigint,
): PlanResult<BlockRun[]> {
  const bad = (m: string) => fail("invalid_size", m);
  const most = dataStart + blocks * stride + (align > 4096n ? align : 4096n);
  if (dataEnd < dataStart || dataEnd > most || dataEnd % align !== 0n) {
    return bad(`Data end ${dataEnd} lies outside [${dataStart}, ${most}] or off a ${align}-byte boundary`);
  }
  for (const r of runs) {
    if (r.count <= 0n) return bad(`Block run at ${r.block} has no blocks`);
    if (r.block < 0n || r.block + r.count > blocks) {
      return bad(`Block run at ${r.block} passes the image end`);
    }
    if (r.slot < dataStart || r.slot % align !== 0n || r.slot + r.count * stride > dataEnd) {
      return bad(`Block run at ${r.block} has slot ${r.slot} outside the written data`);
    }
  }
  const byBlock = [...runs].sort((a, b) => cmp(a.block, b.block));
  for (let i = 1; i < byBlock.length; i++) {
    if (byBlock[i].block < byBlock[i - 1].block + byBlock[i - 1].count) {
      return bad(`Block ${byBlock[i].block} is mapped twice`);
    }
  }
  const bySlot = [...runs].sort((a, b) => cmp(a.slot, b.slot));
  for (let i = 1; i < bySlot.length; i++) {
    if (bySlot[i].slot < bySlot[i - 1].slot + bySlot[i - 1].count * stride) {
      return bad(`Slot ${bySlot[i].slot} is used twice`);
    }
  }
  return ok(byBlock);
}
