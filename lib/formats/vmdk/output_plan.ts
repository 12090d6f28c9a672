// The VMDK output planner for `instar convert -O vmdk`. The guest writes the
// data; this planner writes every piece of metadata, through the create
// planner (header, embedded descriptor, both grain directories):
//
//   monolithicSparse: grains the guest packed from the first grain offset
//       on, in guest order, 64 KiB each (block output, "slots"); both
//       copies of the grain tables point at them. This is the file qemu's
//       vmdk writes when qemu-img convert writes in guest order.
//   streamOptimized: grains the guest deflated (zlib, as qemu's compress()),
//       each behind a 12-byte marker {lba, size} and padded to a sector,
//       packed in guest order; the grain tables point at the markers. qemu
//       7.2 writes no grain-table, directory, footer or end-of-stream
//       markers when it converts, and neither does instar.
//   monolithicFlat, twoGbMaxExtent*: a descriptor file (the target name)
//       and extent files (extents.ts): flat extents hold the data in place,
//       sparse extents are monolithicSparse files without a descriptor.
import { fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import type {
  BlockOutput,
  BlockRun,
  ExtentsOutput,
  OutputSpec,
  PackedGrain,
  StreamOutput,
} from "../types.ts";
import { checkBlockRuns } from "../block_output.ts";
import {
  encodeGrainDirectory,
  encodeVmdkHeader,
  planVmdkCreate,
  vmdkChoices,
  type VmdkCreateOptions,
  vmdkDescriptor,
  type VmdkEntropy,
  type VmdkLayout,
  vmdkLayout,
} from "./create_plan.ts";
import { vmdkExtentFiles, vmdkExtentLine } from "./extents.ts";
import { STREAM_GRAIN_MAX } from "./measure.ts";

const GRAIN = 65536n;
const GT_ENTRIES = 512;
const GT_BYTES = GT_ENTRIES * 4;
/** Grain-table patches per copy at most (two copies and the create patches stay under MAX_PATCHES). */
const MAX_TABLE_RUNS = 1000;

/** The grains a layout's (possibly 32-bit-wrapped) tables can address, or a refusal. */
function tableCapacity(l: VmdkLayout): PlanResult<bigint> {
  const grains = (l.virtualSize + GRAIN - 1n) / GRAIN;
  if (BigInt(l.gtCount) * BigInt(GT_ENTRIES) < grains) {
    return fail("unsupported", "Writing a vmdk image of 128 TiB or more is not supported by instar");
  }
  return ok(grains);
}

/**
 * Patches that fill both copies of the grain tables: grain g -> sector
 * entries.get(g). Tables that stay empty are not written (qemu's create
 * left them zero); runs of filled tables are merged until at most
 * MAX_TABLE_RUNS patches per copy remain.
 */
export function grainTablePatches(l: VmdkLayout, entries: Map<bigint, bigint>): PlanResult<Patch[]> {
  const tables = new Map<number, Uint8Array>();
  for (const [g, sector] of entries) {
    if (sector > 0xffffffffn) {
      return fail("invalid_size", `Grain ${g} lies past what a VMDK grain table addresses`);
    }
    const t = Number(g / BigInt(GT_ENTRIES));
    if (t >= l.gtCount) return fail("invalid_size", `Grain ${g} has no grain table`);
    let gt = tables.get(t);
    if (!gt) tables.set(t, gt = new Uint8Array(GT_BYTES));
    new DataView(gt.buffer).setUint32(Number(g % BigInt(GT_ENTRIES)) * 4, Number(sector), true);
  }
  const idx = [...tables.keys()].sort((a, b) => a - b);
  // Merge runs separated by gaps up to `gap` tables, doubling until few enough.
  let runs: [number, number][] = [];
  for (let gap = 0;; gap = gap ? gap * 2 : 1) {
    runs = [];
    for (const t of idx) {
      const last = runs[runs.length - 1];
      if (last && t - last[1] <= gap + 1) last[1] = t;
      else runs.push([t, t]);
    }
    if (runs.length <= MAX_TABLE_RUNS) break;
  }
  const patches: Patch[] = [];
  for (const gd of [l.rgdOffset, l.gdOffset]) {
    const first = (gd + BigInt(l.gdSectors)) * 512n;
    for (const [a, b] of runs) {
      const bytes = new Uint8Array((b - a + 1) * GT_BYTES);
      for (let t = a; t <= b; t++) {
        const gt = tables.get(t);
        if (gt) bytes.set(gt, (t - a) * GT_BYTES);
      }
      patches.push({ kind: "write", offset: first + BigInt(a) * BigInt(GT_BYTES), bytes });
    }
  }
  return ok(patches);
}

/** A sparse extent's grains in 64 KiB slots after its tables (monolithicSparse, twoGbMaxExtentSparse). */
function sparseBlocks(l: VmdkLayout, base: Patch[]): PlanResult<BlockOutput> {
  const cap = tableCapacity(l);
  if (!cap.ok) return cap;
  const grains = cap.value;
  const dataStart = l.grainOffset * 512n;
  return ok({
    placement: "slots",
    blockSize: GRAIN,
    slotPrefix: 0n,
    dataStart,
    cap: dataStart + grains * GRAIN,
    finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan> {
      const checked = checkBlockRuns(runs, grains, dataStart, dataEnd, GRAIN, 512n);
      if (!checked.ok) return checked;
      const entries = new Map<bigint, bigint>();
      for (const r of checked.value) {
        for (let i = 0n; i < r.count; i++) entries.set(r.block + i, (r.slot + i * GRAIN) / 512n);
      }
      const gts = grainTablePatches(l, entries);
      if (!gts.ok) return gts;
      return ok({ patches: [...base, ...gts.value], fileSize: dataEnd });
    },
  });
}

/** Checks the guest's packed grains: in range, whole sectors inside the data, none twice, no overlap. */
export function checkPackedGrains(
  grains: readonly PackedGrain[],
  count: bigint,
  dataStart: bigint,
  dataEnd: bigint,
  grainMax: bigint,
): PlanResult<Map<bigint, bigint>> {
  const bad = (m: string) => fail<Map<bigint, bigint>>("invalid_size", m);
  if (dataEnd < dataStart || dataEnd % 512n !== 0n) {
    return bad(`Data end ${dataEnd} is not a sector past ${dataStart}`);
  }
  const entries = new Map<bigint, bigint>();
  for (const g of grains) {
    if (g.grain < 0n || g.grain >= count) return bad(`Grain ${g.grain} passes the image end`);
    if (entries.has(g.grain)) return bad(`Grain ${g.grain} is written twice`);
    if (
      g.offset < dataStart || g.offset % 512n !== 0n || g.length < 512n || g.length > grainMax ||
      g.length % 512n !== 0n || g.offset + g.length > dataEnd
    ) {
      return bad(`Grain ${g.grain} at ${g.offset} (${g.length} bytes) lies outside the written data`);
    }
    entries.set(g.grain, g.offset / 512n);
  }
  const byOffset = [...grains].sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  for (let i = 1; i < byOffset.length; i++) {
    if (byOffset[i].offset < byOffset[i - 1].offset + byOffset[i - 1].length) {
      return bad(`Grain ${byOffset[i].grain} overlaps grain ${byOffset[i - 1].grain}`);
    }
  }
  return ok(entries);
}

function streamOutput(l: VmdkLayout, base: Patch[]): PlanResult<StreamOutput> {
  const cap = tableCapacity(l);
  if (!cap.ok) return cap;
  const count = cap.value;
  const dataStart = l.grainOffset * 512n;
  return ok({
    grainSize: GRAIN,
    dataStart,
    grainMax: STREAM_GRAIN_MAX,
    finish(dataEnd: bigint, grains: PackedGrain[]): PlanResult<FilePlan> {
      const entries = checkPackedGrains(grains, count, dataStart, dataEnd, STREAM_GRAIN_MAX);
      if (!entries.ok) return entries;
      const gts = grainTablePatches(l, entries.value);
      if (!gts.ok) return gts;
      // qemu's file reaches at least a whole grain past the last marker's
      // offset (its allocator reserves one before compressing into it).
      let fileSize = dataEnd;
      for (const g of grains) if (g.offset + GRAIN > fileSize) fileSize = g.offset + GRAIN;
      return ok({ patches: [...base, ...gts.value], fileSize });
    },
  });
}

/** A flat extent: the guest writes its bytes in place; the file is the extent's length. */
function flatBlocks(size: bigint): BlockOutput {
  return {
    placement: "inplace",
    blockSize: GRAIN,
    slotPrefix: 0n,
    dataStart: 0n,
    cap: size,
    finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan> {
      if (runs.length > 0 || dataEnd < 0n || dataEnd > size) {
        return fail("invalid_size", `Data end ${dataEnd} passes the extent size ${size}`);
      }
      return ok({ patches: [], fileSize: size });
    },
  };
}

/** Header and both grain directories of a sparse extent file (no descriptor: twoGbMaxExtentSparse). */
function sparseExtentBase(l: VmdkLayout, zeroedGrain: boolean): Patch[] {
  const patches: Patch[] = [{ kind: "write", offset: 0n, bytes: encodeVmdkHeader(l, zeroedGrain) }];
  if (l.gdSectors > 0) {
    patches.push({ kind: "write", offset: l.rgdOffset * 512n, bytes: encodeGrainDirectory(l, l.rgdOffset) });
    patches.push({ kind: "write", offset: l.gdOffset * 512n, bytes: encodeGrainDirectory(l, l.gdOffset) });
  }
  return patches;
}

/** convert -O vmdk's output for `opts` (size: the source's; filename: the target as given). */
export function vmdkOutput(opts: VmdkCreateOptions, entropy: VmdkEntropy): PlanResult<OutputSpec> {
  const c = vmdkChoices(opts);
  if (!c.ok) return c;
  const { subformat, zeroedGrain } = c.value;
  if (vmdkLayout(opts.size, subformat).virtualSize === 0n) {
    // qemu-img writes a VMDK of an empty disk that it cannot open again (the
    // sparse ones fail with these words, the others abort): refused up front.
    return fail("unsupported", `Could not open '${opts.filename}': Unsupported image type '${subformat}'`);
  }
  if (subformat === "monolithicSparse" || subformat === "streamOptimized") {
    const plan = planVmdkCreate(opts, entropy);
    if (!plan.ok) return plan;
    const l = plan.value.layout;
    if (subformat === "monolithicSparse") {
      const blocks = sparseBlocks(l, plan.value.patches);
      if (!blocks.ok) return blocks;
      return ok({
        writer: "blocks",
        preallocation: "off",
        blocks: blocks.value,
        compress: { accepted: true },
      });
    }
    const stream = streamOutput(l, plan.value.patches);
    if (!stream.ok) return stream;
    return ok({ writer: "stream", preallocation: "off", stream: stream.value, compress: { accepted: true } });
  }
  const l = vmdkLayout(opts.size, subformat);
  const files = vmdkExtentFiles(opts.filename, subformat, l.virtualSize);
  const extents = [];
  for (const f of files) {
    if (f.flat) {
      extents.push({ path: f.path, from: f.from, to: f.to, blocks: flatBlocks(f.to - f.from) });
      continue;
    }
    const el = vmdkLayout(f.to - f.from, subformat);
    const blocks = sparseBlocks(el, sparseExtentBase(el, zeroedGrain));
    if (!blocks.ok) return blocks;
    extents.push({ path: f.path, from: f.from, to: f.to, blocks: blocks.value });
  }
  const text = vmdkDescriptor(
    l,
    opts.filename,
    entropy.cid,
    c.value.hwversion,
    c.value.adapter,
    c.value.toolsversion,
    files.map(vmdkExtentLine),
  );
  const desc = new TextEncoder().encode(text);
  const out: ExtentsOutput = {
    extents,
    descriptor(written: boolean): FilePlan {
      // qemu rewrites the descriptor (a new CID) on the first data write, in
      // whole sectors; a convert that wrote nothing leaves the created text.
      const size = written ? ((BigInt(desc.length) + 511n) / 512n) * 512n : BigInt(desc.length);
      return { patches: [{ kind: "write", offset: 0n, bytes: desc }], fileSize: size };
    },
  };
  // Flat extents cannot take qemu's compressed writes ("invalid cluster size").
  const flat = subformat !== "twoGbMaxExtentSparse";
  return ok({
    writer: "extents",
    preallocation: "off",
    extents: out,
    compress: flat ? { accepted: false, message: "invalid cluster size" } : { accepted: true },
  });
}
