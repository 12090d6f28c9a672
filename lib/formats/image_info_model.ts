// The IMAGE_INFO record a vpc or vhdx layer's guest parser sends, checked
// against fixed bounds (the record is untrusted like every guest result).
import { formats, imageInfoFlags, imageSubformats, records } from "../abi/spec.ts";
import type { Rec } from "../abi/records.ts";
import { GuestResultError } from "./qcow2/model.ts";

export interface ImageInfoModel {
  format: number;
  virtualSize: bigint;
  clusterSize: bigint;
  dirty: boolean;
  hasParent: boolean;
  badChecksum: boolean;
  subformat: "fixed" | "dynamic" | "differencing";
  /** Format-specific values (guest/<fmt>/<fmt>.h says what each is). */
  extra: bigint[];
}

const SUBFORMATS: Record<number, ImageInfoModel["subformat"]> = {
  [imageSubformats.FIXED]: "fixed",
  [imageSubformats.DYNAMIC]: "dynamic",
  [imageSubformats.DIFFERENCING]: "differencing",
};
const I64_MAX = (1n << 63n) - 1n;
const KNOWN_FLAGS = imageInfoFlags.DIRTY | imageInfoFlags.HAS_PARENT | imageInfoFlags.BAD_CHECKSUM;

export function imageInfoModel(recs: Rec[], input: number, format: number): ImageInfoModel {
  const infos = recs.filter((r) => r.type === records.IMAGE_INFO && r.fields.input === input);
  if (infos.length !== 1) throw new GuestResultError(`expected one image info record, got ${infos.length}`);
  const f = infos[0].fields;
  if (f.format !== format || (format !== formats.VPC && format !== formats.VHDX)) {
    throw new GuestResultError(`image info for format ${f.format}, expected ${format}`);
  }
  const virtualSize = f.virtual_size as bigint;
  const clusterSize = f.cluster_size as bigint;
  const flags = f.flags as number;
  const subformat = SUBFORMATS[f.subformat as number];
  if (virtualSize > I64_MAX) throw new GuestResultError("virtual size out of range");
  if (clusterSize > 1n << 32n) throw new GuestResultError("cluster size out of range");
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new GuestResultError(`image info flags ${flags} out of range`);
  if (subformat === undefined) throw new GuestResultError(`subformat ${f.subformat} out of range`);
  return {
    format,
    virtualSize,
    clusterSize,
    dirty: (flags & imageInfoFlags.DIRTY) !== 0,
    hasParent: (flags & imageInfoFlags.HAS_PARENT) !== 0,
    badChecksum: (flags & imageInfoFlags.BAD_CHECKSUM) !== 0,
    subformat,
    extra: [...(f.extra as bigint[])],
  };
}
