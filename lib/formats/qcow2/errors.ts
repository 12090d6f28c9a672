// Turns a guest ERROR record about a qcow2 input into qemu-img's message
// (qemu 7.2 block/qcow2.c qcow2_do_open and helpers). The argument
// conventions are the guest parser's (guest/qcow2/header.c).
import { guestErrors as G, nameKinds } from "../../abi/spec.ts";
import { qcow2OpenErrorText } from "../../abi/check_messages.ts";

const TABLES: Record<number, string> = {
  1: "Reference count table",
  2: "Snapshot table",
  3: "Active L1 table",
};
const MAX_BITMAPS = 65535;
const MAX_BITMAP_DIRECTORY_SIZE = 64 * 65535;

function tableMessage(a0: bigint, a1: bigint): string {
  const name = TABLES[Number(a1)] ?? "Table";
  return a0 === 1n ? `${name} too large` : `${name} offset invalid`;
}

export type { GuestErrorFields } from "../types.ts";
import type { GuestErrorFields } from "../types.ts";
import type { Rec } from "../../abi/records.ts";

/**
 * qemu's message for a qcow2 open failure. `features` are the feature-table
 * names the guest sent (NAME records of kind INCOMPAT_FEATURE), or, with a
 * bitmap error, the bitmap's name (the NAME record of kind BITMAP_NAME, the
 * only name such an error carries).
 */
export function qcow2ErrorMessage(e: GuestErrorFields, features: string[] = []): string {
  // The texts verified against qemu-img live beside the guest's argument
  // conventions (lib/abi/check_messages.ts); this table only adds instar's
  // own refusals, which qemu has no words for.
  const bitmap = e.code === G.BAD_BITMAP ? features[features.length - 1] ?? "" : "";
  const verified = qcow2OpenErrorText(e, e.code === G.BAD_BITMAP ? [] : features, bitmap);
  if (verified !== undefined) return verified;
  const { a0, a1, a2 } = e;
  switch (e.code) {
    case G.IO:
      return "Could not read qcow2 header: Input/output error";
    case G.NOT_FORMAT:
      return "Image is not in qcow2 format";
    case G.TRUNCATED:
      return "Could not read qcow2 header: Input/output error";
    case G.UNSUPPORTED_VERSION:
      return `Unsupported qcow2 version ${a0}`;
    case G.BAD_CLUSTER_BITS:
      return a1 === 1n
        ? `Unsupported subcluster size: ${(1n << a0) / 32n}`
        : `Unsupported cluster size: 2^${a0}`;
    case G.BAD_HEADER_LENGTH:
      return a1 === 1n ? "qcow2 header too short" : "qcow2 header exceeds cluster size";
    case G.BAD_REFCOUNT_ORDER:
      return "Reference count entry width too large; may not exceed 64 bits";
    case G.UNKNOWN_INCOMPAT: {
      const parts = [...features];
      if (a0 !== 0n) parts.push(`Unknown incompatible feature: ${a0.toString(16)}`);
      return `Unsupported qcow2 feature(s): ${parts.join(", ")}`;
    }
    case G.BAD_L1_SIZE:
      if (a0 === 3n && a1 === 3n) return "L1 table is too small";
      return tableMessage(a0, a1);
    case G.BAD_L1_OFFSET:
      return "Active L1 table offset invalid";
    case G.BAD_REFTABLE:
      if (a0 === 3n) return "Image does not contain a reference count table";
      return tableMessage(a0, a1);
    case G.BAD_SNAPSHOT_TABLE:
      return tableMessage(a0, a1);
    case G.BAD_EXTENSION:
      switch (Number(a1)) {
        case 1:
          return "Header extension too large";
        case 2:
          return `ERROR: ext_backing_format: len=${a2} too large (>=16)`;
        case 3:
          return "CRYPTO header extension only expected with LUKS encryption method";
        case 4:
          return `CRYPTO header extension size ${a2}, but expected size 16`;
        case 5:
          return "bitmaps_ext: Invalid extension length: Invalid argument";
        case 6:
          return "bitmaps_ext: Reserved field is not zero: Invalid argument";
        case 7:
          return `bitmaps_ext: Image has ${a2} bitmaps, exceeding the QEMU supported maximum of ${MAX_BITMAPS}`;
        case 8:
          return "found bitmaps extension with zero bitmaps";
        case 9:
          return "bitmaps_ext: invalid bitmap directory offset";
        case 10:
          return `bitmaps_ext: bitmap directory size (${a2}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_SIZE})`;
      }
      return "Invalid header extension";
    case G.NAME_TOO_LONG:
      return a0 === BigInt(nameKinds.BACKING_FILE) ? "Backing file name too long" : "Data file name too long";
    case G.BAD_BACKING_OFFSET:
      return "Invalid backing file offset";
    case G.ENCRYPTED:
      return a0 === 1n
        ? "Use of AES-CBC encrypted qcow2 images is no longer supported in system emulators"
        : "Encrypted qcow2 images are not supported by instar";
    case G.CORRUPT:
      return "qcow2: Image is corrupt; cannot be opened read/write";
    case G.BAD_COMPRESSION_TYPE:
      if (a1 === 1n) return "qcow2: Compression type incompatible feature bit must not be set";
      if (a1 === 2n) return "qcow2: Compression type incompatible feature bit must be set";
      return `qcow2: unknown compression type: ${a0}`;
    case G.VIRTUAL_SIZE_TOO_LARGE:
      return a1 === 1n ? "Image size is larger than instar supports" : "Image is too big";
    case G.OUT_OF_MEMORY:
      return "The image needs more memory than the sandbox allows";
    case G.BAD_PARAMS:
      return "Internal error: the sandbox rejected its parameters";
    case G.BAD_L2:
      return `Invalid L2 table at offset 0x${a0.toString(16)}`;
    case G.DATA_FILE_REQUIRED:
      return a0 === 2n ? "data-file-raw requires a data file" : "'data-file' is required for this image";
    case G.BAD_IMAGE_SIZE:
      return "Invalid image size";
  }
  return `Guest reported error code ${e.code}`;
}

/** qcow2ErrorMessage of a guest's ERROR record (its code and three arguments). */
export function errorRecordMessage(err: Rec): string {
  const f = err.fields;
  return qcow2ErrorMessage({
    code: f.code as number,
    a0: f.a0 as bigint,
    a1: f.a1 as bigint,
    a2: f.a2 as bigint,
  });
}
