// `qemu-img map` printers (qemu-img.c dump_map_entry). The guest already
// merged extents the way img_map's loop does for JSON; the human form only
// prints data extents, and fails on data without a host offset.
import { mapFlags } from "../abi/spec.ts";
import { hasDirtyFlagAndPresent, hasMapCompressed, type Profile } from "./profile.ts";

export interface MapExtent {
  start: bigint;
  length: bigint;
  offset: bigint;
  flags: number;
  depth: number;
  /** The input the offset points into (chainInputs order: a vmdk layer spans several files). */
  input: number;
}

const has = (e: MapExtent, f: number) => (e.flags & f) !== 0;

export function mapJsonLine(e: MapExtent, profile: Profile): string {
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth},`;
  if (hasDirtyFlagAndPresent(profile)) s += ` "present": ${has(e, mapFlags.PRESENT)},`;
  s += ` "zero": ${has(e, mapFlags.ZERO)}, "data": ${has(e, mapFlags.DATA)}`;
  if (hasMapCompressed(profile)) s += `, "compressed": ${has(e, mapFlags.COMPRESSED)}`;
  // PRId64: an offset at or past 2^63 (vmdk seSparse) prints negative, as qemu-img's
  if (has(e, mapFlags.OFFSET_VALID)) s += `, "offset": ${BigInt.asIntN(64, e.offset)}`;
  return s + "}";
}

export function mapJson(extents: MapExtent[], profile: Profile): string {
  return "[" + extents.map((e) => mapJsonLine(e, profile)).join(",\n") + "]\n";
}

/** printf("%#-16" PRIx64). */
function hex16(v: bigint): string {
  return (v === 0n ? "0" : `0x${v.toString(16)}`).padEnd(16, " ");
}

export const MAP_HUMAN_HEADER = `${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}File\n`;

/**
 * Human map lines; `error` is set when qemu-img would stop with
 * "File contains external, encrypted or compressed clusters." after `text`.
 */
export function mapHuman(extents: MapExtent[], filenames: string[]): { text: string; error: boolean } {
  let text = MAP_HUMAN_HEADER;
  for (let i = 0; i < extents.length; i++) {
    const e = extents[i];
    const data = has(e, mapFlags.DATA);
    const zero = has(e, mapFlags.ZERO);
    const hasOffset = has(e, mapFlags.OFFSET_VALID);
    // qemu rewrites every entry after the first that is not plain data to
    // zero-without-data before it is dumped; only the first keeps its flags.
    const dataAsDumped = data && (i === 0 || !zero);
    if (dataAsDumped && !hasOffset) return { text, error: true };
    if (data && !zero) {
      text += `${hex16(e.start)}${hex16(e.length)}${hex16(hasOffset ? e.offset : 0n)}${
        hasOffset ? filenames[e.input] ?? "" : ""
      }\n`;
    }
  }
  return { text, error: false };
}
