// Builds VMDK seSparse images for the tests (qemu-img cannot create them):
// a descriptor (createType="seSparse", one `RW N SESPARSE "NAME"` line) and
// the extent file with exactly the structures qemu 7.2's
// vmdk_open_se_sparse reads: the 512-byte const header at sector 0 (magic
// 0xcafebabe, version 0x200000001, 8-sector grains, 64-sector grain
// tables), the 512-byte volatile header (magic 0xcafecafe), the grain
// directory (64-bit entries: 0 none, 0x1000000000000000 | table index),
// the grain tables (4096 64-bit entries: 0 unallocated, top nibble 1 or 2
// zero, 3 allocated with the grain index split as qemu joins it) and the
// grains. Every field can be overridden, so the hostile-header tests write
// the same builder's output with one value changed.

/** Grain size in bytes (8 sectors) and grain table entries (64 sectors of 8-byte entries). */
export const SE_GRAIN = 4096;
export const SE_GT_ENTRIES = 4096;
/** Disk bytes one grain directory entry covers (16 MiB). */
export const SE_GD_SPAN = SE_GRAIN * SE_GT_ENTRIES;

/** The const header's 64-bit fields, in order (qemu's VMDKSESparseConstHeader). */
export const SE_CONST_FIELDS = [
  "magic",
  "version",
  "capacity",
  "grain_size",
  "grain_table_size",
  "flags",
  "reserved1",
  "reserved2",
  "reserved3",
  "reserved4",
  "volatile_header_offset",
  "volatile_header_size",
  "journal_header_offset",
  "journal_header_size",
  "journal_offset",
  "journal_size",
  "grain_dir_offset",
  "grain_dir_size",
  "grain_tables_offset",
  "grain_tables_size",
  "free_bitmap_offset",
  "free_bitmap_size",
  "backmap_offset",
  "backmap_size",
  "grains_offset",
  "grains_size",
] as const;
export type SeConstField = typeof SE_CONST_FIELDS[number];

/** What one grain of the disk holds. */
export type SeGrain =
  | { kind: "data"; fill: number } // allocated, every byte `fill`
  | { kind: "zero" } // GTE 0x2000000000000000
  | { kind: "unmapped" } // GTE 0x1000000000000000
  | { kind: "raw"; gte: bigint }; // any grain table entry (hostile rows)

export interface SeSparseSpec {
  /** capacity in sectors */
  sectors: bigint;
  /** grain directory entries (default: enough for `sectors`) */
  gdEntries?: number;
  /** grains by disk grain index; the rest unallocated */
  grains?: Map<number, SeGrain>;
  /** const header fields replaced after layout */
  constOverride?: Partial<Record<SeConstField, bigint>>;
  /** volatile header: magic, free_gt_number, next_txn_seq_number, replay_journal */
  volatileOverride?: Partial<
    Record<"magic" | "free_gt_number" | "next_txn_seq_number" | "replay_journal", bigint>
  >;
  /** bytes patched into the const header's padding (offset 208..511) or the volatile's (32..511) */
  constPad?: number;
  volatilePad?: number;
  /** grain directory entries replaced (index -> raw entry) */
  gdOverride?: Map<number, bigint>;
  /** the descriptor's sector count (default: sectors) and extent file name */
  descSectors?: bigint;
  extentName?: string;
  /** the descriptor's createType and extent type word */
  createType?: string;
  extentType?: string;
}

const SECTOR = 512;

/** qemu's join of the grain index from an allocated GTE, inverted. */
export function seAllocatedGte(index: bigint): bigint {
  return 0x3000000000000000n | ((index & 0xfffn) << 48n) | (index >> 12n);
}

