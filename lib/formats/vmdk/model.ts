// What the info guest reports about a vmdk image (guest/vmdk/vmdk.c
// vmdk_emit_info): the IMAGE_INFO record (sizes, CID, parent CID), the
// create type and parent hint (NAME records) and one VMDK_EXTENT record per
// extent, every field re-checked against fixed bounds: the records are
// untrusted like every guest result.
import { formats, imageInfoFlags, limits, nameKinds, records, vmdkExtentFlags } from "../../abi/spec.ts";
import { nameBytes, type Rec } from "../../abi/records.ts";
import { GuestResultError } from "../qcow2/model.ts";

/** Extent files one image may name (each is an input of the run, next to the image). */
export const VMDK_MAX_FILES: number = limits.VMDK_MAX_FILES;

export interface VmdkExtentModel {
  /** virtual size in bytes (sectors * 512) */
  virtualSize: bigint;
  /** grain size in bytes; undefined for flat extents (qemu prints none) */
  clusterSize?: bigint;
  compressed: boolean;
  flat: boolean;
  /** the extent is the image file itself */
  hosted: boolean;
  /** its file was attached and its header read */
  opened: boolean;
  /** descriptor type word ("" for a hosted extent) */
  type: string;
  /** file name as the descriptor writes it (bytes, untrusted) */
  name: Uint8Array;
}

export interface VmdkModel {
  cid: bigint;
  parentCid: bigint;
  createType: string;
  extents: VmdkExtentModel[];
  /** extent files the descriptor names that were not attached yet */
  filesNeeded: number;
}

const I64_MAX = (1n << 63n) - 1n;
const text = (b: Uint8Array) => new TextDecoder().decode(b);

export function vmdkModel(recs: Rec[], input: number): {
  virtualSize: bigint;
  clusterSize: bigint;
  hasParent: boolean;
  vmdk: VmdkModel;
} {
  const infos = recs.filter((r) => r.type === records.IMAGE_INFO && r.fields.input === input);
  if (infos.length !== 1) throw new GuestResultError(`expected one image info record, got ${infos.length}`);
  const f = infos[0].fields;
  if (f.format !== formats.VMDK) {
    throw new GuestResultError(`image info for format ${f.format}, expected vmdk`);
  }
  const virtualSize = f.virtual_size as bigint;
  const clusterSize = f.cluster_size as bigint;
  const extra = f.extra as bigint[];
  if (virtualSize > I64_MAX || virtualSize % 512n !== 0n) {
    throw new GuestResultError("virtual size out of range");
  }
  if (clusterSize > 1n << 30n) throw new GuestResultError("cluster size out of range");
  if (extra[0] > 0xffffffffn || extra[1] > 0xffffffffn) throw new GuestResultError("CID out of range");
  if (extra[2] > BigInt(VMDK_MAX_FILES + 1) || extra[3] > BigInt(VMDK_MAX_FILES)) {
    throw new GuestResultError("extent count out of range");
  }
  const names = recs.filter((r) => r.type === records.NAME && r.fields.input === input);
  const ct = names.filter((r) => r.fields.kind === nameKinds.VMDK_CREATE_TYPE);
  if (ct.length !== 1) throw new GuestResultError("expected one vmdk create type");
  const exts = recs.filter((r) => r.type === records.VMDK_EXTENT && r.fields.input === input);
  if (BigInt(exts.length) !== extra[2]) {
    throw new GuestResultError("vmdk extent records do not match the count");
  }
  const extents = exts.map((r, i): VmdkExtentModel => {
    const x = r.fields;
    const flags = x.flags as number;
    const typeLen = x.type_len as number, nameLen = x.name_len as number;
    if (x.index !== i || typeLen > 10 || nameLen > 511 || (flags & ~15) !== 0) {
      throw new GuestResultError("vmdk extent record out of range");
    }
    const sectors = x.sectors as bigint;
    if (sectors > I64_MAX / 512n) throw new GuestResultError("vmdk extent size out of range");
    const flat = (flags & vmdkExtentFlags.FLAT) !== 0;
    const cs = x.cluster_size as bigint;
    if (cs > 1n << 30n) throw new GuestResultError("vmdk extent cluster size out of range");
    return {
      virtualSize: sectors * 512n,
      clusterSize: flat ? undefined : cs,
      compressed: (flags & vmdkExtentFlags.COMPRESSED) !== 0,
      flat,
      hosted: (flags & vmdkExtentFlags.HOSTED) !== 0,
      opened: (flags & vmdkExtentFlags.OPENED) !== 0,
      type: text((x.type as Uint8Array).slice(0, typeLen)),
      name: (x.name as Uint8Array).slice(0, nameLen),
    };
  });
  return {
    virtualSize,
    clusterSize,
    hasParent: ((f.flags as number) & imageInfoFlags.HAS_PARENT) !== 0,
    vmdk: {
      cid: extra[0],
      parentCid: extra[1],
      createType: text(nameBytes(ct[0])),
      extents,
      filesNeeded: Number(extra[3]),
    },
  };
}
