// The typed model of a qcow2 header, built from the guest's QCOW2_INFO and
// NAME records. The records are untrusted: every field is re-checked against
// the bounds qemu itself enforces before the model is used.
import { limits, nameKinds, qcow2InfoFlags, records } from "../../abi/spec.ts";
import { nameBytes, type Rec } from "../../abi/records.ts";
import type { Qcow2Bitmap, SnapshotList } from "./snapshots.ts";
import type { Qcow2Encryption } from "./crypt.ts";

export interface Qcow2Model {
  version: 2 | 3;
  virtualSize: bigint;
  clusterBits: number;
  clusterSize: bigint;
  refcountBits: number;
  compressionType: "zlib" | "zstd";
  dirty: boolean;
  corrupt: boolean;
  /** The header's incompatible_features field as stored. */
  incompatibleFeatures: bigint;
  extendedL2: boolean;
  lazyRefcounts: boolean;
  hasDataFileBit: boolean;
  dataFileRaw: boolean;
  backingFile?: Uint8Array;
  backingFormat?: string;
  dataFile?: Uint8Array;
  nbSnapshots: number;
  nbBitmaps: number;
  hasBitmapsExt: boolean;
  /** Header fields a rewrite of the header keeps (rebase -u). */
  layout: {
    l1TableOffset: bigint;
    l1Size: number;
    refcountTableOffset: bigint;
    refcountTableClusters: number;
    snapshotsOffset: bigint;
    compatibleFeatures: bigint;
    autoclearFeatures: bigint;
    cryptMethod: number;
    /** LUKS (crypt_method 2): the crypto header extension as the image holds it (rebase -u writes it back). */
    cryptHeader?: { offset: bigint; length: bigint };
    /** The header has an extension qemu does not know. */
    unknownExtension: boolean;
  };
  /** Present when the guest listed them (info; not in check mode): lib/formats/qcow2/snapshots.ts. */
  snapshots?: SnapshotList;
  bitmaps?: Qcow2Bitmap[];
  /** Encrypted images: info's `encrypt` block (lib/formats/qcow2/crypt.ts). */
  encrypt?: Qcow2Encryption;
}

export class GuestResultError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestResultError";
  }
}

const INCOMPAT = { DIRTY: 1n, CORRUPT: 2n, DATA_FILE: 4n, COMPRESSION: 8n, EXTL2: 16n };

/** Builds the model for input `input` from a result stream. */
export function qcow2Model(recs: Rec[], input: number): Qcow2Model {
  const infos = recs.filter((r) => r.type === records.QCOW2_INFO && r.fields.input === input);
  if (infos.length !== 1) throw new GuestResultError(`expected one qcow2 info record, got ${infos.length}`);
  const f = infos[0].fields;
  const version = f.version as number;
  const clusterBits = f.cluster_bits as number;
  const refcountOrder = f.refcount_order as number;
  const virtualSize = f.virtual_size as bigint;
  const compression = f.compression_type as number;
  const flags = f.flags as number;
  const incompat = f.incompatible_features as bigint;
  if (version !== 2 && version !== 3) throw new GuestResultError(`qcow2 version ${version} out of range`);
  if (clusterBits < 9 || clusterBits > 21) {
    throw new GuestResultError(`cluster_bits ${clusterBits} out of range`);
  }
  if (refcountOrder > 6) throw new GuestResultError(`refcount_order ${refcountOrder} out of range`);
  if (virtualSize > (1n << 63n) - 1n) throw new GuestResultError("virtual size out of range");
  if (compression > 1) throw new GuestResultError(`compression type ${compression} out of range`);

  const names = recs.filter((r) => r.type === records.NAME && r.fields.input === input);
  const nameOf = (kind: number) => {
    const found = names.filter((r) => r.fields.kind === kind);
    if (found.length > 1) throw new GuestResultError(`more than one name of kind ${kind}`);
    return found.length ? nameBytes(found[0]) : undefined;
  };
  const backingFile = nameOf(nameKinds.BACKING_FILE);
  const fmt = nameOf(nameKinds.BACKING_FORMAT);
  const dataFile = nameOf(nameKinds.DATA_FILE);
  if (fmt && fmt.length >= 16) throw new GuestResultError("backing format name too long");
  if ((flags & qcow2InfoFlags.HAS_BACKING) !== 0 !== (backingFile !== undefined)) {
    throw new GuestResultError("backing file flag and name records disagree");
  }
  if (backingFile && backingFile.length > limits.NAME_MAX) {
    throw new GuestResultError("backing name too long");
  }

  const crypts = recs.filter((r) => r.type === records.QCOW2_CRYPT_HDR && r.fields.input === input);
  if (crypts.length > 1) throw new GuestResultError("more than one crypto header record");
  let cryptHeader: { offset: bigint; length: bigint } | undefined;
  if (crypts.length === 1) {
    // Any u64 pair (qemu opens some odd ones): a header rewrite only writes the same bytes back.
    cryptHeader = { offset: crypts[0].fields.offset as bigint, length: crypts[0].fields.length as bigint };
  }

  return {
    version,
    virtualSize,
    clusterBits,
    clusterSize: 1n << BigInt(clusterBits),
    refcountBits: 1 << refcountOrder,
    compressionType: compression === 1 ? "zstd" : "zlib",
    dirty: (incompat & INCOMPAT.DIRTY) !== 0n,
    corrupt: (incompat & INCOMPAT.CORRUPT) !== 0n,
    incompatibleFeatures: incompat,
    extendedL2: (incompat & INCOMPAT.EXTL2) !== 0n,
    lazyRefcounts: ((f.compatible_features as bigint) & 1n) !== 0n,
    hasDataFileBit: (incompat & INCOMPAT.DATA_FILE) !== 0n,
    // autoclear bit 0 is the bitmaps extension; bit 1 is "raw external data".
    dataFileRaw: ((f.autoclear_features as bigint) & 2n) !== 0n,
    backingFile,
    // qemu keeps the format name as a C string: it ends at the first NUL.
    backingFormat: fmt ? new TextDecoder().decode(fmt) : undefined,
    dataFile,
    nbSnapshots: f.nb_snapshots as number,
    nbBitmaps: f.nb_bitmaps as number,
    hasBitmapsExt: (flags & qcow2InfoFlags.HAS_BITMAPS_EXT) !== 0,
    layout: {
      l1TableOffset: f.l1_table_offset as bigint,
      l1Size: f.l1_size as number,
      refcountTableOffset: f.refcount_table_offset as bigint,
      refcountTableClusters: f.refcount_table_clusters as number,
      snapshotsOffset: f.snapshots_offset as bigint,
      compatibleFeatures: f.compatible_features as bigint,
      autoclearFeatures: f.autoclear_features as bigint,
      cryptMethod: f.crypt_method as number,
      cryptHeader,
      unknownExtension: (flags & qcow2InfoFlags.UNKNOWN_EXT) !== 0,
    },
  };
}
