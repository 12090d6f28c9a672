// The vpc/vhdx resize scan decoder and summaries: a hostile or cut stream
// is refused; the planners' scan-only branches (allocated-block bound on a
// shrink, VHDX BAT entries zeroed on a grow) keep the plan invariants.
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { formats, records, resizeBlobs, resizeMetaFlags } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { decodeResizeMeta } from "./resize_meta.ts";
import { vhdxResizeSummary } from "./vhdx/resize.ts";
import { vpcResizeSummary } from "./vpc/resize.ts";
import { planVhdxResize } from "./vhdx/resize_plan.ts";
import { planVpcResize } from "./vpc/resize_plan.ts";
import { planViolation } from "./plan.ts";
import { storeCrc32c } from "./vhdx/crc32c.ts";

const MiB = 1n << 20n;

function bytesRecs(what: number, b: Uint8Array): Rec[] {
  const out: Rec[] = [];
  for (let at = 0; at < b.length; at += 1024) {
    const chunk = new Uint8Array(1024);
    const n = Math.min(1024, b.length - at);
    chunk.set(b.subarray(at, at + n));
    out.push({ type: records.RESIZE_BYTES, fields: { what, length: n, offset: BigInt(at), bytes: chunk } });
  }
  return out;
}

function meta(f: Record<string, number | bigint>): Rec {
  return {
    type: records.RESIZE_META,
    fields: {
      format: formats.VHDX,
      flags: resizeMetaFlags.VHDX_LOG_GUID_ZERO,
      subformat: 0,
      bat_entry: 0,
      virtual_size: 100n * MiB,
      block_size: 32n * MiB,
      bat_offset: 3n * MiB,
      bat_capacity: MiB,
      sequence: 7n,
      item_offset: 2n * MiB + 65536n,
      alloc_end: 1n,
      n_bytes: 4096n + 65536n,
      ...f,
    },
  };
}

/** A region table whose entry 1 is the BAT region at `offset`, `length`. */
function regionTable(offset: bigint, length: number): Uint8Array {
  const t = new Uint8Array(65536);
  const dv = new DataView(t.buffer);
  dv.setUint32(0, 0x69676572, true);
  dv.setUint32(8, 2, true);
  dv.setBigUint64(16 + 32 + 16, offset, true);
  dv.setUint32(16 + 32 + 24, length, true);
  storeCrc32c(t, 4);
  return t;
}
const RT = () => bytesRecs(resizeBlobs.VHDX_REGION_TABLE, regionTable(3n * MiB, Number(MiB)));

function vhdxHeader(seq: bigint): Uint8Array {
  const h = new Uint8Array(4096);
  new DataView(h.buffer).setBigUint64(8, seq, true);
  return h;
}

Deno.test("decodeResizeMeta: a complete vhdx stream", () => {
  const recs = [...bytesRecs(resizeBlobs.VHDX_HEADER, vhdxHeader(7n)), ...RT(), meta({ bat_entry: 1 })];
  const m = decodeResizeMeta(recs, formats.VHDX);
  assertEquals(m.blobs.get(resizeBlobs.VHDX_HEADER)!.length, 4096);
  const s = vhdxResizeSummary(m, 8n * MiB);
  assert(typeof s !== "string");
  // grow: the added BAT entries are zeroed explicitly, nothing overlaps
  const p = planVhdxResize(s, { newSize: 200n * MiB, shrink: false, beyondQemu: true });
  assert(p.ok);
  assertEquals(planViolation(p.value), undefined);
  assertEquals(p.value.patches[0], { kind: "zero", offset: 3n * MiB + 4n * 8n, length: 3n * 8n });
  // shrink across blocks: allowed above the data, refused over it
  assert(planVhdxResize(s, { newSize: 40n * MiB, shrink: true, beyondQemu: true }).ok);
  const over = vhdxResizeSummary(
    decodeResizeMeta([...recs.slice(0, -1), meta({ bat_entry: 1, alloc_end: 3n })], formats.VHDX),
    8n * MiB,
  );
  assert(typeof over !== "string");
  assert(!planVhdxResize(over, { newSize: 40n * MiB, shrink: true, beyondQemu: true }).ok);
  // a grow past the BAT region's room (1 MiB: 131072 entries of 32 MiB blocks and bitmaps):
  // the old entries copied to a new region at the 1 MiB-aligned end, the region table repointed
  const moved = planVhdxResize(s, { newSize: 10n << 40n, shrink: false, beyondQemu: true });
  assert(moved.ok);
  assertEquals(planViolation(moved.value), undefined);
  const entries = 327680n + 327679n / 128n;
  const newLength = (entries * 8n + MiB - 1n) / MiB * MiB;
  assertEquals(moved.value.fileSize, 8n * MiB + newLength);
  assertEquals(moved.value.patches[0], { kind: "copy", offset: 8n * MiB, from: 3n * MiB, length: 32n });
  const want = regionTable(8n * MiB, Number(newLength));
  assertEquals(moved.value.patches[1], { kind: "write", offset: 192n * 1024n, bytes: want.slice(0, 4096) });
  assertEquals(moved.value.patches[2], { kind: "write", offset: 256n * 1024n, bytes: want });
  // the entry the guest named must be the BAT region it reported
  const wrong = vhdxResizeSummary(
    decodeResizeMeta([...recs.slice(0, -1), meta({ bat_entry: 0 })], formats.VHDX),
    8n * MiB,
  );
  assert(typeof wrong !== "string");
  assert(!planVhdxResize(wrong, { newSize: 10n << 40n, shrink: false, beyondQemu: true }).ok);
});

