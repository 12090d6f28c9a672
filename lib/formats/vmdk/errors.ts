// qemu-img's words for a vmdk open or read failure the guest reported
// (ERROR code FORMAT, a0 = guest/vmdk/vmdk.h enum vmdk_error). `quoted` is
// the text qemu quotes (a create type, an extent line), sent by the guest
// in a NAME record of kind ERROR_TEXT right before the error.
import { limits } from "../../abi/spec.ts";

export function vmdkErrorText(
  a0: bigint,
  a1: bigint,
  a2: bigint,
  quoted: string | undefined,
  filename: string,
): string {
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
      return `Could not read l1 ${
        a2 === 1n ? "backup " : ""
      }table from extent '${filename}': Input/output error`;
    case 16:
      return `Could not open '${filename}': Invalid argument`;
    case 17:
      return "Input/output error";
    case 18:
      return `The VMDK descriptor names ${a1} extents; instar opens at most ${limits.VMDK_MAX_FILES} extent files`;
    case 19:
      return "A VMDK extent that is itself a descriptor is not supported by instar";
    case 20:
      return "SESPARSE extents are not supported by instar";
    case 21:
      return `Compressed grains of ${a1} bytes are not supported by instar`;
    case 22:
      return "Could not refresh total sector count: File too large";
    case 23:
      return "Sandbox failure: an extent file was not attached";
    default:
      return `Unknown VMDK error ${a0}`;
  }
}
