// Diagnostics qemu-img prints on stderr, one per CHECK_MSG record: check's
// per-cluster lines, and (in any operation) warnings printed while opening. The guest
// sends a code and up to four u64 arguments; the host formats the text with
// qemu-img's exact wording (qemu 7.2 block/qcow2-refcount.c). Templates use
// only these conversions, applied to a[0..3] in order:
//   %d  signed decimal (u64 reinterpreted as i64)   %u  unsigned decimal
//   %x  lower-case hex   %#x  0x-prefixed hex (as printf's %#x: "0" for 0)
//   %S  "ERROR" or "Leaked"/"Repairing" chosen by the code's `words` table, indexed by the arg
//   %N  the next name from the NAME records (SNAPSHOT_ID, SNAPSHOT_NAME) sent
//       right before this CHECK_MSG; takes no argument
// A template ends with the newline qemu prints. Codes are stable numbers.
// `prefix: true` marks lines qemu prints with error_report(), which starts
// them with the program name and ": " ("qemu-img: " / "instar: ").
export interface CheckMessage {
  name: string;
  code: number;
  text: string;
  /** For %S: index -> word. */
  words?: string[];
  /** Printed through error_report: the program-name prefix comes first. */
  prefix?: boolean;
}

export const checkMessages: CheckMessage[] = [
  {
    name: "REFCOUNT_MISMATCH",
    code: 1,
    text: "%S cluster %d refcount=%u reference=%u\n",
    // 2: the line check -r prints for a mismatch it repairs (the host's, never the guest's)
    words: ["ERROR", "Leaked", "Repairing"],
  },
  {
    name: "REGION_PAST_EOF",
    code: 2,
    text: "ERROR: counting reference for region exceeding the end of the file by one cluster or more: " +
      "offset 0x%x size 0x%x\n",
  },
  { name: "REFCOUNT_OVERFLOW", code: 3, text: "ERROR: overflow cluster offset=0x%x\n" },
  {
    name: "REFCOUNT_OVERFLOW_HINT",
    code: 4,
    text: "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean " +
      "copy if the image cannot be opened for writing\n",
  },
  { name: "L2_RESERVED_BITS", code: 5, text: "ERROR found l2 entry with reserved bits set: %x\n" },
  {
    name: "COMPRESSED_COPIED",
    code: 6,
    text: "ERROR: coffset=0x%x: copied flag must never be set for compressed clusters\n",
  },
  { name: "COMPRESSED_DATA_FILE", code: 7, text: "ERROR compressed cluster %d with data file, entry=0x%x\n" },
  {
    name: "COMPRESSED_BITMAP",
    code: 8,
    text: "ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x\n",
  },
  {
    name: "SUBCLUSTER_BITMAP_CORRUPT",
    code: 9,
    text: "ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap\n",
  },
  {
    name: "PREALLOC_UNALIGNED",
    code: 10,
    text: "ERROR offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.\n",
  },
  // check -r all: the entry becomes a zero cluster (a REPAIR_L2ZERO record follows)
  {
    name: "PREALLOC_UNALIGNED_REPAIR",
    code: 221,
    text: "Repairing offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.\n",
  },
  {
    name: "DATA_UNALIGNED",
    code: 11,
    text: "ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.\n",
  },
  {
    name: "UNALLOCATED_BITMAP",
    code: 12,
    text: "ERROR: Unallocated cluster has non-zero subcluster allocation map\n",
  },
  { name: "L1_RESERVED_BITS", code: 13, text: "ERROR found L1 entry with reserved bits set: %x\n" },
  {
    name: "L2_TABLE_UNALIGNED",
    code: 14,
    text: "ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted\n",
  },
  { name: "SNAPSHOTS_WITH_DATA_FILE", code: 15, text: "ERROR %d snapshots in image with data file\n" },
  { name: "REFTABLE_RESERVED_BITS", code: 16, text: "ERROR refcount table entry %d has reserved bits set\n" },
  {
    name: "REFBLOCK_UNALIGNED",
    code: 17,
    text: "ERROR refcount block %d is not cluster aligned; refcount table entry corrupted\n",
  },
  { name: "REFBLOCK_OUTSIDE", code: 18, text: "ERROR refcount block %d is outside image\n" },
  // check -r all (check_refblocks with BDRV_FIX_ERRORS): the file grows to
  // hold the block (a0 = index, a1 = the block's offset).
  { name: "REFBLOCK_OUTSIDE_REPAIR", code: 220, text: "Repairing refcount block %d is outside image\n" },
  { name: "REFBLOCK_REFCOUNT", code: 19, text: "ERROR refcount block %d refcount=%u\n" },
  { name: "REFCOUNT_EIO", code: 20, text: "Can't get refcount for cluster %d: Input/output error\n" },
  {
    name: "OFLAG_COPIED_L2",
    code: 21,
    text: "ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%u\n",
  },
  { name: "OFLAG_COPIED_DATA", code: 22, text: "ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%u\n" },
  // check -r's check_oflag_copied when it repairs the flag (a REPAIR_OFLAG record follows)
  {
    name: "OFLAG_COPIED_L2_REPAIR",
    code: 205,
    text: "Repairing OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%u\n",
  },
  {
    name: "OFLAG_COPIED_DATA_REPAIR",
    code: 206,
    text: "Repairing OFLAG_COPIED data cluster: l2_entry=%x refcount=%u\n",
  },
  {
    name: "SNAPSHOT_L1_UNALIGNED",
    code: 23,
    text:
      "ERROR snapshot %N (%N) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted\n",
  },
  {
    name: "SNAPSHOT_L1_TOO_LARGE",
    code: 24,
    text: "ERROR snapshot %N (%N) l1_size=%#x: L1 table is too large; snapshot table entry corrupted\n",
  },
  { name: "SNAPSHOT_TABLE_TOO_LARGE", code: 25, text: "ERROR snapshot table too large\n", prefix: true },
  {
    name: "SNAPSHOT_TABLE_OFFSET_INVALID",
    code: 26,
    text: "ERROR snapshot table offset invalid\n",
    prefix: true,
  },
  {
    name: "SNAPSHOT_OVERHANG_HINT",
    code: 27,
    text: "You can force-remove all %u overhanging snapshots with qemu-img check -r all\n",
  },
  {
    name: "SNAPSHOT_EXTRA_TOO_LARGE",
    code: 28,
    text: "ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry %d\n",
    prefix: true,
  },
  {
    name: "SNAPSHOT_EXTRA_HINT",
    code: 29,
    text: "You can force-remove this extra metadata with qemu-img check -r all\n",
  },
  {
    name: "SNAPSHOT_TABLE_TOO_BIG",
    code: 30,
    text: "ERROR failed to read the snapshot table: Snapshot table is too big\n",
    prefix: true,
  },
  { name: "SNAPSHOT_INCOMPLETE", code: 31, text: "ERROR snapshot table entry %d is incomplete\n" },
  // check -r all: qcow2_check_fix_snapshot_table then writes the table anew
  {
    name: "SNAPSHOT_INCOMPLETE_REPAIR",
    code: 222,
    text: "Repairing snapshot table entry %d is incomplete\n",
  },
  // check -r all: qcow2_do_read_snapshots with repair drops the unknown
  // extra data of an entry with more than 1024 bytes of it; the table is
  // then written anew as for an incomplete entry
  {
    name: "SNAPSHOT_EXTRA_DISCARD",
    code: 260,
    text: "Discarding too much extra metadata in snapshot table entry %d (%u > 1024)\n",
  },
  // check -r all: qcow2_check_read_snapshot_table keeps the first 65,536
  // snapshots, qcow2_do_read_snapshots those before the entry that takes the
  // table past 64 MiB; the header's count is written at once, the dropped
  // snapshots' clusters are leaks for the refcount check
  { name: "SNAPSHOT_OVERHANG_DISCARD", code: 261, text: "Discarding %u overhanging snapshots\n" },
  {
    name: "SNAPSHOT_TOO_BIG_DISCARD",
    code: 262,
    text: "Discarding %u overhanging snapshots (snapshot table is too big)\n",
  },
  {
    // qcow2_signal_corruption on a read-only image: printed once per open.
    name: "CORRUPT_REFBLOCK_UNALIGNED",
    code: 32,
    text: "qcow2: Image is corrupt: Refblock offset %#x unaligned (reftable index: %#x); " +
      "further non-fatal corruption events will be suppressed\n",
  },
  // Printed while opening (any operation, not only check): a bitmaps extension
  // without the autoclear bit. The hint has no newline, as in qemu.
  {
    name: "BITMAPS_WARNING",
    code: 33,
    text: "warning: a program lacking bitmap support modified this file, so all bitmaps are now " +
      "considered inconsistent\n",
    prefix: true,
  },
  {
    name: "BITMAPS_V2_WARNING",
    code: 34,
    text: "warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program " +
      "without persistent bitmap support; so now they must all be considered inconsistent\n",
    prefix: true,
  },
  {
    name: "BITMAPS_LEAK_HINT",
    code: 35,
    text: "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.",
  },
  { name: "L1_READ_EIO", code: 36, text: "ERROR: I/O error in check_refcounts_l1\n" },
  {
    name: "SNAPSHOT_READ_EIO",
    code: 37,
    text: "ERROR failed to read the snapshot table: Failed to read snapshot table: Input/output error\n",
    prefix: true,
  },
  // vhdx (qemu 7.2 block/vhdx.c vhdx_region_check, vhdx_check_bat_entries):
  // printed while opening (then the open fails) and by check.
  {
    name: "VHDX_REGION_OVERLAP",
    code: 60,
    text: "VHDX region %u-%u overlaps with region %u-%u\n",
    prefix: true,
  },
  { name: "VHDX_BAT_OFFSET_OVERFLOW", code: 61, text: "VHDX BAT entry %u offset overflow.\n", prefix: true },
  {
    name: "VHDX_BAT_START_PAST_EOF",
    code: 62,
    text:
      "VHDX BAT entry %u start offset %u points after end of file (%d). Image has probably been truncated.\n",
    prefix: true,
  },
  {
    name: "VHDX_BAT_END_PAST_EOF",
    code: 63,
    text:
      "VHDX BAT entry %u end offset %u points after end of file (%d). Image has probably been truncated.\n",
    prefix: true,
  },
  // vmdk_co_check (fprintf to stderr: no program prefix)
  { name: "VMDK_NO_EXTENT", code: 70, text: "ERROR: could not find extent for sector %d\n" },
  { name: "VMDK_NO_CLUSTER", code: 71, text: "ERROR: could not get cluster_offset for sector %d\n" },
  { name: "VMDK_PAST_EOF", code: 72, text: "ERROR: cluster offset for sector %d points after EOF\n" },
];

