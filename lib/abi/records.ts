// Decodes the result stream a guest produced. The stream is untrusted: every
// record's type and size is checked against the spec before a field is read,
// and counts are capped. Accessors are derived from lib/abi/spec.ts, so the
// offsets here and in guest/include/abi.h come from one table.
import { limits, recordHeader, records, recordStructs, structs } from "./spec.ts";
import type { StructSpec } from "./spec.ts";

export type FieldValue = number | bigint | Uint8Array | number[] | bigint[];
export interface Rec {
  type: number;
  fields: Record<string, FieldValue>;
}

export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RecordError";
  }
}

const byName = new Map<string, StructSpec>(structs.map((s) => [s.name, s]));

export function structSpec(name: string): StructSpec {
  const s = byName.get(name);
  if (!s) throw new Error(`unknown struct ${name}`);
  return s;
}

/** Reads every field of `spec` at `base` in `view` (little-endian). */
export function readStruct(view: DataView, base: number, spec: StructSpec): Record<string, FieldValue> {
  const out: Record<string, FieldValue> = {};
  for (const f of spec.fields) {
    const at = base + f.offset;
    const n = f.count ?? 1;
    if (f.type === "bytes") {
      out[f.name] = new Uint8Array(view.buffer.slice(view.byteOffset + at, view.byteOffset + at + n));
      continue;
    }
    const one = (i: number): number | bigint => {
      switch (f.type) {
        case "u8":
          return view.getUint8(at + i);
        case "u16":
          return view.getUint16(at + 2 * i, true);
        case "u32":
          return view.getUint32(at + 4 * i, true);
        case "u64":
          return view.getBigUint64(at + 8 * i, true);
        case "i64":
          return view.getBigInt64(at + 8 * i, true);
      }
      throw new Error("unreachable");
    };
    if (f.count === undefined) out[f.name] = one(0);
    else {
      const arr: (number | bigint)[] = [];
      for (let i = 0; i < n; i++) arr.push(one(i));
      out[f.name] = arr as number[] | bigint[];
    }
  }
  return out;
}

/** Writes fields into a new buffer of the struct's size; missing fields stay zero. */
export function writeStruct(spec: StructSpec, values: Record<string, FieldValue>): Uint8Array {
  const buf = new Uint8Array(spec.size);
  const view = new DataView(buf.buffer);
  for (const f of spec.fields) {
    const v = values[f.name];
    if (v === undefined) continue;
    const n = f.count ?? 1;
    if (f.type === "bytes") {
      const b = v as Uint8Array;
      if (b.length > n) throw new Error(`${spec.name}.${f.name}: ${b.length} > ${n} bytes`);
      buf.set(b, f.offset);
      continue;
    }
    const vals = (f.count === undefined ? [v] : v) as (number | bigint)[];
    if (vals.length > n) throw new Error(`${spec.name}.${f.name}: too many elements`);
    vals.forEach((x, i) => {
      const at = f.offset + i * ({ u8: 1, u16: 2, u32: 4, u64: 8, i64: 8 } as Record<string, number>)[f.type];
      switch (f.type) {
        case "u8":
          view.setUint8(at, Number(x));
          break;
        case "u16":
          view.setUint16(at, Number(x), true);
          break;
        case "u32":
          view.setUint32(at, Number(x), true);
          break;
        case "u64":
          view.setBigUint64(at, BigInt(x), true);
          break;
        case "i64":
          view.setBigInt64(at, BigInt(x), true);
          break;
      }
    });
  }
  return buf;
}

/**
 * Splits and decodes a result stream. Throws RecordError on any record whose
 * type is unknown, whose size is not exactly its struct's size, or that runs
 * past the end; the caller treats that as a failed (possibly hostile) guest.
 */
export function decodeRecords(stream: Uint8Array, maxRecords = 16 * 1024 * 1024): Rec[] {
  const view = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
  const out: Rec[] = [];
  let at = 0;
  while (at < stream.byteLength) {
    if (stream.byteLength - at < recordHeader.size) throw new RecordError(`truncated record header at ${at}`);
    const type = view.getUint32(at, true);
    const size = view.getUint32(at + 4, true);
    const name = recordStructs[type];
    if (!name) throw new RecordError(`unknown record type ${type} at ${at}`);
    const spec = structSpec(name);
    if (size !== spec.size || size > limits.RECORD_MAX) {
      throw new RecordError(`record type ${type} has size ${size}, expected ${spec.size}`);
    }
    if (at + size > stream.byteLength) throw new RecordError(`record at ${at} runs past the stream`);
    if (out.length >= maxRecords) throw new RecordError(`more than ${maxRecords} records`);
    out.push({ type, fields: readStruct(view, at, spec) });
    at += size;
  }
  return out;
}

/** Bytes of a NAME record, validated: length within bounds, no NUL inside. */
export function nameBytes(rec: Rec): Uint8Array {
  if (rec.type !== records.NAME) throw new RecordError("not a NAME record");
  const len = rec.fields.len as number;
  if (len > limits.NAME_MAX) throw new RecordError(`name length ${len} > ${limits.NAME_MAX}`);
  const bytes = (rec.fields.bytes as Uint8Array).subarray(0, len);
  if (bytes.includes(0)) throw new RecordError("name contains a NUL byte");
  return bytes;
}