Deno.test("decodeResizeMeta refuses cut, repeated, oversized and mismatched streams", () => {
  const hdr = bytesRecs(resizeBlobs.VHDX_HEADER, vhdxHeader(7n));
  const bad: Rec[][] = [
    hdr, // no meta
    [meta({}), ...hdr], // meta not last
    [...hdr, meta({}), meta({})],
    [...hdr.slice(1), meta({ n_bytes: 3072n })], // incomplete header
    [...hdr, hdr[0], meta({ n_bytes: 5120n })], // repeated bytes
    [...hdr, ...RT(), meta({ n_bytes: 4095n + 65536n })],
    [...hdr, meta({ format: formats.VPC })],
    [
      { type: records.RESIZE_BYTES, fields: { what: 9, length: 8, offset: 0n, bytes: new Uint8Array(1024) } },
      meta({ n_bytes: 8n }),
    ],
    [{
      type: records.RESIZE_BYTES,
      fields: { what: resizeBlobs.VHDX_HEADER, length: 1024, offset: 3584n, bytes: new Uint8Array(1024) },
    }, meta({ n_bytes: 1024n })],
  ];
  for (const recs of bad) throws(() => decodeResizeMeta(recs, formats.VHDX));
  // a header whose sequence number is not the one reported
  const m = decodeResizeMeta(
    [...bytesRecs(resizeBlobs.VHDX_HEADER, vhdxHeader(8n)), ...RT(), meta({})],
    formats.VHDX,
  );
  assertEquals(typeof vhdxResizeSummary(m, 8n * MiB), "string");
  // no region table
  const m1 = decodeResizeMeta([...hdr, meta({ n_bytes: 4096n })], formats.VHDX);
  assertEquals(typeof vhdxResizeSummary(m1, 8n * MiB), "string");
  // more data blocks than the size has
  const m2 = decodeResizeMeta([...hdr, ...RT(), meta({ alloc_end: 5n })], formats.VHDX);
  assertEquals(typeof vhdxResizeSummary(m2, 8n * MiB), "string");
});

Deno.test("vpc summary: differencing and mismatched layouts refused; dynamic shrink bound", () => {
  const footer = new Uint8Array(512);
  footer.set(new TextEncoder().encode("conectix"));
  footer.set(new TextEncoder().encode("qem2"), 28);
  const recs = (f: Record<string, number | bigint>) => [
    ...bytesRecs(resizeBlobs.VPC_FOOTER, footer),
    ...bytesRecs(resizeBlobs.VPC_DYNHEADER, new Uint8Array(1024)),
    meta({
      format: formats.VPC,
      flags: resizeMetaFlags.VPC_DYNAMIC,
      subformat: 3,
      virtual_size: 100n * MiB,
      block_size: 2n * MiB,
      bat_offset: 1536n,
      bat_capacity: 50n,
      sequence: 0n,
      item_offset: 0n,
      n_bytes: 1536n,
      ...f,
    }),
  ];
  const sum = (f: Record<string, number | bigint>) =>
    vpcResizeSummary(decodeResizeMeta(recs(f), formats.VPC), 4n * MiB);
  assertEquals(typeof sum({ subformat: 4 }), "string");
  assertEquals(typeof sum({ subformat: 2 }), "string");
  assertEquals(typeof sum({ alloc_end: 51n }), "string");
  const low = sum({ alloc_end: 2n });
  assert(typeof low !== "string");
  const p = planVpcResize(low, { newSize: 10n * MiB, shrink: true, beyondQemu: true });
  assert(p.ok);
  assertEquals(planViolation(p.value), undefined);
  const high = sum({ alloc_end: 20n });
  assert(typeof high !== "string");
  assert(!planVpcResize(high, { newSize: 10n * MiB, shrink: true, beyondQemu: true }).ok);
});
