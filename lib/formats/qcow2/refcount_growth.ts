// The writes a planner makes when qemu's allocator (RefcountModel in
// refcounts.ts) grows the refcount structures, shared by every planner that
// allocates with it (snapshot_plan.ts, bitmap_plan.ts):
//  - alloc_refcount_block placed a block for an index the table holds: the
//    block is written (synced) before the table entry that hooks it up;
//  - qcow2_refcount_area found the table full: three synced steps, (1) the
//    refcount blocks with every count raised so far and the new table,
//    (2) the entries qemu had hooked into the old table since its last
//    hook-up write (its bytes stay in the file, as qemu leaves them),
//    (3) the header's refcount table fields (offset 48: u64 offset, u32
//    clusters). The old table's clusters are freed by the model right
//    after, in blocks a later step writes, and are not discarded.
// A crash between any two of these leaves at most leaked clusters.
import type { Patch } from "../plan.ts";
import type { RefcountModel, TableMove } from "./refcounts.ts";
import { be64 } from "./resize_plan.ts";

/** Header fields: refcount_table_offset (u64) then refcount_table_clusters (u32). */
export const HDR_REFTABLE = 48n;

// The refcount block and table-entry writes are resize_plan.ts's (one
// definition for every planner); re-exported under the names callers use.
export { blockPatches as dirtyBlockPatches, hookupPatches } from "./resize_plan.ts";

/**
 * The steps of a table move (called from the model's tableMoved listener,
 * so rc already names the new table): `blocks` are the refcount blocks to
 * write with the new table (the caller's dirty blocks, as it encodes them).
 */
export function tableMoveSteps(rc: RefcountModel, move: TableMove, blocks: Patch[]): Patch[][] {
  const f = new Uint8Array(12);
  new DataView(f.buffer).setBigUint64(0, rc.tableOffset);
  new DataView(f.buffer).setUint32(8, Number(rc.tableClusters));
  return [
    [...blocks, { kind: "write", offset: rc.tableOffset, bytes: rc.tableBytes() }],
    move.oldHookups.map((t) => ({
      kind: "write" as const,
      offset: move.oldOffset + t * 8n,
      bytes: be64(move.oldEntries.get(t)!),
    })),
    [{ kind: "write", offset: HDR_REFTABLE, bytes: f }],
  ];
}