const byCode = new Map<number, CheckMessage>(checkMessages.map((m) => [m.code, m]));

/**
 * Formats one CHECK_MSG record's text (code + a[0..3]) exactly as qemu-img
 * prints it. Throws on an unknown code or an out-of-range %S index: the
 * arguments come from the guest and are untrusted.
 */
export function formatCheckMessage(
  code: number,
  args: readonly bigint[],
  program = "instar",
  names: readonly string[] = [],
): string {
  const m = byCode.get(code);
  if (!m) throw new Error(`Unknown check message code ${code}`);
  let i = 0, n = 0;
  const next = (): bigint => {
    if (i >= 4) throw new Error(`Check message ${code} needs more than four arguments`);
    return BigInt.asUintN(64, args[i++] ?? 0n);
  };
  const body = m.text.replace(/%(#x|[duxSN])/g, (_all, conv: string) => {
    if (conv === "N") {
      if (n >= names.length) throw new Error(`Check message ${code} needs more names`);
      return names[n++];
    }
    const v = next();
    switch (conv) {
      case "d":
        return BigInt.asIntN(64, v).toString();
      case "u":
        return v.toString();
      case "x":
        return v.toString(16);
      case "#x":
        return v === 0n ? "0" : "0x" + v.toString(16);
      default: {
        const w = m.words?.[Number(v)];
        if (v > 16n || w === undefined) throw new Error(`Check message ${code}: bad word index ${v}`);
        return w;
      }
    }
  });
  return m.prefix ? `${program}: ${body}` : body;
}