/** The extent file's bytes for `spec`. */
export function seSparseExtent(spec: SeSparseSpec): Uint8Array {
  const grains = spec.grains ?? new Map<number, SeGrain>();
  const gdEntries = spec.gdEntries ??
    Math.max(1, Number((spec.sectors * 512n + BigInt(SE_GD_SPAN) - 1n) / BigInt(SE_GD_SPAN)));
  const gdSectors = Math.ceil((gdEntries * 8) / SECTOR);
  // tables: one per directory entry that has any non-zero grain entry
  const tableOf = new Map<number, number>();
  for (const [g] of [...grains].sort((a, b) => a[0] - b[0])) {
    const t = Math.floor(g / SE_GT_ENTRIES);
    if (!tableOf.has(t)) tableOf.set(t, tableOf.size);
  }
  const dataGrains = [...grains].filter(([, v]) => v.kind === "data").sort((a, b) => a[0] - b[0]);
  // layout (sectors): const 0, volatile 1, journal header 2, journal 3..10,
  // grain directory, grain tables, free bitmap (1), backmap (1), grains
  const gdAt = 11;
  const gtAt = gdAt + gdSectors;
  const gtSectors = Math.max(1, tableOf.size) * 64;
  const bitmapAt = gtAt + gtSectors;
  const backmapAt = bitmapAt + 1;
  const grainsAt = backmapAt + 1;
  const total = (grainsAt + dataGrains.length * 8) * SECTOR;
  const b = new Uint8Array(total);
  const dv = new DataView(b.buffer);
  const fields: Record<SeConstField, bigint> = {
    magic: 0xcafebaben,
    version: 0x200000001n,
    capacity: spec.sectors,
    grain_size: 8n,
    grain_table_size: 64n,
    flags: 0n,
    reserved1: 0n,
    reserved2: 0n,
    reserved3: 0n,
    reserved4: 0n,
    volatile_header_offset: 1n,
    volatile_header_size: 1n,
    journal_header_offset: 2n,
    journal_header_size: 1n,
    journal_offset: 3n,
    journal_size: 8n,
    grain_dir_offset: BigInt(gdAt),
    grain_dir_size: BigInt(gdSectors),
    grain_tables_offset: BigInt(gtAt),
    grain_tables_size: BigInt(gtSectors),
    free_bitmap_offset: BigInt(bitmapAt),
    free_bitmap_size: 1n,
    backmap_offset: BigInt(backmapAt),
    backmap_size: 1n,
    grains_offset: BigInt(grainsAt),
    grains_size: BigInt(dataGrains.length * 8),
    ...spec.constOverride,
  };
  SE_CONST_FIELDS.forEach((f, i) => dv.setBigUint64(i * 8, BigInt.asUintN(64, fields[f]), true));
  if (spec.constPad !== undefined) b[SE_CONST_FIELDS.length * 8 + 17] = spec.constPad;
  const vol = {
    magic: 0xcafecafen,
    free_gt_number: BigInt(tableOf.size),
    next_txn_seq_number: 1n,
    replay_journal: 0n,
  };
  Object.assign(vol, spec.volatileOverride);
  [vol.magic, vol.free_gt_number, vol.next_txn_seq_number, vol.replay_journal].forEach((v, i) =>
    dv.setBigUint64(SECTOR + i * 8, BigInt.asUintN(64, v), true)
  );
  if (spec.volatilePad !== undefined) b[SECTOR + 32 + 100] = spec.volatilePad;
  for (const [t, k] of tableOf) {
    if (t < gdEntries) dv.setBigUint64(gdAt * SECTOR + t * 8, 0x1000000000000000n | BigInt(k), true);
  }
  for (const [i, v] of spec.gdOverride ?? []) {
    dv.setBigUint64(gdAt * SECTOR + i * 8, BigInt.asUintN(64, v), true);
  }
  let next = 0;
  for (const [g, v] of [...grains].sort((a, b) => a[0] - b[0])) {
    const t = tableOf.get(Math.floor(g / SE_GT_ENTRIES))!;
    const at = (gtAt + t * 64) * SECTOR + (g % SE_GT_ENTRIES) * 8;
    let gte: bigint;
    if (v.kind === "data") {
      gte = seAllocatedGte(BigInt(next));
      b.fill(v.fill, (grainsAt + next * 8) * SECTOR, (grainsAt + next * 8 + 8) * SECTOR);
      next++;
    } else if (v.kind === "zero") gte = 0x2000000000000000n;
    else if (v.kind === "unmapped") gte = 0x1000000000000000n;
    else gte = v.gte;
    dv.setBigUint64(at, BigInt.asUintN(64, gte), true);
  }
  return b;
}

/** The descriptor text naming the extent. */
export function seSparseDescriptor(spec: SeSparseSpec, cid = "a1b2c3d4"): string {
  return `# Disk DescriptorFile\nversion=1\nCID=${cid}\nparentCID=ffffffff\n` +
    `createType="${spec.createType ?? "seSparse"}"\n\n# Extent description\n` +
    `RW ${spec.descSectors ?? spec.sectors} ${spec.extentType ?? "SESPARSE"} "${
      spec.extentName ?? "x-sesparse.vmdk"
    }"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "14"\n`;
}

/** Writes NAME (the descriptor) and its extent file into dir. */
export function writeSeSparse(dir: string, name: string, spec: SeSparseSpec): void {
  Deno.writeTextFileSync(`${dir}/${name}`, seSparseDescriptor(spec));
  Deno.writeFileSync(`${dir}/${spec.extentName ?? "x-sesparse.vmdk"}`, seSparseExtent(spec));
}
