// Resize planner for VHD. qemu-img 7.2 cannot resize vpc images ("Image
// format driver does not support resize"), so by default this returns that
// refusal. With `beyondQemu` it plans what moves no data block:
//   fixed: the footer moves to the new end (the old one is zeroed when it
//     becomes part of the data area);
//   dynamic: growth within the BAT's existing sectors (qemu pads the BAT
//     to whole 0xFF sectors, so up to 128 entries per sector fit), or, past
//     them, the BAT copied verbatim to the end of the file; both footer
//     copies and the dynamic header rewritten. Shrinking over allocated
//     blocks would strand them and is refused.
// The new size keeps the image's sizing rule: CHS-rounded for images
// qemu made without force_size ("qemu" creator), exact otherwise.
import { fail, type FilePlan, ok, type Patch, type PlanResult } from "../plan.ts";
import { VPC_BLOCK_SIZE, VPC_FOOTER_SIZE, vpcChecksum, vpcRoundedSize } from "./create_plan.ts";
import type { ResizeRequest } from "../types.ts";

export const VPC_RESIZE_REFUSAL = "Image format driver does not support resize";

/** What the guest extracts from an existing VHD for resizing. */
export interface VpcResizeSummary {
  subformat: "dynamic" | "fixed";
  /** The footer's current_size. */
  currentSize: bigint;
  fileSize: bigint;
  /** Dynamic: the header's max_table_entries. */
  maxTableEntries: bigint;
  /** Dynamic: the header's table_offset. */
  batOffset: bigint;
  /** The 512-byte footer, as read. */
  footer: Uint8Array;
  /** Dynamic: the 1024-byte dynamic disk header, as read. */
  dynHeader: Uint8Array;
  /** Dynamic: the header's block size (qemu's 2 MiB when absent). */
  blockSize?: bigint;
  /** Dynamic: 1 + the highest allocated BAT index (0: none). Known only
   * from a scan of the BAT; when absent, dynamic images are not shrunk. */
  allocatedBlocks?: bigint;
}

export function planVpcResize(s: VpcResizeSummary, req: ResizeRequest): PlanResult<FilePlan> {
  if (!req.beyondQemu) return fail("unsupported", VPC_RESIZE_REFUSAL);
  if (s.footer.length !== VPC_FOOTER_SIZE) return fail("invalid_option", "VHD footer must be 512 bytes");
  if (s.currentSize < 0n || s.fileSize < BigInt(VPC_FOOTER_SIZE) || s.fileSize > (1n << 63n) - 1n) {
    return fail("invalid_size", "VHD sizes out of range");
  }
  const creator = String.fromCharCode(...s.footer.subarray(28, 32));
  const rounded = vpcRoundedSize(req.newSize, creator !== "qemu");
  if (!rounded.ok) return rounded;
  const { size, cylinders, heads, spc } = rounded.value;
  if (size === 0n) return fail("invalid_size", "New image size must be positive");
  if (size < s.currentSize && !req.shrink) {
    return fail("invalid_size", "Use the --shrink option to perform a shrink operation.");
  }
  const footer = s.footer.slice();
  const dv = new DataView(footer.buffer);
  dv.setBigUint64(48, size); // current size: what qemu reads
  // The original size too: the spec calls it informational, but libvhdi
  // (vhdiinfo) reports it as the media size.
  dv.setBigUint64(40, size);
  dv.setUint16(56, cylinders);
  footer[58] = heads;
  footer[59] = spc;
  dv.setUint32(64, 0);
  dv.setUint32(64, vpcChecksum(footer));

  if (s.subformat === "fixed") {
    // The footer sits right after the data; the file is exactly data + footer.
    if (s.fileSize !== s.currentSize + 512n) {
      return fail("invalid_option", "Fixed VHD file size does not match its footer");
    }
    const patches: Patch[] = [];
    // The old footer becomes data when growing: it must read as zeroes.
    if (size > s.currentSize) patches.push({ kind: "zero", offset: s.currentSize, length: 512n });
    patches.push({ kind: "write", offset: size, bytes: footer });
    return ok({ patches, fileSize: size + 512n });
  }

  if (s.dynHeader.length !== 1024) return fail("invalid_option", "VHD dynamic header must be 1024 bytes");
  const bs = s.blockSize ?? VPC_BLOCK_SIZE;
  if (bs < 512n || bs > 1n << 31n || (bs & (bs - 1n)) !== 0n) {
    return fail("invalid_option", "VHD block size out of range");
  }
  const entries = (size + bs - 1n) / bs;
  // A shrink may only cut blocks that hold nothing: the BAT keeps its
  // length, the entries past the new end stay unallocated.
  if (size < s.currentSize) {
    if (s.allocatedBlocks === undefined) {
      return fail("unsupported", "Shrinking a dynamic VHD is not supported");
    }
    if (s.allocatedBlocks > entries) {
      return fail("unsupported", "Shrinking a dynamic VHD over allocated blocks is not supported");
    }
  }
  const batSectorsEntries = ((s.maxTableEntries * 4n + 511n) / 512n) * 128n;
  // The BAT must lie between the dynamic header and the trailing footer.
  const batEnd = s.batOffset + batSectorsEntries * 4n;
  if (s.batOffset < 1536n || batEnd > s.fileSize - 512n) {
    return fail("invalid_option", "VHD BAT out of range");
  }
  const hdr = s.dynHeader.slice();
  const hv = new DataView(hdr.buffer);
  const oldEntries = s.maxTableEntries;
  hv.setUint32(28, Number(entries > oldEntries ? entries : oldEntries));
  const patches: Patch[] = [{ kind: "write", offset: 0n, bytes: footer }];
  let fileSize = s.fileSize;
  if (entries > batSectorsEntries) {
    // No room: the BAT moves to the end of the file (past the old trailing
    // footer, which may follow data qemu still reads), padded to whole 0xFF
    // sectors as qemu writes it. qemu's vpc_open starts allocating after
    // the later of the BAT and the last block, so the old BAT's sectors are
    // simply left unused.
    const newBat = (s.fileSize + 511n) / 512n * 512n;
    const padded = (entries * 4n + 511n) / 512n * 512n;
    hv.setBigUint64(16, newBat); // table_offset
    patches.push(
      { kind: "copy", offset: newBat, from: s.batOffset, length: oldEntries * 4n },
      {
        kind: "write",
        offset: newBat + oldEntries * 4n,
        bytes: new Uint8Array(Number(padded - oldEntries * 4n)).fill(0xff),
      },
    );
    fileSize = newBat + padded + 512n;
  } else if (entries > oldEntries) {
    // New entries are marked unallocated explicitly: the padding qemu wrote
    // is 0xFF, but another writer's need not be.
    patches.push({
      kind: "write",
      offset: s.batOffset + oldEntries * 4n,
      bytes: new Uint8Array(Number((entries - oldEntries) * 4n)).fill(0xff),
    });
  }
  hv.setUint32(36, 0);
  hv.setUint32(36, vpcChecksum(hdr));
  patches.push(
    { kind: "write", offset: 512n, bytes: hdr },
    { kind: "write", offset: fileSize - 512n, bytes: footer.slice() },
  );
  return ok({ patches, fileSize });
}