/** An ERROR record's fields (guestErrors code and arguments). */
export interface GuestError {
  code: number;
  a0: bigint;
  a1: bigint;
  a2: bigint;
}

const TABLE_NAMES = ["", "Reference count table", "Snapshot table", "Active L1 table", "Snapshot L1 table"];

/**
 * The message qemu-img 7.2 prints after "Could not open 'FILE': " for a qcow2
 * ERROR record from the guest (the argument conventions are guest/qcow2's;
 * each text was compared with qemu-img on images built to trigger it, see
 * tests/guest_hosted_test.ts). Some texts carry a hint line after a newline,
 * as qemu prints them. `features`: NAME records of kind INCOMPAT_FEATURE, in
 * order; `bitmap`: the NAME record of kind BITMAP_NAME. Returns undefined for
 * instar's own refusals (encryption, I/O, memory, parameters), which have no
 * qemu text.
 */
export function qcow2OpenErrorText(
  e: GuestError,
  features: readonly string[] = [],
  bitmap = "",
): string | undefined {
  const { a0, a1, a2 } = e;
  switch (e.code) {
    case 2: // NOT_FORMAT
      return "Image is not in qcow2 format";
    case 4: // UNSUPPORTED_VERSION
      return `Unsupported qcow2 version ${a0}`;
    case 5: // BAD_CLUSTER_BITS: a1 = 1 for extended L2 with clusters under 16 KiB
      return a1 === 0n
        ? `Unsupported cluster size: 2^${a0}`
        : `Unsupported subcluster size: ${1n << (a0 - 5n)}`;
    case 6: // BAD_HEADER_LENGTH
      return a1 === 1n ? "qcow2 header too short" : "qcow2 header exceeds cluster size";
    case 7: // BAD_REFCOUNT_ORDER
      return "Reference count entry width too large; may not exceed 64 bits";
    case 8: { // UNKNOWN_INCOMPAT: a0 = bits no feature-table entry named
      const parts = [...features];
      if (a0) parts.push(`Unknown incompatible feature: ${a0.toString(16)}`);
      return `Unsupported qcow2 feature(s): ${parts.join(", ")}`;
    }
    case 9: // BAD_L1_SIZE: qcow2_validate_table (a0 1/2, a1 = table) or a0 = 3 "too small"
      if (a0 === 3n) return "L1 table is too small";
      return `${TABLE_NAMES[Number(a1)] ?? "Active L1 table"} ${a0 === 1n ? "too large" : "offset invalid"}`;
    case 10: // BAD_L1_OFFSET: the L1 read ends past qemu's maximum request length
      return "Could not read L1 table: Input/output error";
    case 11: // BAD_REFTABLE
      if (a0 === 3n) return "Image does not contain a reference count table";
      if (a0 === 4n) return "Could not initialize refcount handling: Input/output error";
      return `${TABLE_NAMES[Number(a1)] ?? "Reference count table"} ${
        a0 === 1n ? "too large" : "offset invalid"
      }`;
    case 12: // BAD_SNAPSHOT_TABLE
      if (a0 === 3n) {
        return `Too much extra metadata in snapshot table entry ${a1}\n` +
          "You can force-remove this extra metadata with qemu-img check -r all";
      }
      if (a0 === 4n) {
        return `Snapshot table is too big\nYou can force-remove all ${a1} overhanging snapshots with qemu-img check -r all`;
      }
      if (a0 === 5n) return "Failed to read snapshot table: Input/output error";
      return `${TABLE_NAMES[Number(a1)] ?? "Snapshot table"} ${a0 === 1n ? "too large" : "offset invalid"}`;
    case 13: // BAD_EXTENSION: a0 = extension magic, a1 = which check, a2 = value
      return [
        undefined,
        "Header extension too large",
        `ERROR: ext_backing_format: len=${a2} too large (>=16)`,
        "CRYPTO header extension only expected with LUKS encryption method",
        `CRYPTO header extension size ${a2}, but expected size 16`,
        "bitmaps_ext: Invalid extension length",
        "bitmaps_ext: Reserved field is not zero",
        `bitmaps_ext: Image has ${a2} bitmaps, exceeding the QEMU supported maximum of 65535`,
        "found bitmaps extension with zero bitmaps",
        "bitmaps_ext: invalid bitmap directory offset",
        `bitmaps_ext: bitmap directory size (${a2}) exceeds the maximum supported size (67107840)`,
      ][Number(a1)];
    case 14: // NAME_TOO_LONG: a0 = name kind; only the backing file name is qemu's
      return a0 === 1n ? "Backing file name too long" : undefined;
    case 15: // BAD_BACKING_OFFSET
      return "Invalid backing file offset";
    case 16: // ENCRYPTED: a1 = 1 unknown method, 2 LUKS without its header, 0 instar refuses
      if (a1 === 1n) return `Unsupported encryption method ${BigInt.asIntN(32, a0)}`;
      if (a1 === 2n) return `Missing CRYPTO header for crypt method ${a0}`;
      return undefined;
    case 18: // BAD_COMPRESSION_TYPE
      return [
        `qcow2: unknown compression type: ${a0}`,
        "qcow2: Compression type incompatible feature bit must not be set",
        "qcow2: Compression type incompatible feature bit must be set",
      ][Number(a1)];
    case 19: // VIRTUAL_SIZE_TOO_LARGE
      return a1 === 0n ? "Image is too big" : "Could not refresh total sector count: File too large";
    case 23: // DATA_FILE_REQUIRED
      return a0 === 1n ? "'data-file' is required for this image" : "data-file-raw requires a data file";
    case 26: // BAD_BITMAP: a0 = which check (guest/qcow2/qcow2.h QBM_*)
      return [
        undefined,
        "Requested bitmap directory size is zero",
        "Broken bitmap directory",
        "More bitmaps found than specified in header extension",
        "Bitmap extra data is not supported",
        `Bitmap '${bitmap}' doesn't satisfy the constraints`,
        "Less bitmaps found than specified in header extension",
        `Could not read bitmap_table table from image for bitmap '${bitmap}': Invalid argument`,
        `Could not read bitmap '${bitmap}' from image: Invalid argument`,
        "Failed to read bitmap directory: Input/output error",
        `Could not read bitmap_table table from image for bitmap '${bitmap}': Input/output error`,
      ][Number(a0)];
  }
  return undefined;
}

