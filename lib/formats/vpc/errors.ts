// Turns a guest ERROR record about a vpc input (code GERR_FORMAT, a0 = the
// guest's enum vpc_error in guest/vpc/vpc.h) into qemu-img 7.2's message: the
// text after "qemu-img: Could not open '<filename>': ". Verified against
// qemu-img 7.2.22 on images patched by tests/vpc_guest_test.ts.

/** guest/vpc/vpc.h enum vpc_error */
export const vpcErrors = {
  READ_FOOTER: 1,
  FILE_TOO_SMALL: 2,
  INVALID: 3,
  CHECKSUM: 4,
  TOO_LARGE: 5,
  READ_DYNHDR: 6,
  DYNHDR_MAGIC: 7,
  BLOCK_SIZE: 8,
  TOO_MANY_BLOCKS: 9,
  TABLE_TOO_SMALL: 10,
  TABLE_TOO_LARGE: 11,
  READ_TABLE: 12,
  TRUNCATED: 13,
} as const;

/**
 * qemu's message for vpc error `code` (the ERROR record's a0) with the
 * record's a1/a2; `filename` as qemu-img names the image. undefined for a
 * code the guest does not send.
 */
export function vpcErrorText(
  code: number | bigint,
  a1: bigint,
  _a2: bigint,
  filename: string,
): string | undefined {
  switch (Number(code)) {
    case vpcErrors.READ_FOOTER:
      return "Unable to read VHD header";
    case vpcErrors.FILE_TOO_SMALL:
      return "File too small for a VHD header";
    case vpcErrors.INVALID:
      return "invalid VPC image";
    case vpcErrors.CHECKSUM:
      return "Incorrect header checksum";
    case vpcErrors.TOO_LARGE:
      // -EFBIG without an error message: bdrv_open_driver's own wording
      return `Could not open '${filename}': File too large`;
    case vpcErrors.READ_DYNHDR:
      return "Error reading dynamic VHD header";
    case vpcErrors.DYNHDR_MAGIC:
      return "Invalid header magic";
    case vpcErrors.BLOCK_SIZE:
      return `Invalid block size ${BigInt.asUintN(32, a1)}`;
    case vpcErrors.TOO_MANY_BLOCKS:
      return "Too many blocks";
    case vpcErrors.TABLE_TOO_SMALL:
      return "Page table too small";
    case vpcErrors.TABLE_TOO_LARGE:
      // qemu keeps max_table_entries in an int and prints it with PRId32
      return `Max Table Entries too large (${BigInt.asIntN(32, a1)})`;
    case vpcErrors.READ_TABLE:
      return "Error reading pagetable";
    case vpcErrors.TRUNCATED:
      return "block-vpc: free_data_block_offset points after the end of file. The image has been truncated.";
    default:
      return undefined;
  }
}
