// qemu-img's words for a vmdk open or read failure the guest reported
// (ERROR code FORMAT, a0 = guest/vmdk/vmdk.h enum vmdk_error). `quoted` is
// the text qemu quotes (a create type, an extent line), sent by the guest
// in a NAME record of kind ERROR_TEXT right before the error. `inputNames`
// are the names qemu prints for the run's inputs (the image, then its
// extent files): an error about one extent file names it.
import { limits } from "../../abi/spec.ts";

/** printf("0x%016" PRIx64). */
const hex016 = (v: bigint) => `0x${BigInt.asUintN(64, v).toString(16).padStart(16, "0")}`;

/** seSparse's four reserved fields as the guest formats them (qemu's "0x%016" PRIx64, space-separated). */
const RESERVED_TEXT = /^0x[0-9a-f]{16} 0x[0-9a-f]{16} 0x[0-9a-f]{16} 0x[0-9a-f]{16}$/;

export function vmdkErrorText(
  a0: bigint,
  a1: bigint,
  a2: bigint,
  quoted: string | undefined,
  filename: string,
  inputNames: string[] = [],
): string {
  /** The extent file `rel` inputs after the image (0: the image itself). */
  const fileName = (rel: bigint) => (rel < BigInt(inputNames.length) ? inputNames[Number(rel)] : filename);
  switch (Number(a0)) {
    case 1:
      return "Input/output error";
    case 2:
      return "File is too small, not a valid image";
    case 3:
      return "invalid VMDK image descriptor";
    case 4:
      return `Unsupported image type '${quoted ?? ""}'`;
    case 5:
      return `Invalid extent line: ${quoted ?? ""}`;
    case 6:
      return "Image not in VMDK format";
    case 7:
      return "Failed to read footer: Input/output error";
    case 8:
      return "Invalid footer";
    case 9:
      return `Unsupported VMDK version ${a1}`;
    case 10:
      return "L2 table size too big";
    case 11:
      return "L1 entry size is invalid";
    case 12:
      return `File truncated, expecting at least ${BigInt.asIntN(64, a1)} bytes`;
    case 13:
      return "Invalid granularity, image may be corrupt";
    case 14:
      return "L1 size too big";
    case 15:
      return `Could not read l1 ${a2 === 1n ? "backup " : ""}table from extent '${
        fileName(a1)
      }': Input/output error`;
    case 16:
      return `Could not open '${filename}': Invalid argument`;
    case 17:
      return "Input/output error";
    case 18:
      return `The VMDK descriptor names ${a1} extents; instar opens at most ${limits.VMDK_MAX_FILES} extent files`;
    case 19:
      return "A VMDK extent that is itself a descriptor is not supported by instar";
    case 21:
      return `Compressed grains of ${a1} bytes are not supported by instar`;
    case 22:
      return "Could not refresh total sector count: File too large";
    case 23:
      return "Sandbox failure: an extent file was not attached";
    case 24:
      return `Bad const header magic: ${hex016(a1)}`;
    case 25:
      return `Unsupported version: ${hex016(a1)}`;
    case 26:
      return `Unsupported grain size: ${a1}`;
    case 27:
      return `Unsupported grain table size: ${a1}`;
    case 28:
      return `Unsupported flags: ${hex016(a1)}`;
    case 29:
      return RESERVED_TEXT.test(quoted ?? "")
        ? `Unsupported reserved bits: ${quoted}`
        : "Sandbox failure: malformed seSparse reserved bits";
    case 30:
      return "Unsupported non-zero const header padding";
    case 31:
      return `Could not read volatile header from file '${fileName(a2)}': Input/output error`;
    case 32:
      return `Bad volatile header magic: ${hex016(a1)}`;
    case 33:
      return "Image is dirty, Replaying journal not supported";
    case 34:
      return "Unsupported non-zero volatile header padding";
    case 35:
      return "No write support for seSparse images available";
    default:
      return `Unknown VMDK error ${a0}`;
  }
}