/**
 * qemu-img map's stderr when the guest stops with BAD_L2 (code 22): qcow2's
 * corruption event (read-only wording) and the map failure. The extents
 * before it were already printed. a0 = kind | L2 index << 32, a1 = L2 table
 * offset, a2 = the cluster offset (kind 1: a1 = L2 offset, a2 = L1 index).
 */
export function qcow2MapErrorText(e: GuestError, program = "instar"): string {
  const kind = Number(e.a0 & 0xffffffffn), idx = e.a0 >> 32n;
  const x = (v: bigint) => (v === 0n ? "0" : "0x" + v.toString(16));
  const detail = [
    "",
    `L2 table offset ${x(e.a1)} unaligned (L1 index: ${x(e.a2)})`,
    `Cluster allocation offset ${x(e.a2)} unaligned (L2 offset: ${x(e.a1)}, L2 index: ${x(idx)})`,
    `Invalid cluster entry found  (L2 offset: ${x(e.a1)}, L2 index: ${x(idx)})`,
    `Compressed cluster entry found in image with external data file (L2 offset: ${x(e.a1)}, L2 index: ${
      x(idx)
    })`,
    `Zero cluster entry found in pre-v3 image (L2 offset: ${x(e.a1)}, L2 index: ${x(idx)})`,
  ][kind] ?? `Invalid L2 entry (kind ${kind})`;
  return `qcow2: Image is corrupt: ${detail}; further non-fatal corruption events will be suppressed\n` +
    `${program}: Could not read file metadata: Input/output error\n`;
}
